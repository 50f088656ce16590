#!/usr/bin/env python3
"""The analytics-processor pipeline as a Spark Structured Streaming job.

    python job.py --output OUT [--brokers H:P] [--signals-topic T] [--executions-topic T]
                  [--interval 5] [--allowed-lateness 60] [--max-offsets-per-trigger N]
                  [--stop-when-idle S] [--driver-memory 2g] [--checkpoint DIR] ...

Local mode (`local[2]`). Reads both topics from the earliest offset, writes the
valid messages as raw Parquet and, once the event-time watermark passes a
one-minute window, the metrics of `sql/` for it (see bench/spark/README.md).

Shape, and why
--------------
ONE streaming query (the Kafka source subscribed to both topics) with
`foreachBatch`. Per micro-batch, in the driver:

 1. parse + validate the batch once (persisted), count invalid messages
    (dead-letter count only);
 2. append the valid rows to OUT/raw/<topic table>/dt=…/hour=… (zstd Parquet,
    with kafka_partition, kafka_offset, kafka_timestamp, ingested_at);
 3. advance the watermark kept in the driver and count the events whose
    window was already final as late. Default (`--watermark partition`):
    analytics-processor's rule (window.rs), the minimum over partitions of
    their newest event time, partitions quiet for --idle-timeout excepted,
    minus the allowed lateness. `--watermark global` is Spark's own rule, max
    event time seen minus the lateness; it finalizes windows while a partition
    that lags in event time still holds their events (maxOffsetsPerTrigger
    splits a backlog by offsets, not by event time), which then count as late
    and are left out, so its rows differ from ours on a multi-batch catch-up;
 4. for the windows that became final: read their raw rows back from OUT/raw
    (only the hour folders concerned), deduplicate by signal_id/execution_id
    (first by Kafka position), join executions to the signals of a 24 h
    lookback (`executions_enriched` of contracts.md), run the metric SQL files
    of sql/ unchanged but for `date_bin(INTERVAL '1 minute', t)` ->
    `date_trunc('MINUTE', t)`, and append the rows under OUT/metrics/<name>/.

Spark's own streaming aggregation (withWatermark + groupBy(window)) was not
used: it refuses count(DISTINCT) on a stream, and the exact percentiles and
distinct counts would need every event of a window in state anyway; the
executions -> signals enrichment would be a stream-stream join holding 24 h of
signals in state, and "signal unknown when the window is final" cannot be
expressed. Reading final windows back from raw/ is also what makes the result
independent of micro-batch boundaries, as in analytics-processor's own design
(window.rs -> metrics/engine.rs), so the two outputs are comparable row by row.

At the end (stop when idle, or SIGTERM/SIGINT) it prints one JSON line on
stdout; per micro-batch a line on stderr.
"""
import argparse
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WINDOW_US = 60_000_000
HOUR_US = 3_600_000_000
MAX_MESSAGE_BYTES = 1 << 20


