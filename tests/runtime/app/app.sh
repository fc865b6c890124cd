# TEST ONLY: what an application behind the gate does, one line per result for
# tests/runtime/runtime_check.py to read from its log:
#   APP uid=U workload=ID            who it runs as; its ENTITLEMENT_GATE_WORKLOAD_ID (the pod UID)
#   HANDOFF owner=U product=CODE     entitlement.json as the gate left it on the handoff volume
#   HANDOFF missing=PATH             (or no entitlement.json there)
#   VERIFY own=N other=N             `entitlement-gate verify` with its own workload id, and another's
#   LICENSE state=S api=BODY         license.json's state and the watch's GET /v1/license
#   ACK id=ID quantity=N answer=A    a usage report the meter acknowledged (each sent until it is)
#   USAGE DONE reports=N units=N
# then it waits for SIGTERM and exits 0, as a well-behaved container does. (`timeout` bounds each
# request: busybox wget's own -T crashes in Debian's static busybox 1.35.)
bb=/bin/busybox
trap 'echo "STOPPING on SIGTERM"; exit 0' TERM
pause() { $bb sleep "$1" & wait $!; }

echo "APP uid=$($bb id -u) workload=${ENTITLEMENT_GATE_WORKLOAD_ID:-}"
dir=${ENTITLEMENT_GATE_HANDOFF_DIR:-/nonexistent}
if [ ! -f "$dir/entitlement.json" ]; then
  echo "HANDOFF missing=$dir/entitlement.json"
else
  product=$($bb sed -n 's/.*"productCode": *"\([^"]*\)".*/\1/p' "$dir/entitlement.json")
  echo "HANDOFF owner=$($bb stat -c %u "$dir/entitlement.json") product=$product"
  /entitlement-gate verify 2>&1 | $bb sed 's/^/verify: /'
  own=$(/entitlement-gate verify > /dev/null 2>&1; echo $?)
  other=$(ENTITLEMENT_GATE_WORKLOAD_ID=another-pod /entitlement-gate verify > /dev/null 2>&1; echo $?)
  echo "VERIFY own=$own other=$other"
fi

if [ -f "$dir/license.json" ]; then
  state=$($bb sed -n 's/.*"state": *"\([^"]*\)".*/\1/p' "$dir/license.json")
  api=unanswered
  for _ in $($bb seq 50); do
    api=$($bb timeout 5 $bb wget -q -O- "$ENTITLEMENT_GATE_LICENSE_URL" 2>/dev/null) && break
    api=unanswered
    pause 0.2
  done
  echo "LICENSE state=$state api=$(echo "$api" | $bb tr -d '\n' | $bb cut -c1-300)"
fi

if [ -n "${ENTITLEMENT_GATE_METER_URL:-}" ]; then
  # 30 reports of 1..30 units, one every 0.2 s; each has an id, so a resend after a lost answer
  # counts once; each is resent until acknowledged (the meter may be restarting meanwhile).
  reports=30 i=1 units=0
  while [ "$i" -le "$reports" ]; do
    body="[{\"dimension\": \"requests\", \"quantity\": $i, \"id\": \"report-$i\"}]"
    if answer=$($bb timeout 5 $bb wget -q -O- --header 'Content-Type: application/json' \
        --post-data "$body" "$ENTITLEMENT_GATE_METER_URL/v1/usage" 2>&1); then
      echo "ACK id=report-$i quantity=$i answer=$answer"
      units=$((units + i)) i=$((i + 1))
    else
      echo "RESEND id=report-$i: $answer"
    fi
    pause 0.2
  done
  echo "USAGE DONE reports=$reports units=$units"
fi

while :; do pause 1; done
