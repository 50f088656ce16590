"""Compare every output table of two runs row by row.

Usage: compare_outputs.py BIN EXPECTED_DIR ACTUAL_DIR
Exits non-zero on any difference and on duplicated or missing Kafka
positions in raw/ and _dead_letter/.
"""
import json
import subprocess
import sys

BIN, EXPECTED, ACTUAL = sys.argv[1:4]

# Columns that record when a row was written, not what it says.
WHEN_WRITTEN = "ingested_at"

# table -> (columns to compare, unique key)
TABLES = {
    "raw_influencer_signals": ("*", "kafka_partition, kafka_offset"),
    "raw_execution_results": ("*", "kafka_partition, kafka_offset"),
    "dead_letter_influencer_signals": ("*", "kafka_partition, kafka_offset"),
    "dead_letter_execution_results": ("*", "kafka_partition, kafka_offset"),
    "signals": ("*", "signal_id"),
    "executions_enriched": ("*", "execution_id"),
    "influencer_metrics_1m": ("*", "window_start, influencer_id"),
    "subscriber_metrics_1m": ("*", "window_start, subscriber_id"),
    "system_metrics_1m": ("*", "window_start"),
    "execution_errors_1m": ("*", "window_start, venue, error_code"),
}


def query(root, sql):
    run = subprocess.run([BIN, "query", "--output", root, "--format", "json", sql],
                         capture_output=True, text=True)
    if run.returncode != 0:
        # A table with no file yet is not registered: report it, count no rows.
        print(f"    query failed on {root}: {run.stderr.strip().splitlines()[-1]}")
        return []
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def rows(root, table, key):
    sql = f"SELECT * EXCLUDE ({WHEN_WRITTEN}) FROM {table}" if table.startswith(("raw_", "dead_")) \
        else f"SELECT * FROM {table}"
    found = query(root, f"{sql} ORDER BY {key}")
    dups = query(root, f"SELECT count(*) AS n FROM (SELECT {key} FROM {table} GROUP BY {key} HAVING count(*) > 1)")
    return found, dups[0]["n"] if dups else 0


failed = 0
total = 0
for table, (_, key) in TABLES.items():
    want, want_dups = rows(EXPECTED, table, key)
    got, got_dups = rows(ACTUAL, table, key)
    total += len(got)
    ok = want == got and want_dups == 0 and got_dups == 0 and len(want) > 0
    failed += not ok
    detail = f"{len(got)} rows, {got_dups} duplicated keys"
    if want != got:
        missing = len([r for r in want if r not in got]) if len(want) < 20000 else "?"
        detail += f"; expected {len(want)} rows ({missing} missing or different)"
    print(f"{'ok ' if ok else 'BAD'} {table}: {detail}")

# Both runs ended at end of input, so every window is final: each distinct
# raw id must have its one final row.
checks = len(TABLES)
for root in (EXPECTED, ACTUAL):
    for raw, final, key in (("raw_execution_results", "executions_enriched", "execution_id"),
                            ("raw_influencer_signals", "signals", "signal_id")):
        ids = query(root, f"SELECT count(DISTINCT {key}) AS n FROM {raw}")
        rows_ = query(root, f"SELECT count(*) AS n FROM {final}")
        ok = bool(ids) and bool(rows_) and ids[0]["n"] == rows_[0]["n"]
        checks += 1
        failed += not ok
        print(f"{'ok ' if ok else 'BAD'} {root}: distinct {key} in {raw} "
              f"{ids[0]['n'] if ids else '?'} = rows in {final} {rows_[0]['n'] if rows_ else '?'}")

print(f"compared {total} rows in {len(TABLES)} tables")
print(f"compare: {checks - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
