#!/usr/bin/env bash
# Reproduces the README's Performance section (about 10 minutes on 2 cores):
#   bash bench/run.sh [RUNS] [GATES]          defaults: 30 runs per tool, a 200-gate storm
# 1. entitlement-gate, a boto3 script, the AWS CLI and a curl floor, interleaved against the same
#    local emulator: wall time and peak RSS; the emulator's own latency; binary sizes; the
#    instruction count of one check with its top functions (callgrind).
# 2. A start-up storm: GATES gates at once against a 5 calls/s quota.
# Results: bench/out/compare.{md,json}, bench/out/storm.json.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
gates=${2:-200}

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
