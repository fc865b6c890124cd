#!/usr/bin/env bash
# Builds the locked static binary for both architectures the way the image does
# (scripts/build-static.sh, from exactly the Docker build context .dockerignore admits), and proves
# it: static, the dependency list embedded (cargo auditable), says it is locked, and passes a
# check against the emulator: amd64 from an empty root filesystem as UID 65532 like the
# distroless image, arm64 under qemu-user. Needs the debug emulator (cargo test builds it) and
# root (chroot, apt-get).
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
chmod -R a+rX "$work/root"
chroot=$(PATH="$PATH:/usr/sbin:/sbin" command -v chroot) || fail "chroot not found"
gate_env=(AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=AKIDEMULATOR AWS_SECRET_ACCESS_KEY=emulator-secret
  AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL_MARKETPLACE_METERING="$EMULATOR_URL")
gate() { env -i "${gate_env[@]}" "$chroot" --userspec=65532:65532 "$work/root" /entitlement-gate check "$@"; }
code=0; gate --product-code ci-locked-product 2> "$work/ok.log" || code=$?
cat "$work/ok.log"
[ "$code" -eq 0 ] || fail "the trusted product code exited $code"
! grep -q "no native root CA certificates" "$work/ok.log" || fail "CA certificates not found"
code=0; gate --product-code ci-other-product 2> "$work/untrusted.log" || code=$?
[ "$code" -eq 2 ] || fail "an untrusted product code exited $code, not 2"
code=0; gate --product-code ci-locked-product --public-key-file /etc/ssl/certs/ca-certificates.crt 2> /dev/null || code=$?
[ "$code" -eq 2 ] || fail "a run-time key exited $code, not 2"
# License Manager's SignedToken cannot be verified offline: a locked build refuses any other
# License Manager than AWS's own, before any call.
code=0
env -i "${gate_env[@]}" AWS_ENDPOINT_URL_LICENSE_MANAGER="$EMULATOR_URL" "$chroot" --userspec=65532:65532 \
  "$work/root" /entitlement-gate license check --product-id ci-locked-product --entitlement Seats=1:Count \
  2> "$work/license.log" || code=$?
[ "$code" -eq 2 ] && grep -q AWS_ENDPOINT_URL_LICENSE_MANAGER "$work/license.log" \
  || { cat "$work/license.log"; fail "a locked license check pointed at another endpoint exited $code, not 2"; }

# The cross-compiled arm64 binary, emulated: the same locked build, the same answers.
arm64() { env -i "${gate_env[@]}" qemu-aarch64 "$work/out/arm64/entitlement-gate" "$@"; }
arm64 --version | grep -q "locked build: trusted product codes ci-locked-product" || fail "arm64 --version"
code=0; arm64 check --product-code ci-locked-product 2> "$work/arm64.log" || code=$?
[ "$code" -eq 0 ] || { cat "$work/arm64.log"; fail "arm64: the trusted product code exited $code"; }
code=0; arm64 check --product-code ci-other-product 2> /dev/null || code=$?
[ "$code" -eq 2 ] || fail "arm64: an untrusted product code exited $code, not 2"
echo "static check OK: amd64 and arm64 static, dependency list embedded, locked; amd64 (chroot) and arm64 (qemu): entitled 0, untrusted 2; amd64 run-time key 2, another License Manager 2"
