#!/usr/bin/env bash
# Builds a static (musl) release binary of entitlement-gate for one architecture.
#
#   scripts/build-static.sh [amd64|arm64] [OUT_DIR]      (default: this machine, target/static/<arch>)
#
# The Dockerfile calls this, and CI runs it. For a locked build set, in the environment:
#   ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES   comma-separated product codes this binary will accept
#   ENTITLEMENT_GATE_TRUSTED_KEYS_DIR        a directory of <version>.pem public keys to embed
# A keys directory without .pem files (like the repository's trusted-keys/) embeds nothing.
# Needs: rustup (or the musl target installed) and musl-gcc (Debian: apt-get install musl-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:-$(uname -m)}
case "$arch" in
  amd64 | x86_64) arch=amd64 target=x86_64-unknown-linux-musl ;;
  arm64 | aarch64) arch=arm64 target=aarch64-unknown-linux-musl ;;
  *) echo "build-static.sh: unsupported architecture $arch (use amd64 or arm64)" >&2; exit 2 ;;
esac
out=${2:-target/static/$arch}

keys_dir=${ENTITLEMENT_GATE_TRUSTED_KEYS_DIR:-}
if [ -n "$keys_dir" ] && ! compgen -G "$keys_dir/*.pem" > /dev/null; then
  unset ENTITLEMENT_GATE_TRUSTED_KEYS_DIR
elif [ -n "$keys_dir" ]; then
  ENTITLEMENT_GATE_TRUSTED_KEYS_DIR=$(cd "$keys_dir" && pwd)
  export ENTITLEMENT_GATE_TRUSTED_KEYS_DIR
fi

if command -v rustup > /dev/null && ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi
command -v musl-gcc > /dev/null || { echo "build-static.sh: musl-gcc not found (apt-get install musl-tools)" >&2; exit 2; }

# aws-lc-sys compiles C: use musl's gcc wrapper for it. Rust links the musl target statically by
# itself; do not make musl-gcc the linker, which yields a dynamically linked executable.
export "CC_${target//-/_}=musl-gcc"
cargo build --release --locked --target "$target" -p entitlement-gate

mkdir -p "$out"
cp "target/$target/release/entitlement-gate" "$out/entitlement-gate"
echo "built $out/entitlement-gate ($("$out/entitlement-gate" --version 2>/dev/null || echo "$target"))"