def log(msg):
    print(f"[spark-job] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--brokers", default=os.environ.get("AP_BROKERS", "127.0.0.1:9092"))
    ap.add_argument("--signals-topic", default="influencer_signals")
    ap.add_argument("--executions-topic", default="execution_results")
    ap.add_argument("--output", required=True, help="output root (a local directory)")
    ap.add_argument("--interval", type=float, default=5, help="trigger interval, seconds")
    ap.add_argument("--allowed-lateness", type=float, default=60, help="seconds")
    ap.add_argument("--max-offsets-per-trigger", type=int, default=500_000,
                    help="messages per micro-batch over both topics (0: no limit)")
    ap.add_argument("--stop-when-idle", type=float, default=None,
                    help="stop after this many seconds without new input, once every "
                         "partition was read to the end offsets it had at start; "
                         "then finalize every window (end of input)")
    ap.add_argument("--driver-memory", default="2g")
    ap.add_argument("--checkpoint", default=None, help="default OUT/_spark_checkpoint")
    ap.add_argument("--watermark", choices=["partition", "global"], default="partition",
                    help="partition (analytics-processor's rule): min over partitions of "
                         "their newest event time (partitions quiet for --idle-timeout "
                         "excepted) - lateness; global: max event time seen - lateness")
    ap.add_argument("--idle-timeout", type=float, default=30,
                    help="--watermark partition: seconds after which a quiet partition "
                         "stops holding the watermark back")
    ap.add_argument("--lookback-hours", type=float, default=24,
                    help="how long before its execution a signal may have been emitted")
    ap.add_argument("--metrics", default="system_metrics_1m,subscriber_metrics_1m",
                    help="comma-separated names of sql/*.sql, or 'all'")
    ap.add_argument("--final-tables", action="store_true",
                    help="also write the final tables signals/ and executions_enriched/")
    ap.add_argument("--sql-dir", default=os.path.join(REPO, "sql"))
    ap.add_argument("--jars-dir", default=os.path.join(REPO, "bench", ".cache", "spark-jars"),
                    help="the Kafka connector jars fetched by setup.sh")
    ap.add_argument("--shuffle-partitions", type=int, default=2)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--verbose", action="store_true", help="log the seconds of every step")
    return ap.parse_args(argv)


# --- contracts.md §1: schemas and validation, as Spark SQL expressions ---------

SIGNAL_JSON = ("schema_version BIGINT, signal_id STRING, influencer_id STRING, "
               "instrument STRING, side STRING, action STRING, price DOUBLE, "
               "allocation_pct DOUBLE, confidence DOUBLE, emitted_at STRING")
EXECUTION_JSON = ("schema_version BIGINT, execution_id STRING, signal_id STRING, "
                  "influencer_id STRING, subscriber_id STRING, instrument STRING, "
                  "side STRING, status STRING, requested_qty DOUBLE, filled_qty DOUBLE, "
                  "avg_fill_price DOUBLE, fee DOUBLE, realized_pnl DOUBLE, "
                  "error_code STRING, venue STRING, submitted_at STRING, executed_at STRING")

# Column order and types of the raw tables (schema.rs): contract fields, then Kafka's.
SIGNAL_COLUMNS = [
    ("schema_version", "INT"), ("signal_id", "STRING"), ("influencer_id", "STRING"),
    ("instrument", "STRING"), ("side", "STRING"), ("action", "STRING"),
    ("price", "DOUBLE"), ("allocation_pct", "DOUBLE"), ("confidence", "DOUBLE"),
    ("emitted_at", "TIMESTAMP"),
]
EXECUTION_COLUMNS = [
    ("schema_version", "INT"), ("execution_id", "STRING"), ("signal_id", "STRING"),
    ("influencer_id", "STRING"), ("subscriber_id", "STRING"), ("instrument", "STRING"),
    ("side", "STRING"), ("status", "STRING"), ("requested_qty", "DOUBLE"),
    ("filled_qty", "DOUBLE"), ("avg_fill_price", "DOUBLE"), ("fee", "DOUBLE"),
    ("realized_pnl", "DOUBLE"), ("error_code", "STRING"), ("venue", "STRING"),
    ("submitted_at", "TIMESTAMP"), ("executed_at", "TIMESTAMP"),
]
KAFKA_COLUMNS = [("kafka_partition", "INT"), ("kafka_offset", "BIGINT"),
                 ("kafka_timestamp", "TIMESTAMP"), ("ingested_at", "TIMESTAMP")]

UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
RFC3339_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"


