#!/usr/bin/env bash
# Runs entitlement-gate locally against the bundled metering emulator (no AWS account needed):
# one buyer who is entitled (exit 0) and one without a subscription (exit 3). The files it shows
# (public key, handoff, termination log) stay in target/demo/ after it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/emulator.sh

bin=target/debug
if [ ! -x "$bin/entitlement-gate" ] || [ ! -x "$bin/metering-emulator" ]; then
  echo "== building the gate and the emulator (the first build compiles about 200 crates, AWS-LC's"
  echo "   C code among them: a few minutes on 2 cores; later runs take seconds)"
fi
# Cargo's own progress (one line per crate) instead of minutes of silence.
cargo build --bins --workspace

demo=target/demo
rm -rf "$demo" && mkdir -p "$demo/handoff"
scratch=$(mktemp -d)
emulator_start "$scratch" "$bin/metering-emulator" --public-key-out "$demo/public-key.pem" \
  --entitled demo-paid-product --not-entitled demo-unpaid-product

# What ECS or EKS would provide, pointed at the emulator; nothing from ~/.aws is used.
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=AKIDEMULATOR AWS_SECRET_ACCESS_KEY=emulator-secret
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
export AWS_ENDPOINT_URL_MARKETPLACE_METERING="$EMULATOR_URL"
export ENTITLEMENT_GATE_PUBLIC_KEY_FILE="$demo/public-key.pem"

echo
echo "== entitled buyer: entitlement-gate check --product-code demo-paid-product"
entitled=0
"$bin/entitlement-gate" check --product-code demo-paid-product --handoff-dir "$demo/handoff" 2>&1 || entitled=$?
echo "exit code: $entitled"
echo "handoff $demo/handoff/entitlement.json:"
cat "$demo/handoff/entitlement.json" 2>/dev/null || echo "(none)"

echo
echo "== the app's side: entitlement-gate verify --handoff-dir (offline, no AWS call)"
verified=0
"$bin/entitlement-gate" verify --product-code demo-paid-product --handoff-dir "$demo/handoff" 2>&1 || verified=$?
echo "exit code: $verified"

echo
echo "== buyer without a subscription: entitlement-gate check --product-code demo-unpaid-product"
refused=0
"$bin/entitlement-gate" check --product-code demo-unpaid-product \
  --termination-log "$demo/termination-log" 2>&1 || refused=$?
echo "exit code: $refused"
echo "termination log $demo/termination-log: $(cat "$demo/termination-log")"

echo
if [ "$entitled" -eq 0 ] && [ "$verified" -eq 0 ] && [ "$refused" -eq 3 ]; then
  echo "demo OK: the entitled buyer passed (0) and its handoff verified (0), the unsubscribed one was refused (3)"
  echo "files kept in $demo/: public-key.pem (the emulator's key), handoff/entitlement.json, termination-log"
else
  echo "demo FAILED: expected exit codes 0, 0 and 3, got $entitled, $verified and $refused" >&2
  exit 1
fi
