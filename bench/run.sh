#!/usr/bin/env bash
# Reproduces the README's Performance section (about 35 minutes on 2 cores):
#   bash bench/run.sh [RUNS] [GATES] [CHAOS_ROUNDS]
#   defaults: 30 runs per tool, a 200-gate storm, 200 chaos rounds
# 1. entitlement-gate, a boto3 script, the AWS CLI and a curl floor, interleaved against the same
#    local emulator: wall time and peak RSS; the emulator's own latency; binary sizes; the
#    instruction count of one check with its top functions (callgrind).
# 2. A start-up storm: GATES gates at once against a 5 calls/s quota.
# 3. The metering sidecar: throughput, latency, peak RSS, group commit against the disk's fsync
#    rate, and redb against SQLite (bench/meter.py); then the chaos run (bench/meter_chaos.py):
#    kill -9 under load with MeterUsage faults, every acknowledged unit in the ledger once.
# Fewer than 10 RUNS is the CI smoke run (`bash bench/run.sh 2 20`): short meter measurements,
# no store comparison, and 10 chaos rounds (unless CHAOS_ROUNDS says otherwise) without outage
# rounds, which last 15 s each.
# Results: bench/out/compare.{md,json}, bench/out/storm.json, bench/out/meter.{md,json},
# bench/out/meter-chaos.json.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
gates=${2:-200}
if [ "$runs" -lt 10 ]; then
  chaos_flags=(--rounds "${3:-10}" --outage-rate 0)
  meter_flags=(--repeats 1 --duration 2 --latency-duration 2 --count 20000 --fsync-seconds 1)
else
  chaos_flags=(--rounds "${3:-200}")
  meter_flags=(--store-choice)
fi

cargo build --release --locked --bins --workspace
cargo build --profile profiling --locked -p entitlement-gate
command -v musl-gcc > /dev/null || apt-get install -y -q musl-tools > /dev/null
bash scripts/build-static.sh amd64 target/static/amd64
command -v valgrind > /dev/null || apt-get install -y -q valgrind > /dev/null
[ -x /usr/bin/time ] || apt-get install -y -q time > /dev/null

venv=bench/.venv
if [ ! -x "$venv/bin/aws" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
fi

mkdir -p bench/out
rm -f bench/out/storm.json
python3 bench/compare.py "$venv" "$runs" target/static/amd64/entitlement-gate target/profiling/entitlement-gate
python3 bench/storm.py --gates "$gates"
python3 bench/meter.py "${meter_flags[@]}"
python3 bench/meter_chaos.py "${chaos_flags[@]}"
