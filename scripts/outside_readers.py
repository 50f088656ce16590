"""The daemon's output opened by outside engines through the statements of
`analytics-processor ddl`: DuckDB runs `ddl --dialect duckdb`, ClickHouse's
embedded engine (chdb) runs `ddl --dialect clickhouse`, and the same totals
are compared with `analytics-processor query`."""
import hashlib
import json
import math
import os
import re
import subprocess
import sys

import chdb.session
import duckdb

BIN, OUT = sys.argv[1], sys.argv[2]
# After system_metrics_1m gained `events` (signals + executions): older files
# lack it and must read as NULL there, next to the newer files.
EVOLVED = "--evolved" in sys.argv[3:]

# The same SQL runs on every engine; table names are those the DDL creates.
CHECKS = [
    "SELECT count(*) AS n, count(DISTINCT execution_id) AS ids, sum(filled_qty) AS qty FROM raw_execution_results",
    "SELECT count(*) AS n, count(DISTINCT signal_id) AS ids FROM raw_influencer_signals",
    "SELECT count(*) AS n, sum(slippage_bps) AS slip, count(signal_price) AS matched,"
    " sum(signal_to_fill_ms) AS latency FROM executions_enriched",
    "SELECT count(*) AS n, sum(price) AS price FROM signals",
    "SELECT count(*) AS n, sum(executions) AS e, sum(copied_notional) AS notional, sum(distinct_subscribers) AS subs,"
    " sum(p95_signal_to_fill_ms) AS p95 FROM influencer_metrics_1m",
    "SELECT count(*) AS n, sum(filled) AS f, sum(fees) AS fees, sum(avg_slippage_bps) AS slip FROM subscriber_metrics_1m",
    "SELECT count(*) AS n, sum(executions) AS e, sum(unmatched_executions) AS u, sum(p99_signal_to_fill_ms) AS p99,"
    " sum(error_rate) AS er FROM system_metrics_1m",
    "SELECT count(*) AS n, sum(errors) AS e, sum(affected_subscribers) AS a FROM execution_errors_1m",
    "SELECT count(*) AS n, count(DISTINCT error_kind) AS kinds FROM dead_letter_execution_results",
    # Unsigned integers (the lease term) and the hour markers of final tables.
    "SELECT count(*) AS n, count(DISTINCT table_name) AS tables, min(hour_start) AS first, sum(lease_term) AS terms"
    " FROM _completeness",
    # Partition columns come from the paths in every engine, as strings.
    "SELECT count(DISTINCT dt) AS days, count(DISTINCT hour) AS hours, min(dt) AS first_day, max(hour) AS last_hour"
    " FROM raw_execution_results",
    # Times keep their microseconds and their UTC instant.
    "SELECT count(*) AS n, min(window_start) AS first, max(window_start) AS last FROM system_metrics_1m",
    "SELECT count(*) AS n, min(submitted_at) AS first, max(executed_at) AS last FROM executions_enriched",
]

if EVOLVED:
    CHECKS += [
        "SELECT count(*) AS n, count(events) AS with_events, count(*) - count(events) AS without,"
        " sum(events) AS total_events, sum(signals + executions) FILTER (WHERE events IS NOT NULL) AS expected"
        " FROM system_metrics_1m",
    ]


def ddl(dialect):
    return subprocess.run([BIN, "ddl", "--dialect", dialect, "--output", OUT],
                          check=True, capture_output=True, text=True).stdout


def statements(text):
    """Statements of a DDL script, without its comment lines."""
    body = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


duck = duckdb.connect()
duck.execute("SET TimeZone = 'UTC'")
for s in statements(ddl("duckdb")):
    duck.execute(s)
ch = chdb.session.Session()
for s in statements(ddl("clickhouse")):
    ch.query(s)


def duck_row(sql):
    cur = duck.execute(sql)
    return dict(zip([d[0] for d in cur.description], cur.fetchone()))


def ch_row(sql):
    out = ch.query(sql + " SETTINGS session_timezone = 'UTC'", "JSONEachRow").bytes().decode()
    return json.loads(out.splitlines()[0])


def norm(v):
    """One spelling per value across engines: numbers as floats, times as
    'YYYY-MM-DD HH:MM:SS.ffffff' in UTC."""
    if v is None or isinstance(v, (int, float)):
        return v
    if hasattr(v, "isoformat"):
        v = v.isoformat(sep=" ")
    s = str(v).replace("T", " ").removesuffix("Z").removesuffix("+00:00")
    try:
        return float(s)
    except ValueError:
        pass
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d{1,6}))?", s)
    return f"{m[1]}.{(m[2] or '').ljust(6, '0')}" if m else s


def same(a, b):
    a, b = norm(a), norm(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)
    return a == b


failed = 0
for sql in CHECKS:
    ours = subprocess.run([BIN, "query", "--output", OUT, "--format", "json", sql],
                          check=True, capture_output=True, text=True).stdout
    ours = json.loads(ours.splitlines()[0])
    for engine, row in (("duckdb", duck_row), ("clickhouse", ch_row)):
        theirs = row(sql)
        cols = list(theirs)
        ok = all(same(ours.get(c), theirs[c]) for c in cols) and (theirs[cols[0]] or 0) > 0
        if EVOLVED and "with_events" in theirs:
            # Both generations present, and the new column right where it is set.
            ok = ok and theirs["with_events"] > 0 and theirs["without"] > 0
            ok = ok and same(theirs["total_events"], theirs["expected"])
        failed += not ok
        print(f"{'ok ' if ok else 'BAD'} {engine:10} {sql[:80]}\n    query={ours}\n    {engine}={theirs}")

# Every metric file names the definition that wrote it: the SHA-256 of its
# sql/ file. After the evolution step both versions of system_metrics_1m
# have files: the first run's and the evolved one's.
hashes = dict(duck.execute(
    "SELECT DISTINCT decode(value), regexp_extract(file_name, 'metrics/([a-z0-9_]+)/', 1)"
    f" FROM parquet_kv_metadata('{OUT}/metrics/*/*/*/*.parquet')"
    " WHERE decode(key) = 'analytics_processor.definition_sha256'").fetchall())
expected = [("sql", "system_metrics_1m"), ("sql", "execution_errors_1m")]
if EVOLVED:
    expected.append((os.environ["AP_SQL_DIR"], "system_metrics_1m"))
for folder, metric in expected:
    with open(f"{folder}/{metric}.sql", "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    ok = hashes.get(want) == metric
    failed += not ok
    print(f"{'ok ' if ok else 'BAD'} definition hash of {folder}/{metric}.sql: {want[:16]}… in {sorted(h[:16] for h in hashes)}")

# The metric's description (its header) is the table's comment in both.
with open("sql/influencer_metrics_1m.sql") as f:
    described = next(l for l in f if l.startswith("-- description:"))
described = described.split(":", 1)[1].strip()
comments = {
    "duckdb": duck.execute("SELECT comment FROM duckdb_views() WHERE view_name = 'influencer_metrics_1m'").fetchone()[0],
    "clickhouse": ch_row("SELECT comment FROM system.tables WHERE name = 'influencer_metrics_1m'")["comment"],
}
for engine, comment in comments.items():
    ok = comment.startswith(described)
    failed += not ok
    print(f"{'ok ' if ok else 'BAD'} {engine:10} comment of influencer_metrics_1m: {comment!r}")

print(f"outside readers: {2 * len(CHECKS) + len(expected) + len(comments) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