def sql_str(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ts_expr(field):
    """RFC 3339 text -> TIMESTAMP (UTC), NULL when malformed or outside 2000..2099."""
    return (f"CASE WHEN j.{field} RLIKE {sql_str(RFC3339_RE)} THEN "
            f"CASE WHEN year(try_cast(j.{field} AS TIMESTAMP)) BETWEEN 2000 AND 2099 "
            f"THEN try_cast(j.{field} AS TIMESTAMP) END END")


def non_empty(field):
    return f"trim(j.{field}) <> ''"


# Framing (decode.rs `parse`): a value, at most 1 MiB, UTF-8, a JSON object.
FRAMING = (f"value IS NOT NULL AND octet_length(value) BETWEEN 1 AND {MAX_MESSAGE_BYTES} "
           "AND is_valid_utf8(v) AND (left(v, 1) = '{' OR v RLIKE '^\\\\s*\\\\{')")

SIGNAL_RULES = [
    "j.schema_version BETWEEN 1 AND 2147483647",
    f"j.signal_id RLIKE {sql_str(UUID_RE)}",
    non_empty("influencer_id"), non_empty("instrument"),
    "j.side IN ('buy', 'sell')",
    "j.action IN ('open', 'close', 'adjust')",
    "j.price > 0",
    "j.allocation_pct > 0 AND j.allocation_pct <= 1",
    "(j.confidence IS NULL OR j.confidence BETWEEN 0 AND 1)",
    "_emitted_at IS NOT NULL",
]
EXECUTION_RULES = [
    "j.status IN ('filled', 'partially_filled', 'rejected', 'failed', 'cancelled')",
    "j.filled_qty >= 0",
    "(j.status IN ('filled', 'partially_filled') OR j.filled_qty = 0)",
    # avg_fill_price is required but may be null: the key must be present.
    "instr(v, '\"avg_fill_price\"') > 0",
    "(CASE WHEN j.avg_fill_price IS NULL THEN j.filled_qty = 0 "
    "ELSE j.avg_fill_price > 0 AND j.filled_qty <> 0 END)",
    "j.schema_version BETWEEN 1 AND 2147483647",
    f"j.execution_id RLIKE {sql_str(UUID_RE)}",
    non_empty("signal_id"), non_empty("influencer_id"), non_empty("subscriber_id"),
    non_empty("instrument"),
    "j.side IN ('buy', 'sell')",
    "j.requested_qty > 0",
    "j.fee >= 0",
    non_empty("venue"),
    "_submitted_at IS NOT NULL",
    "_executed_at IS NOT NULL",
]


def parse_topic(df, topic, json_schema, columns, rules, time_fields, event_time):
    """Kafka rows of `topic` -> contract columns + Kafka columns + _valid, _et."""
    from pyspark.sql import functions as F

    d = (df.where(F.col("topic") == topic)
         .selectExpr("partition AS kafka_partition", "offset AS kafka_offset",
                     "timestamp AS kafka_timestamp", "value", "CAST(value AS STRING) AS v"))
    d = d.selectExpr("*", f"from_json(v, {sql_str(json_schema)}, "
                          "map('mode', 'PERMISSIVE', 'allowNonNumericNumbers', 'false')) AS j")
    d = d.selectExpr("*", *[f"{ts_expr(f)} AS _{f}" for f in time_fields])
    valid = " AND ".join(f"({r})" for r in [FRAMING, "j IS NOT NULL"] + rules)
    cols = []
    for name, typ in columns:
        if name in time_fields:
            cols.append(f"_{name} AS {name}")
        else:
            cols.append(f"CAST(j.{name} AS {typ}) AS {name}")
    return d.selectExpr(
        *cols, "kafka_partition", "kafka_offset", "kafka_timestamp",
        "current_timestamp() AS ingested_at",
        f"coalesce({valid}, false) AS _valid",
    ).selectExpr("*", f"CASE WHEN _valid THEN {event_time} END AS _et")


# --- the job -------------------------------------------------------------------

class Steps:
    """Seconds per named step, for the --verbose batch lines."""

    def __init__(self):
        self.t = time.time()
        self.parts = []

    def __call__(self, name):
        now = time.time()
        self.parts.append(f"{name} {now - self.t:.2f}")
        self.t = now

    def __str__(self):
        return ", ".join(self.parts)


def floor_window(us):
    return (us // WINDOW_US) * WINDOW_US


def hour_folder(us):
    t = time.gmtime(us // 1_000_000)
    return time.strftime("dt=%Y-%m-%d/hour=%H", t)


def hours_covering(from_us, to_us):
    h = (from_us // HOUR_US) * HOUR_US
    while h < to_us:
        yield h
        h += HOUR_US


def load_metric_sql(sql_dir, names):
    files = sorted(f[:-4] for f in os.listdir(sql_dir) if f.endswith(".sql"))
    wanted = files if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    out = {}
    for n in wanted:
        if n not in files:
            sys.exit(f"--metrics: no {n}.sql in {sql_dir}")
        with open(os.path.join(sql_dir, n + ".sql")) as f:
            text = f.read()
        # The only DataFusion function the catalog uses that Spark lacks.
        text = re.sub(r"date_bin\(\s*INTERVAL\s+'1 minute'\s*,", "date_trunc('MINUTE',", text,
                      flags=re.IGNORECASE)
        out[n] = text.strip().rstrip(";")
    return out


class Job:
    def __init__(self, a, spark):
        self.a = a
        self.spark = spark
        self.out = os.path.abspath(a.output)
        self.ckpt = os.path.abspath(a.checkpoint or os.path.join(self.out, "_spark_checkpoint"))
        self.state_path = os.path.join(self.ckpt, "analytics_state.json")
        self.lateness_us = int(a.allowed_lateness * 1e6)
        self.lookback_us = int(a.lookback_hours * HOUR_US)
        self.metrics = load_metric_sql(a.sql_dir, a.metrics)
        self.lock = threading.Lock()
        self.in_batch = False
        self.error = None
        # Counters and watermark state; saved after every batch, so a restart
        # (same checkpoint) goes on where the last committed batch left off.
        self.s = {
            "last_batch": -1, "events": 0, "valid": 0, "invalid": 0, "late": 0,
            "batches": 0, "final_through": None,  # windows starting before it are final
            # [pending_from, pending_to): the not yet final windows holding events
            "pending_from": None, "pending_to": None,
            "pmax": {},         # "topic/partition" -> newest event time (µs)
            "consumed": {},     # "topic/partition" -> next offset
            "finalized_windows": 0, "first_batch_at": None, "last_input_at": None,
        }
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                self.s.update(json.load(f))
            log(f"resuming after batch {self.s['last_batch']} (state {self.state_path})")
        self.last_seen = {}  # "topic/partition" -> wall time of its last message
        self.started = time.time()

    # -- paths
    def raw_dir(self, table):
        return os.path.join(self.out, "raw", table)

    def save_state(self):
        os.makedirs(self.ckpt, exist_ok=True)
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.s, f)
        os.replace(tmp, self.state_path)

    # -- per micro-batch
    def batch(self, df, batch_id):
        try:
            with self.lock:
                self.in_batch = True
            self._batch(df, batch_id)
        except Exception as e:  # surfaced by the main loop; Spark fails the query too
            self.error = e
            raise
        finally:
            with self.lock:
                self.in_batch = False

    def batch_offsets(self, batch_id):
        """{"topic/partition": end offset} of this micro-batch, from Spark's offset
        log (written before the batch runs): no pass over the data needed."""
        with open(os.path.join(self.ckpt, "offsets", str(batch_id))) as f:
            lines = f.read().splitlines()
        ends = json.loads(lines[2])  # v1, batch metadata, then one line per source
        return {f"{t}/{p}": int(o) for t, parts in ends.items() for p, o in parts.items()}

    def _batch(self, df, batch_id):
        global F
        from pyspark.sql import functions as F
        if batch_id <= self.s["last_batch"]:
            log(f"batch {batch_id}: already processed before a restart, skipped")
            return
        t0 = time.time()
        s, a = self.s, self.a
        if s["first_batch_at"] is None:
            s["first_batch_at"] = t0
        ends = self.batch_offsets(batch_id)
        moved = {k for k, e in ends.items() if e > s["consumed"].get(k, 0)}
        bound = s["final_through"]
        self.steps = steps = Steps()
        # The Kafka rows are read once and kept (as bytes: cheap to cache); each
        # topic is then parsed once, its statistics gathered by `observe` during
        # its raw write, so no extra pass over the batch is made.
        cached = df.select("topic", "partition", "offset", "timestamp", "value").persist()
        stats = {}
        try:
            for topic, table, js, cols, rules, times, et in (
                    (a.signals_topic, "influencer_signals", SIGNAL_JSON, SIGNAL_COLUMNS,
                     SIGNAL_RULES, ["emitted_at"], "emitted_at"),
                    (a.executions_topic, "execution_results", EXECUTION_JSON, EXECUTION_COLUMNS,
                     EXECUTION_RULES, ["submitted_at", "executed_at"], "executed_at")):
                parts = sorted(int(k.split("/")[1]) for k in moved if k.rsplit("/", 1)[0] == topic)
                if parts:
                    d = parse_topic(cached, topic, js, cols, rules, times, et)
                    stats[topic] = self.write_raw(d, table, parts, bound)
                    steps(f"raw {table}")
        finally:
            cached.unpersist()
        t_raw = time.time() - t0

        now = time.time()
        n = nvalid = late = 0
        for topic, st in stats.items():
            n += st["n"]
            nvalid += st["ok"]
            late += st["late"]
            for p, m in st["pmax"].items():
                if m is not None:
                    key = f"{topic}/{p}"
                    s["pmax"][key] = max(s["pmax"].get(key, m), m)
            if st["lo"] is not None:
                lo, hi = floor_window(st["lo"]), floor_window(st["hi"]) + WINDOW_US
                s["pending_from"] = lo if s["pending_from"] is None else min(s["pending_from"], lo)
                s["pending_to"] = hi if s["pending_to"] is None else max(s["pending_to"], hi)
        for k in moved:
            s["consumed"][k] = ends[k]
            self.last_seen[k] = now
        s["events"] += n
        s["valid"] += nvalid
        s["invalid"] += n - nvalid
        s["late"] += late
        s["batches"] += 1

        t1 = time.time()
        wm = self.watermark(now)
        nwin = 0
        if wm is not None:
            nwin = self.finalize_through(floor_window(wm))
        s["last_batch"] = batch_id
        t_end = time.time()
        s["last_input_at"] = t_end  # idleness counts from the end of the last batch with input
        self.save_state()
        log(f"batch {batch_id}: {n} rows ({nvalid} valid, {n - nvalid} invalid, {late} late), "
            f"{t_end - t0:.2f} s (raw {t_raw:.2f} s, finalize {t_end - t1:.2f} s, "
            f"{nwin} windows), watermark {fmt_us(wm)}, final through {fmt_us(s['final_through'])}")
        if a.verbose:
            log(f"  steps: {steps}")

    def write_raw(self, d, table, partitions, bound):
        """Appends the valid rows of `d` to raw/<table>; returns the batch's
        statistics, observed while writing: messages, valid, late (window
        already final), per partition the newest valid event time, and the
        range of the other valid events' times."""
        from pyspark.sql import Observation
        on_time = "_valid" if bound is None else f"_valid AND _et >= timestamp_micros({bound})"
        late = "false" if bound is None else f"_valid AND _et < timestamp_micros({bound})"
        exprs = [F.count(F.lit(1)).alias("n"),
                 F.expr("count_if(_valid)").alias("ok"),
                 F.expr(f"count_if({late})").alias("late"),
                 F.expr(f"min(CASE WHEN {on_time} THEN unix_micros(_et) END)").alias("lo"),
                 F.expr(f"max(CASE WHEN {on_time} THEN unix_micros(_et) END)").alias("hi")]
        exprs += [F.expr(f"max(CASE WHEN _valid AND kafka_partition = {p} "
                         f"THEN unix_micros(_et) END)").alias(f"p{p}") for p in partitions]
        obs = Observation()
        part = ("date_format(_et, 'yyyy-MM-dd') AS dt", "date_format(_et, 'HH') AS hour")
        (d.observe(obs, *exprs).where("_valid").selectExpr("*", *part).drop("_valid", "_et")
         .write.mode("append").partitionBy("dt", "hour")
         .option("compression", "zstd").parquet(self.raw_dir(table)))
        r = obs.get
        return {"n": r["n"], "ok": r["ok"] or 0, "late": r["late"] or 0, "lo": r["lo"],
                "hi": r["hi"], "pmax": {p: r[f"p{p}"] for p in partitions}}

    def watermark(self, now):
        pmax = self.s["pmax"]
        if self.a.watermark == "global" or not self.partitions:
            return max(pmax.values()) - self.lateness_us if pmax else None
        # analytics-processor's rule (window.rs watermark_of)
        newest, active = None, []
        for key in self.partitions:
            m = pmax.get(key)
            if m is not None:
                newest = m if newest is None else max(newest, m)
            idle = now - self.last_seen.get(key, self.started) >= self.a.idle_timeout
            if not idle:
                active.append(m)
        if not active:
            low = newest
        elif any(m is None for m in active):
            return None
        else:
            low = min(active)
        return None if low is None else low - self.lateness_us

    # -- finalization
    def finalize_through(self, bound):
        """Finalizes every window starting before `bound` (µs); returns how many
        window minutes were finalized (empty ones included: they write nothing)."""
        s = self.s
        if s["final_through"] is not None and bound <= s["final_through"]:
            return 0
        n = 0
        lo = s["pending_from"]
        if lo is not None and lo < bound:
            end = min(bound, s["pending_to"])
            # One chunk per hour folder: reads stay inside one raw partition (+ lookback).
            for h in hours_covering(lo, end):
                a, b = max(lo, h), min(end, h + HOUR_US)
                folder = hour_folder(h)
                if any(os.path.isdir(os.path.join(self.raw_dir(t), folder))
                       for t in ("influencer_signals", "execution_results")):
                    self.finalize_range(a, b)
                    n += (b - a) // WINDOW_US
            if s["pending_to"] > bound:
                s["pending_from"] = bound
            else:
                s["pending_from"] = s["pending_to"] = None
        s["finalized_windows"] += n
        s["final_through"] = bound if s["final_through"] is None else max(bound, s["final_through"])
        return n

    def read_raw(self, table, columns, from_us, to_us):
        root = self.raw_dir(table)
        paths = [os.path.join(root, hour_folder(h)) for h in hours_covering(from_us, to_us)]
        paths = [p for p in paths if os.path.isdir(p)]
        schema = ", ".join(f"{n} {t}" for n, t in columns + KAFKA_COLUMNS)
        if not paths:
            return self.spark.createDataFrame([], schema)
        return self.spark.read.schema(schema).option("basePath", root).parquet(*paths)

    def finalize_range(self, from_us, to_us):
        """metrics/engine.rs `finalize` for the windows in [from, to)."""
        spark = self.spark
        t0 = time.time()
        steps = getattr(self, "steps", None) or Steps()
        self.read_raw("influencer_signals", SIGNAL_COLUMNS, from_us, to_us) \
            .createOrReplaceTempView("raw_signals")
        self.read_raw("influencer_signals", SIGNAL_COLUMNS, from_us - self.lookback_us, to_us) \
            .createOrReplaceTempView("raw_signals_lookback")
        self.read_raw("execution_results", EXECUTION_COLUMNS, from_us, to_us) \
            .createOrReplaceTempView("raw_executions")

        def dedupe(table, id_col, time_col, cols, lo, hi):
            return f"""SELECT {cols} FROM (
                SELECT *, row_number() OVER (PARTITION BY {id_col}
                                             ORDER BY kafka_partition, kafka_offset) AS rn
                FROM {table}
                WHERE {time_col} >= timestamp_micros({lo}) AND {time_col} < timestamp_micros({hi})
            ) WHERE rn = 1"""

        sig_cols = ", ".join(n for n, _ in SIGNAL_COLUMNS)
        exe_cols = ", ".join(n for n, _ in EXECUTION_COLUMNS + KAFKA_COLUMNS)
        signals = spark.sql(dedupe("raw_signals", "signal_id", "emitted_at", sig_cols,
                                   from_us, to_us))
        lookback = dedupe("raw_signals_lookback", "signal_id", "emitted_at",
                          "signal_id, price, emitted_at", from_us - self.lookback_us, to_us)
        executions = spark.sql(f"""
            WITH e AS ({dedupe("raw_executions", "execution_id", "executed_at", exe_cols,
                               from_us, to_us)}),
                 s AS ({lookback})
            SELECT {", ".join("e." + n for n, _ in EXECUTION_COLUMNS)},
                s.price AS signal_price,
                s.emitted_at AS signal_emitted_at,
                (e.avg_fill_price - s.price) / s.price * 10000.0D
                    * CASE WHEN e.side = 'sell' THEN -1.0D ELSE 1.0D END AS slippage_bps,
                CAST(unix_micros(e.executed_at) - unix_micros(s.emitted_at) AS DOUBLE) / 1000.0D
                    AS signal_to_fill_ms
            FROM e LEFT JOIN s ON e.signal_id = s.signal_id""")
        if os.environ.get("SPARK_JOB_PERSIST", "1") == "1":
            signals, executions = signals.persist(), executions.persist()
        steps("plan")
        try:
            signals.createOrReplaceTempView("signals")
            executions.createOrReplaceTempView("executions")
            if self.a.final_tables:
                self.write_final(signals, "signals", "emitted_at")
                steps("signals")
                self.write_final(executions, "executions_enriched", "executed_at")
                steps("executions_enriched")
            for name, sql in self.metrics.items():
                self.write_final(spark.sql(sql), f"metrics/{name}", "window_start")
                steps(name)
        finally:
            signals.unpersist()
            executions.unpersist()
        log(f"  finalized {fmt_us(from_us)} .. {fmt_us(to_us)} in {time.time() - t0:.2f} s")

    def write_final(self, df, folder, time_col):
        (df.selectExpr("*", f"date_format({time_col}, 'yyyy-MM-dd') AS dt",
                       f"date_format({time_col}, 'HH') AS hour")
         .coalesce(1).write.mode("append").partitionBy("dt", "hour")
         .option("compression", "zstd").parquet(os.path.join(self.out, folder)))

    def finalize_all(self):
        """End of input: every pending window is final."""
        if self.s["pending_to"] is None:
            return 0
        with self.lock:
            n = self.finalize_through(self.s["pending_to"])
        self.save_state()
        return n

    def metric_rows(self):
        out = {}
        for name in self.metrics:
            p = os.path.join(self.out, "metrics", name)
            out[name] = self.spark.read.parquet(p).count() if os.path.isdir(p) else 0
        return out


def fmt_us(us):
    if us is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us / 1e6))


def kafka_offsets(spark, brokers, topics):
    """{"topic/partition": (beginning, end)} now, through the JVM's kafka-clients
    (the connector's own jar, already on the driver's class path)."""
    jvm = spark._jvm
    props = jvm.java.util.Properties()
    props.put("bootstrap.servers", brokers)
    deser = "org.apache.kafka.common.serialization.ByteArrayDeserializer"
    props.put("key.deserializer", deser)
    props.put("value.deserializer", deser)
    consumer = jvm.org.apache.kafka.clients.consumer.KafkaConsumer(props)
    try:
        tps = jvm.java.util.ArrayList()
        for t in topics:
            infos = consumer.partitionsFor(t)
            if infos is None or infos.isEmpty():
                sys.exit(f"topic {t} does not exist on {brokers}")
            for info in infos:
                tps.add(jvm.org.apache.kafka.common.TopicPartition(t, info.partition()))
        begin = consumer.beginningOffsets(tps)
        end = consumer.endOffsets(tps)
        return {f"{tp.topic()}/{tp.partition()}": (begin.get(tp), end.get(tp)) for tp in tps}
    finally:
        consumer.close()


def main():
    a = parse_args()
    started = time.time()
    jars = sorted(os.path.join(a.jars_dir, f) for f in os.listdir(a.jars_dir)
                  if f.endswith(".jar")) if os.path.isdir(a.jars_dir) else []
    if not any("spark-sql-kafka" in j for j in jars):
        sys.exit(f"no Kafka connector jars in {a.jars_dir}: run bench/spark/setup.sh")

    # Loopback only: the job needs no other interface (and Spark warns otherwise).
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(a.master)
             .appName("analytics-processor-spark-bench")
             .config("spark.driver.memory", a.driver_memory)
             .config("spark.jars", ",".join(jars))
             .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.shuffle.partitions", str(a.shuffle_partitions))
             # The cached Kafka bytes do not compress: do not spend CPU trying.
             .config("spark.sql.inMemoryColumnarStorage.compressed", "false")
             .config("spark.sql.parquet.compression.codec", "zstd")
             .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
             .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             # No _SUCCESS marker files beside the Hive partitions.
             .config("spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    # A catch-up's batches take longer than the interval by design: not worth a warning each.
    jvm = spark._jvm
    for name in ("org.apache.spark.sql.execution.streaming.ProcessingTimeExecutor",
                 "org.apache.spark.sql.execution.streaming.runtime.ProcessingTimeExecutor"):
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
            name, jvm.org.apache.logging.log4j.Level.ERROR)
    log(f"Spark {spark.version} on {a.master}, driver memory {a.driver_memory}, "
        f"started in {time.time() - started:.1f} s")

    job = Job(a, spark)
    topics = [a.signals_topic, a.executions_topic]
    offsets = kafka_offsets(spark, a.brokers, topics)
    job.partitions = sorted(offsets)
    for key, (begin, _end) in offsets.items():
        job.s["consumed"].setdefault(key, begin)
    log("end offsets at start: " + ", ".join(f"{k}={v[1]}" for k, v in sorted(offsets.items())))

    reader = (spark.readStream.format("kafka")
              .option("kafka.bootstrap.servers", a.brokers)
              .option("subscribe", ",".join(topics))
              .option("startingOffsets", "earliest"))
    if a.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(a.max_offsets_per_trigger))
    query = (reader.load().writeStream
             .foreachBatch(job.batch)
             .trigger(processingTime=f"{a.interval} seconds")
             .option("checkpointLocation", job.ckpt)
             .queryName("analytics")
             .start())

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    reason = None
    while True:
        time.sleep(0.5)
        if job.error is not None or (query.exception() is not None):
            reason = "error"
            break
        if not query.isActive:
            reason = "query ended"
            break
        if stop["signal"] is not None:
            reason = f"signal {stop['signal']}"
            break
        if a.stop_when_idle is not None:
            with job.lock:
                busy = job.in_batch
                s = job.s
                caught_up = all(s["consumed"].get(k, 0) >= end for k, (_b, end) in offsets.items())
                last = s["last_input_at"] or started
            if not busy and caught_up and time.time() - last >= a.stop_when_idle \
                    and not query.status["isTriggerActive"]:
                reason = "idle"
                break
    idle_at = time.time()
    query.stop()
    if reason == "error":
        err = job.error or query.exception()
        log(f"query failed: {str(err).splitlines()[0] if str(err) else repr(err)}")
        spark.stop()
        sys.exit(1)
    windows = 0
    if reason == "idle":
        t = time.time()
        windows = job.finalize_all()
        log(f"end of input: {windows} remaining windows finalized in {time.time() - t:.2f} s")
    done = time.time()
    s = job.s
    summary = {
        "events": s["events"], "valid": s["valid"], "invalid": s["invalid"], "late": s["late"],
        "batches": s["batches"], "wall_s": round(done - started, 3),
        "first_batch_at": s["first_batch_at"], "last_input_at": s["last_input_at"],
        "idle_detected_at": idle_at, "done_at": done,
        "finalized_windows": s["finalized_windows"], "stopped_by": reason,
        "metric_rows": job.metric_rows(),
        "spark": spark.version,
    }
    spark.stop()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
