#!/usr/bin/env bash
# cargo deny with the committed deny.toml: licenses, bans and sources always; advisories against
# the RustSec database when one can be had:
#   - the live database (GitHub), when this machine reaches it;
#   - else a local clone named by ENTITLEMENT_GATE_ADVISORY_DB, or ../shared/advisory-db beside
#     the checkout, checked as of its last commit (its date is printed; older than 90 days warns);
#   - else the advisories check is SKIPPED, and this says so.
# Installs cargo-deny (pinned) when missing: about 5 minutes of compiling on 2 cores, once.
set -euo pipefail
cd "$(dirname "$0")/.."
DENY_VERSION=0.20.2
# cargo-deny keeps the database for https://github.com/rustsec/advisory-db in this directory
# under its db-path (name and hash of the URL).
DB_DIR_NAME=advisory-db-3157b0e258782691

if ! cargo install --list | grep -q "^cargo-deny v$DENY_VERSION:"; then
  echo "installing cargo-deny $DENY_VERSION (compiles once)"
  cargo install --locked --quiet "cargo-deny@$DENY_VERSION"
fi

echo "-- one aws-lc-sys build for the workspace: the same features whichever package is built"
features() { cargo tree --locked -p "$1" -e features -i aws-lc-sys -f '{p} {f}' | head -1; }
gate=$(features entitlement-gate) emulator=$(features metering-emulator)
echo "entitlement-gate: $gate; metering-emulator: $emulator"
[ "$gate" = "$emulator" ] || { echo "aws-lc-sys features differ: cargo run -p metering-emulator would compile it again" >&2; exit 1; }

echo "-- cargo deny check licenses bans sources"
cargo deny --locked check --hide-inclusion-graph licenses bans sources

echo "-- cargo deny check advisories"
if timeout 20 git ls-remote https://github.com/rustsec/advisory-db HEAD > /dev/null 2>&1; then
  cargo deny --locked check --hide-inclusion-graph advisories
  exit 0
fi

local_db=${ENTITLEMENT_GATE_ADVISORY_DB:-}
[ -n "$local_db" ] || { [ -d ../shared/advisory-db ] && local_db=../shared/advisory-db; } || true
if [ -z "$local_db" ]; then
  echo "ADVISORIES SKIPPED: the RustSec advisory database (GitHub) is unreachable from this machine"
  echo "and no local copy was given (ENTITLEMENT_GATE_ADVISORY_DB=<a clone of rustsec/advisory-db>)."
  echo "Licenses, bans and sources were checked; known vulnerabilities were NOT."
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone --quiet "$local_db" "$work/dbs/$DB_DIR_NAME"
date=$(git -C "$work/dbs/$DB_DIR_NAME" show -s --format=%cI HEAD)
age=$(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 ))
count=$(find "$work/dbs/$DB_DIR_NAME/crates" -name 'RUSTSEC-*.md' | wc -l)
echo "advisories: the live database is unreachable; checking against $local_db, $count advisories as of $date ($age days old)"
[ "$age" -le 90 ] || echo "WARNING: the advisory database copy is $age days old: advisories published since are not checked"
# The same policy, pointed at the copy, without fetching; staleness is reported above instead.
sed "s|^\[advisories\]$|[advisories]\ndb-path = \"$work/dbs\"\nmaximum-db-staleness = \"P3650D\"|" deny.toml > "$work/deny.toml"
cargo deny --locked --offline --config "$work/deny.toml" check --hide-inclusion-graph advisories
