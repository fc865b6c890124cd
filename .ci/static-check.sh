#!/usr/bin/env bash
# Builds the locked static binary for both architectures the way the image does
# (scripts/build-static.sh, from exactly the Docker build context .dockerignore admits), and proves
# it: static, the dependency list embedded (cargo auditable), says it is locked, and refuses what a
# locked build refuses: every endpoint override in every command that calls AWS (the emulator
# seeing no call), an untrusted product code, a run-time key. amd64 runs from an empty root
# filesystem as UID 65532 like the distroless image, arm64 under qemu-user. A locked build calls
# AWS's own endpoints only, so it cannot be run to exit 0 against the emulator: the open image's
# happy path is proven in a real container runtime (issue 18). Needs the debug emulator (cargo
# test builds it) and root (chroot, apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

install_packages() {
  apt-get install -y -q "$@" > /dev/null 2>&1 || { apt-get update -q > /dev/null && apt-get install -y -q "$@" > /dev/null; }
}
command -v file > /dev/null || install_packages file
# Runs the arm64 binary on this amd64 machine (12 MB).
command -v qemu-aarch64 > /dev/null || install_packages qemu-user
source scripts/emulator.sh
fail() { echo "static check FAILED: $*" >&2; exit 1; }

# The emulator's key becomes the embedded trust anchor of a locked build.
cargo build --quiet -p metering-emulator
work=$(mktemp -d)
mkdir -p "$work/keys" "$work/root/etc/ssl/certs"
emulator_start "$work" target/debug/metering-emulator \
  --public-key-out "$work/keys/1.pem" --entitled ci-locked-product --entitled ci-other-product

# A lock needs keys, and embedded keys meet the run-time rule: both mistakes fail the seller's build.
refused_build() { # EXPECTED_MESSAGE, then the environment for the build
  local expected=$1 code=0
  shift
  env "$@" cargo check --quiet -p entitlement-gate --lib > "$work/refused.log" 2>&1 || code=$?
  [ "$code" -ne 0 ] || fail "the build with $* succeeded"
  grep -q "$expected" "$work/refused.log" || { cat "$work/refused.log"; fail "the build with $* did not say: $expected"; }
}
mkdir -p "$work/weak-keys"
sed -n '/AWS_JAVA_SAMPLE_PUBLIC_KEY: &str = "/,/END PUBLIC KEY/p' src/domain/anchor_rules.rs \
  | sed 's/.*= "//' > "$work/weak-keys/1.pem"
refused_build "which is no lock" ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES=ci-locked-product
refused_build "below the 2048-bit minimum" ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES=ci-locked-product \
  ENTITLEMENT_GATE_TRUSTED_KEYS_DIR="$work/weak-keys"
echo "refused builds OK: product codes without keys, and a 1024-bit embedded key"

python3 .ci/docker_context.py "$work/context"
for arch in amd64 arm64; do
  start=$SECONDS
  ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES=ci-locked-product ENTITLEMENT_GATE_TRUSTED_KEYS_DIR="$work/keys" \
    ENTITLEMENT_GATE_TOOLS_DIR="$root/target/build-tools" CARGO_TARGET_DIR="$root/target" \
    bash "$work/context/scripts/build-static.sh" "$arch" "$work/out/$arch"
  echo "static build $arch: $((SECONDS - start)) s"
  file "$work/out/$arch/entitlement-gate"
  python3 .ci/check_binary.py "$work/out/$arch/entitlement-gate" "$arch"
done

binary="$work/out/amd64/entitlement-gate"
# Kept for scripts/runtime-check.sh, whose locked image is built from it (not built twice in CI).
mkdir -p target/static-locked/amd64 && cp "$binary" target/static-locked/amd64/
file "$binary" | grep -q 'static-pie linked' || fail "not static-pie linked"
ldd "$binary" 2>&1 | grep -Eq 'not a dynamic executable|statically linked' || fail "ldd lists libraries"
"$binary" --version | tee "$work/version"
grep -q "locked build: trusted product codes ci-locked-product; embedded public key versions 1" "$work/version" \
  || fail "--version does not describe the locked build"

# An empty root with only the binary and CA certificates, run as the image's user.
cp "$binary" "$work/root/entitlement-gate"
cp /etc/ssl/certs/ca-certificates.crt "$work/root/etc/ssl/certs/"
mkdir -p "$work/root/aws"
printf '[default]\nendpoint_url = %s\n' "$EMULATOR_URL" > "$work/root/aws/endpoint-config"
printf '[default]\nservices = local\n[services local]\nmarketplace-metering =\n  endpoint_url = %s\n' \
  "$EMULATOR_URL" > "$work/root/aws/services-config"
chmod -R a+rX "$work/root"
chroot=$(PATH="$PATH:/usr/sbin:/sbin" command -v chroot) || fail "chroot not found"
gate_env=(AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=AKIDEMULATOR AWS_SECRET_ACCESS_KEY=emulator-secret
  AWS_EC2_METADATA_DISABLED=true)
# locked [VAR=VALUE...] -- ARGS...: the locked binary in the empty root as the image's user.
locked() {
  local extra=()
  while [ "$1" != -- ]; do extra+=("$1"); shift; done
  shift
  env -i "${gate_env[@]}" "${extra[@]}" "$chroot" --userspec=65532:65532 "$work/root" /entitlement-gate "$@"
}
emulator_calls() {
  python3 -c 'import json, sys, urllib.request
print(json.load(urllib.request.urlopen(sys.argv[1] + "/_emulator/stats"))["calls"])' "$EMULATOR_URL"
}

