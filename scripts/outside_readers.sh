#!/usr/bin/env bash
# Checks that an outside engine (DuckDB) reads the daemon's Parquet with Hive
# partitioning and gets the same numbers as `analytics-processor query`.
# Needs the services up and their variables exported (make test does both).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
STATE_DIR="${AP_SERVICES_DIR:-$REPO_DIR/.services}"
VENV="$STATE_DIR/py"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import duckdb' 2>/dev/null; then
  echo "outside readers: installing duckdb into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet duckdb >&2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
run_id="outside-$$-$(date +%s)"
export AP_SIGNALS_TOPIC="sig-$run_id" AP_EXECUTIONS_TOPIC="exe-$run_id" AP_GROUP="$run_id"

echo "outside readers: producing 100000 seeded events and running the daemon" >&2
"$BIN" produce --count 100000 --seed 11 --start 2026-03-01T23:30:00Z --signal-gap 2 --partitions 3 2>&1 | tail -n 1 >&2
"$BIN" run --output "$work/out" --interval 2 --allowed-lateness 30 --stop-when-idle 5 2>&1 | tail -n 1 >&2

"$VENV/bin/python" scripts/outside_readers.py "$BIN" "$work/out"
