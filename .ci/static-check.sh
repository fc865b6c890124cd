#!/usr/bin/env bash
# Builds the locked static binary with scripts/build-static.sh (as the Dockerfile does) and proves
# it: statically linked, says it is locked, and passes a check against the emulator from an empty
# root filesystem as UID 65532, like the distroless image. Needs the debug emulator (cargo test
# builds it) and root (for chroot).
set -euo pipefail
cd "$(dirname "$0")/.."

install_packages() {
  apt-get install -y -q "$@" > /dev/null 2>&1 || { apt-get update -q > /dev/null && apt-get install -y -q "$@" > /dev/null; }
}
command -v musl-gcc > /dev/null || install_packages musl-tools
command -v file > /dev/null || install_packages file
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
sed -n '/AWS_JAVA_SAMPLE_PUBLIC_KEY: &str = "/,/END PUBLIC KEY/p' src/anchor_rules.rs \
  | sed 's/.*= "//' > "$work/weak-keys/1.pem"
refused_build "which is no lock" ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES=ci-locked-product
refused_build "below the 2048-bit minimum" ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES=ci-locked-product \
  ENTITLEMENT_GATE_TRUSTED_KEYS_DIR="$work/weak-keys"
echo "refused builds OK: product codes without keys, and a 1024-bit embedded key"

ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES=ci-locked-product ENTITLEMENT_GATE_TRUSTED_KEYS_DIR="$work/keys" \
  bash scripts/build-static.sh amd64 "$work/out"
binary="$work/out/entitlement-gate"

file "$binary"
file "$binary" | grep -Eq 'static(-pie)? linked' || fail "not statically linked"
ldd "$binary" 2>&1 | grep -Eq 'not a dynamic executable|statically linked' || fail "ldd lists libraries"
ls -l "$binary"
"$binary" --version | tee "$work/version"
grep -q "locked build: trusted product codes ci-locked-product; embedded public key versions 1" "$work/version" \
  || fail "--version does not describe the locked build"

# An empty root with only the binary and CA certificates, run as the image's user.
cp "$binary" "$work/root/entitlement-gate"
cp /etc/ssl/certs/ca-certificates.crt "$work/root/etc/ssl/certs/"
chmod -R a+rX "$work/root"
chroot=$(PATH="$PATH:/usr/sbin:/sbin" command -v chroot) || fail "chroot not found"
gate() {
  env -i AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=AKIDEMULATOR AWS_SECRET_ACCESS_KEY=emulator-secret \
    AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL_MARKETPLACE_METERING="$EMULATOR_URL" \
    "$chroot" --userspec=65532:65532 "$work/root" /entitlement-gate check "$@"
}
code=0; gate --product-code ci-locked-product 2> "$work/ok.log" || code=$?
cat "$work/ok.log"
[ "$code" -eq 0 ] || fail "the trusted product code exited $code"
! grep -q "no native root CA certificates" "$work/ok.log" || fail "CA certificates not found"
code=0; gate --product-code ci-other-product 2> "$work/untrusted.log" || code=$?
[ "$code" -eq 2 ] || fail "an untrusted product code exited $code, not 2"
code=0; gate --product-code ci-locked-product --public-key-file /etc/ssl/certs/ca-certificates.crt 2> /dev/null || code=$?
[ "$code" -eq 2 ] || fail "a run-time key exited $code, not 2"
echo "static check OK: static binary, locked build, entitled 0, untrusted product 2, run-time key 2"