code=0; locked -- check --product-code ci-other-product 2> "$work/untrusted.log" || code=$?
[ "$code" -eq 2 ] && grep -q "ci-other-product" "$work/untrusted.log" \
  || { cat "$work/untrusted.log"; fail "an untrusted product code exited $code, not 2"; }
code=0; locked -- check --product-code ci-locked-product --public-key-file /etc/ssl/certs/ca-certificates.crt \
  2> "$work/runtime-key.log" || code=$?
[ "$code" -eq 2 ] && grep -q "ENTITLEMENT_GATE_PUBLIC_KEY" "$work/runtime-key.log" \
  || { cat "$work/runtime-key.log"; fail "a run-time key exited $code, not 2"; }

# Every way of giving the SDK another endpoint, in every command that calls AWS: exit 2, the
# setting named, before any call (MeterUsage has no signed answer: a meter that followed one would
# bill the buyer's own server).
overrides=(
  "AWS_ENDPOINT_URL_MARKETPLACE_METERING=$EMULATOR_URL|AWS_ENDPOINT_URL_MARKETPLACE_METERING"
  "AWS_ENDPOINT_URL_LICENSE_MANAGER=$EMULATOR_URL|AWS_ENDPOINT_URL_LICENSE_MANAGER"
  "AWS_ENDPOINT_URL_STS=$EMULATOR_URL|AWS_ENDPOINT_URL_STS"
  "AWS_ENDPOINT_URL=$EMULATOR_URL|AWS_ENDPOINT_URL is set"
  "AWS_CONFIG_FILE=/aws/endpoint-config|/aws/endpoint-config sets endpoint_url in profile"
  "AWS_CONFIG_FILE=/aws/services-config|services section"
)
commands=(
  "check --product-code ci-locked-product"
  "exec --product-code ci-locked-product -- /entitlement-gate --version"
  "meter --product-code ci-locked-product --dimension requests --state-dir /state"
  "license check --product-id ci-locked-product --entitlement Seats=1:Count"
  "license watch --product-id ci-locked-product --entitlement Seats=1:Count --listen 127.0.0.1:0"
  "doctor --call --product-code ci-locked-product"
)
refusals=0
for override in "${overrides[@]}"; do
  setting=${override%%|*} named=${override#*|}
  for command in "${commands[@]}"; do
    code=0
    # shellcheck disable=SC2086 # the command's words
    locked "$setting" -- $command 2> "$work/refused.log" || code=$?
    [ "$code" -eq 2 ] && grep -q "$named" "$work/refused.log" && grep -q "locked build" "$work/refused.log" \
      || { cat "$work/refused.log"; fail "$command with $setting exited $code, not 2 naming $named"; }
    refusals=$((refusals + 1))
  done
done
[ "$(emulator_calls)" -eq 0 ] || fail "the emulator saw $(emulator_calls) calls from refused runs"
# With nothing overridden, the locked build calls AWS's own endpoint, never the emulator: this
# root has no resolver (exit 7), or AWS refuses the emulator's credentials (exit 6).
code=0; locked -- check --product-code ci-locked-product --deadline 3s 2> "$work/aws.log" || code=$?
[ "$code" -eq 7 ] || [ "$code" -eq 6 ] || { cat "$work/aws.log"; fail "a locked check without overrides exited $code"; }
grep -q "endpoint=https://metering.marketplace.us-east-1.amazonaws.com" "$work/aws.log" \
  || { cat "$work/aws.log"; fail "a locked check without overrides did not call AWS's own endpoint"; }
[ "$(emulator_calls)" -eq 0 ] || fail "the emulator saw a call from a locked build"
echo "amd64 (chroot, UID 65532): untrusted product code 2, run-time key 2, $refusals endpoint overrides 2 with no call, AWS's own endpoint otherwise"

# The cross-compiled arm64 binary, emulated: the same locked build, the same answers.
arm64() { env -i "${gate_env[@]}" "$@"; }
arm64 qemu-aarch64 "$work/out/arm64/entitlement-gate" --version | grep -q "locked build: trusted product codes ci-locked-product" \
  || fail "arm64 --version"
code=0; arm64 AWS_ENDPOINT_URL_MARKETPLACE_METERING="$EMULATOR_URL" qemu-aarch64 "$work/out/arm64/entitlement-gate" \
  meter --product-code ci-locked-product --dimension requests --state-dir "$work/arm64-state" 2> "$work/arm64.log" || code=$?
[ "$code" -eq 2 ] && grep -q AWS_ENDPOINT_URL_MARKETPLACE_METERING "$work/arm64.log" \
  || { cat "$work/arm64.log"; fail "arm64: a meter pointed at another endpoint exited $code, not 2"; }
code=0; arm64 qemu-aarch64 "$work/out/arm64/entitlement-gate" check --product-code ci-other-product 2> /dev/null || code=$?
[ "$code" -eq 2 ] || fail "arm64: an untrusted product code exited $code, not 2"
[ "$(emulator_calls)" -eq 0 ] || fail "the emulator saw a call from the arm64 build"
echo "static check OK: amd64 and arm64 static, dependency list embedded, locked; amd64 (chroot) and arm64 (qemu): endpoint overrides refused before any call, untrusted product code 2; amd64 run-time key 2"
