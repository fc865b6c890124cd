#!/usr/bin/env bash
# Builds a static (musl) release binary of entitlement-gate for one architecture, cross-compiled on
# this machine whatever its own architecture: cargo-zigbuild with zig as the C compiler (aws-lc-sys)
# and the linker. cargo-auditable embeds the dependency list (section .dep-v0) so that image
# scanners see the Rust crates inside.
#
#   scripts/build-static.sh [amd64|arm64] [OUT_DIR]   default: this machine, target/static/<arch>
#   scripts/build-static.sh --install-tools           only the tools (the Dockerfile's cached layer)
#
# The Dockerfile calls this, and CI runs it. For a locked build set, in the environment:
#   ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES   comma-separated product codes this binary will accept
#   ENTITLEMENT_GATE_TRUSTED_KEYS_DIR        a directory of <version>.pem public keys to embed
# A keys directory without .pem files (like the repository's trusted-keys/) embeds nothing.
#
# Tools, installed when missing: the two musl targets (rustup); zig and cargo-zigbuild from PyPI
# (scripts/build-tools.txt) into a venv at $ENTITLEMENT_GATE_TOOLS_DIR (default target/build-tools,
# about 10 s and 450 MB); cargo-auditable with `cargo install` (compiles, about 2 minutes once).
set -euo pipefail
cd "$(dirname "$0")/.."
AUDITABLE_VERSION=0.7.7
tools=${ENTITLEMENT_GATE_TOOLS_DIR:-$PWD/target/build-tools}

install_tools() {
  local target
  if command -v rustup > /dev/null; then
    for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
      rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    done
  fi
  if [ ! -x "$tools/bin/cargo-zigbuild" ] || ! cmp -s scripts/build-tools.txt "$tools/build-tools.txt"; then
    echo "build-static.sh: installing zig and cargo-zigbuild into $tools" >&2
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check -r scripts/build-tools.txt
    cp scripts/build-tools.txt "$tools/build-tools.txt"
  fi
  # (`cargo auditable --version` prints cargo's own version: ask cargo install instead.)
  if ! cargo install --list | grep -q "^cargo-auditable v$AUDITABLE_VERSION:"; then
    echo "build-static.sh: installing cargo-auditable $AUDITABLE_VERSION (compiles once)" >&2
    cargo install --locked --quiet "cargo-auditable@$AUDITABLE_VERSION"
  fi
}

if [ "${1:-}" = "--install-tools" ]; then
  install_tools
  exit 0
fi

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

install_tools
# cargo-zigbuild finds zig through the venv's python (python -m ziglang).
export PATH="$tools/bin:$PATH"
# rustc asks the linker for a static-pie executable, which zig's turns into a plain static one;
# -pie keeps it position-independent (ASLR), as a musl-gcc build is.
flags_var="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
export "$flags_var=${!flags_var:-} -C link-arg=-pie"
# `cargo auditable` wraps rustc and then runs `cargo zigbuild`: one build, dependency list included.
cargo auditable zigbuild --release --locked --target "$target" -p entitlement-gate

mkdir -p "$out"
cp "${CARGO_TARGET_DIR:-target}/$target/release/entitlement-gate" "$out/entitlement-gate"
echo "built $out/entitlement-gate for $target"
