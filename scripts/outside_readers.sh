#!/usr/bin/env bash
# Checks that outside engines open the daemon's Parquet through the statements
# of `analytics-processor ddl` (DuckDB and ClickHouse's embedded engine chdb,
# both from PyPI) and get the same numbers as `analytics-processor query`;
# then that a column added to a metric keeps the older files readable.
# Needs the services up and their variables exported (make test does both).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
STATE_DIR="${AP_SERVICES_DIR:-$REPO_DIR/.services}"
VENV="$STATE_DIR/py"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import duckdb, chdb' 2>/dev/null; then
  echo "outside readers: installing duckdb and chdb into $VENV" >&2
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet duckdb chdb==4.4.0 >&2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
run_id="outside-$$-$(date +%s)"
export AP_SIGNALS_TOPIC="sig-$run_id" AP_EXECUTIONS_TOPIC="exe-$run_id" AP_GROUP="$run_id"

echo "outside readers: producing 100000 seeded events and running the daemon" >&2
"$BIN" produce --count 100000 --seed 11 --start 2026-03-01T23:30:00Z --signal-gap 2 --partitions 3 2>&1 | tail -n 1 >&2
"$BIN" run --output "$work/out" --interval 2 --allowed-lateness 30 --stop-when-idle 5 2>&1 | tail -n 1 >&2

"$VENV/bin/python" scripts/outside_readers.py "$BIN" "$work/out"

# Schema evolution: system_metrics_1m gains a column; the daemon goes on with
# the new definition over later events; old and new files read together.
echo "outside readers: adding a column to system_metrics_1m and running on" >&2
cp -r sql "$work/sql"
python3 - "$work/sql/system_metrics_1m.sql" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
old = "    coalesce(e.unmatched_executions, 0) AS unmatched_executions\n"
assert old in s, "system_metrics_1m.sql changed: update this test"
open(p, "w").write(s.replace(old, old.rstrip("\n") + ",\n    coalesce(s.signals, 0) + coalesce(e.executions, 0) AS events\n"))
PY
export AP_SQL_DIR="$work/sql"
"$BIN" sql check >/dev/null
"$BIN" produce --count 20000 --seed 12 --start 2026-03-02T01:00:00Z --signal-gap 2 --partitions 3 2>&1 | tail -n 1 >&2
"$BIN" run --output "$work/out" --interval 2 --allowed-lateness 30 --stop-when-idle 5 2>&1 | tail -n 1 >&2
"$VENV/bin/python" scripts/outside_readers.py "$BIN" "$work/out" --evolved
