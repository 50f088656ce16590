#!/usr/bin/env python3
"""Freshness of an output folder while events stream in.

    freshness.py --root DIR --until-file STOPFILE --out OUT.json
                 [--raw raw/execution_results,raw/influencer_signals]
                 [--metric metrics/system_metrics_1m]

Watches the folders four times a second and notes when each Parquet file
first appears (files under hidden or `_` folders, and temporary names, are
not yet readable and are skipped). It stops once STOPFILE exists, then reads
the files it saw. STOPFILE holds the window cutoff T (epoch seconds), known
only once the stream has ended:

  raw      per row: first seen - its Kafka timestamp (`kafka_timestamp`)
  metric   per window: first seen - window end (`window_start` + 1 minute),
           for windows ending before T: later ones close only at the end of
           input, not by the stream

and writes p50/p95/p99/max and counts as JSON. The watcher and the writer
share one clock (the machine's), so the figures are exact to the polling
period (0.25 s).
"""
import argparse
import json
import os
import time

import pyarrow.compute as pc
import pyarrow.parquet as pq

POLL_S = 0.25


def parquet_files(top):
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
        for name in filenames:
            if name.endswith(".parquet") and not name.startswith((".", "_")):
                yield os.path.join(dirpath, name)


def percentiles(values):
    if not values:
        return {"count": 0}
    v = sorted(values)
    at = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    return {
        "count": len(v),
        "p50_s": round(at(0.50), 3),
        "p95_s": round(at(0.95), 3),
        "p99_s": round(at(0.99), 3),
        "max_s": round(v[-1], 3),
    }


PER_SECOND = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}


def seconds(column):
    """Epoch seconds of a timestamp column, whatever its unit."""
    per = PER_SECOND[column.type.unit]
    return [None if v is None else v / per for v in pc.cast(column, "int64").to_pylist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--until-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--raw", default="raw/execution_results,raw/influencer_signals")
    ap.add_argument("--metric", default="metrics/system_metrics_1m")
    a = ap.parse_args()
    raw_dirs = [os.path.join(a.root, r) for r in a.raw.split(",")]
    metric_dir = os.path.join(a.root, a.metric)

    seen = {}
    while True:
        now = time.time()
        for top in raw_dirs + [metric_dir]:
            for path in parquet_files(top):
                seen.setdefault(path, now)
        if os.path.exists(a.until_file):
            break
        time.sleep(POLL_S)
    with open(a.until_file) as f:
        close_before = float(f.read().strip() or "inf")

    raw_lat, window_seen = [], {}
    for path, at in seen.items():
        try:
            if path.startswith(metric_dir):
                t = pq.read_table(path, columns=["window_start"])
                for ws in set(seconds(t.column("window_start"))):
                    end = ws + 60
                    if end < close_before:
                        window_seen[end] = min(window_seen.get(end, at), at)
            else:
                t = pq.read_table(path, columns=["kafka_timestamp"])
                raw_lat.extend(at - ts for ts in seconds(t.column("kafka_timestamp")) if ts)
        except OSError:
            continue  # replaced meanwhile (a retried epoch); its successor counts
    result = {
        "raw_visible": percentiles(raw_lat),
        "window_final": percentiles([at - end for end, at in window_seen.items()]),
    }
    with open(a.out, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
