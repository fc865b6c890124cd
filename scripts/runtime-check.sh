#!/usr/bin/env bash
# Runs it for real: builds the image from the Dockerfile (on a test-only stand-in for distroless,
# offline) and plays the pods helm/example and the kustomize overlays render with `podman kube
# play`, against the metering emulator on 127.0.0.1, for all three pricing models. What each
# scenario proves, and what it does not: README, "Run it for real".
#
#   bash scripts/runtime-check.sh [--only SCENARIO[,SCENARIO...]]
#
# Needs podman and runc (Debian: apt-get install -y podman runc; .ci/run installs them) and root
# (rootful podman, as on the project's machines); without podman it says so and runs nothing.
# Uses, building what is missing (each build takes minutes: it says how long it took):
#   target/static/amd64/entitlement-gate         an OPEN static binary (scripts/build-static.sh)
#   target/static-locked/amd64/entitlement-gate  a LOCKED one trusting ci-locked-product (as
#                                                .ci/static-check.sh leaves it)
# ENTITLEMENT_GATE_OPEN_BINARY and ENTITLEMENT_GATE_LOCKED_BINARY name others. Everything it
# creates (pods, images, the test-only base) is removed at the end, even on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v podman > /dev/null; then
  echo "runtime check SKIPPED: podman is not installed, so no image was built and no pod ran" \
    "(Debian: apt-get install -y podman runc)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "runtime check: run it as root (rootful podman; the test-only base is assembled with apt-get)" >&2
  exit 1
fi
# The project's own containers.conf (runc, cgroupfs, lower ulimits); /etc is left alone.
export CONTAINERS_CONF=$PWD/tests/runtime/containers.conf
source .ci/k8s-tools.sh
export HELM=$PWD/$helm KUBECTL=$PWD/$kubectl

cargo build --quiet -p metering-emulator
export EMULATOR=${CARGO_TARGET_DIR:-$PWD/target}/debug/metering-emulator

# is_build BINARY WORDS: the binary runs and its --version says WORDS (open or locked, and to what).
is_build() { [ -x "$1" ] && "$1" --version 2> /dev/null | grep -q "$2"; }

export OPEN_BINARY=${ENTITLEMENT_GATE_OPEN_BINARY:-$PWD/target/static/amd64/entitlement-gate}
if ! is_build "$OPEN_BINARY" "open build"; then
  start=$SECONDS
  env -u ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES -u ENTITLEMENT_GATE_TRUSTED_KEYS_DIR \
    bash scripts/build-static.sh amd64 "$(dirname "$OPEN_BINARY")"
  echo "runtime check: built the open static binary in $((SECONDS - start)) s"
fi

export LOCKED_BINARY=${ENTITLEMENT_GATE_LOCKED_BINARY:-$PWD/target/static-locked/amd64/entitlement-gate}
if ! is_build "$LOCKED_BINARY" "locked build: trusted product codes ci-locked-product"; then
  # A throwaway key: the locked scenarios check refusals, which come before any token.
  keys=$(mktemp -d)
  trap 'rm -rf "$keys"' EXIT
  openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 | openssl pkey -pubout -out "$keys/1.pem"
  start=$SECONDS
  ENTITLEMENT_GATE_TRUSTED_PRODUCT_CODES=ci-locked-product ENTITLEMENT_GATE_TRUSTED_KEYS_DIR=$keys \
    bash scripts/build-static.sh amd64 "$(dirname "$LOCKED_BINARY")"
  echo "runtime check: built the locked static binary in $((SECONDS - start)) s"
fi

python3 tests/runtime/runtime_check.py "$@"
