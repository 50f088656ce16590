"""Compare totals read by DuckDB (Hive partitioning) with `analytics-processor query`."""
import json
import math
import subprocess
import sys

import duckdb

BIN, OUT = sys.argv[1], sys.argv[2]

# table -> folder under the output root
TABLES = {
    "raw_execution_results": "raw/execution_results",
    "raw_influencer_signals": "raw/influencer_signals",
    "executions_enriched": "executions_enriched",
    "signals": "signals",
    "influencer_metrics_1m": "metrics/influencer_metrics_1m",
    "subscriber_metrics_1m": "metrics/subscriber_metrics_1m",
    "system_metrics_1m": "metrics/system_metrics_1m",
    "execution_errors_1m": "metrics/execution_errors_1m",
}

# The same SQL runs on both engines; only the table names are bound differently.
CHECKS = [
    "SELECT count(*) AS n, count(DISTINCT execution_id) AS ids, sum(filled_qty) AS qty FROM raw_execution_results",
    "SELECT count(*) AS n, count(DISTINCT signal_id) AS ids FROM raw_influencer_signals",
    "SELECT count(*) AS n, sum(slippage_bps) AS slip, count(*) FILTER (WHERE signal_price IS NULL) AS unmatched,"
    " sum(signal_to_fill_ms) AS latency FROM executions_enriched",
    "SELECT count(*) AS n, sum(price) AS price FROM signals",
    "SELECT count(*) AS n, sum(executions) AS e, sum(copied_notional) AS notional, sum(distinct_subscribers) AS subs,"
    " sum(p95_signal_to_fill_ms) AS p95 FROM influencer_metrics_1m",
    "SELECT count(*) AS n, sum(filled) AS f, sum(fees) AS fees, sum(avg_slippage_bps) AS slip FROM subscriber_metrics_1m",
    "SELECT count(*) AS n, sum(executions) AS e, sum(unmatched_executions) AS u, sum(p99_signal_to_fill_ms) AS p99,"
    " sum(error_rate) AS er FROM system_metrics_1m",
    "SELECT count(*) AS n, sum(errors) AS e, sum(affected_subscribers) AS a FROM execution_errors_1m",
    # Partition columns come from the paths in both engines.
    "SELECT count(DISTINCT dt) AS days, count(DISTINCT hour) AS hours FROM raw_execution_results",
]

con = duckdb.connect()
for name, folder in TABLES.items():
    con.execute(
        f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{OUT}/{folder}/*/*/*.parquet', "
        "hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR})"
    )


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)


failed = 0
for sql in CHECKS:
    ours = subprocess.run([BIN, "query", "--output", OUT, "--format", "json", sql],
                          check=True, capture_output=True, text=True).stdout
    ours = json.loads(ours.splitlines()[0])
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    theirs = dict(zip(cols, cur.fetchone()))
    ok = all(close(ours.get(c), theirs[c]) for c in cols) and theirs[cols[0]] > 0
    failed += not ok
    print(f"{'ok ' if ok else 'BAD'} {sql[:90]}\n    query={ours}\n    duckdb={theirs}")

print(f"outside readers: {len(CHECKS) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
