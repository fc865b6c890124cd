#!/usr/bin/env bash
# Fuzzes token verification and RegisterUsage answer handling for a bounded time with nightly
# cargo fuzz (installed here if missing). Starts from the committed seeds in fuzz/corpus.
#   bash .ci/fuzz.sh [SECONDS_PER_TARGET]      default 20
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-20}

command -v cargo-fuzz > /dev/null || cargo install --locked cargo-fuzz@0.13.2
targets=${FUZZ_TARGETS:-verify_token verify_signed_claims register_usage_response}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo +nightly fuzz build
for target in $targets; do
  echo "-- fuzz $target for ${seconds}s"
  # Any panic, failed assertion, leak, allocation over 128 MB or RSS over 1 GB fails the run.
  if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=1024 \
    -malloc_limit_mb=128 -max_len=20000 -print_final_stats=1 > "$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz target $target FAILED (crash input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E "^Done" "$log"
done
