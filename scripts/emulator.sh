# Sourced by scripts/demo.sh and .ci/static-check.sh.
#
# emulator_start WORKDIR BINARY [EMULATOR ARGS...]
#   Starts metering-emulator on a free loopback port, sets EMULATOR_URL, and on exit stops it and
#   removes WORKDIR (a scratch directory the caller made for the run's files).
emulator_start() {
  local work=$1 binary=$2
  shift 2
  "$binary" --listen 127.0.0.1:0 --addr-file "$work/emulator-addr" "$@" &
  EMULATOR_PID=$!
  trap 'kill "$EMULATOR_PID" 2>/dev/null; rm -rf "'"$work"'"' EXIT
  for _ in $(seq 100); do
    [ -s "$work/emulator-addr" ] && break
    sleep 0.05
  done
  [ -s "$work/emulator-addr" ] || { echo "metering-emulator did not start" >&2; exit 1; }
  EMULATOR_URL="http://$(cat "$work/emulator-addr")"
}
