#!/usr/bin/env python3
"""Checks that two output roots hold the same metrics.

    compare.py OURS_ROOT OTHER_ROOT [metric ...]

For each metric (default: system_metrics_1m subscriber_metrics_1m), reads
every Parquet file under <root>/metrics/<metric>, keys rows by the `keys`
of the metric file's header, and compares every column both sides have:
integers and strings exactly, floats to a relative 1e-9 (the two engines sum
in different orders). Prints a line per metric; exits 1 on any difference.
"""
import math
import os
import sys

import pyarrow.dataset as ds

SQL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sql")


def keys_of(metric):
    """The `-- keys:` line of the metric's header (sql/README.md)."""
    with open(os.path.join(SQL_DIR, metric + ".sql")) as f:
        for line in f:
            if not line.startswith("--"):
                break
            field, _, value = line[2:].partition(":")
            if field.strip() == "keys":
                return [k.strip() for k in value.split(",") if k.strip()]
    raise SystemExit(f"sql/{metric}.sql: no `-- keys:` in its header")


def rows(root, metric):
    path = os.path.join(root, "metrics", metric)
    files = [
        os.path.join(d, f)
        for d, dirs, names in os.walk(path)
        if not any(p.startswith(("_", ".")) for p in os.path.relpath(d, path).split(os.sep) if p != ".")
        for f in names
        if f.endswith(".parquet") and not f.startswith(("_", "."))
    ]
    table = ds.dataset(files, format="parquet").to_table()
    keys = keys_of(metric)
    out = {}
    for r in table.to_pylist():
        r.pop("dt", None)
        r.pop("hour", None)
        k = tuple(r[c] for c in keys)
        if k in out:
            raise SystemExit(f"{root}: {metric} has the key {k} twice")
        out[k] = r
    return out


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is None and b is None
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def main():
    ours, other, *metrics = sys.argv[1:]
    failed = False
    for m in metrics or ["system_metrics_1m", "subscriber_metrics_1m"]:
        a, b = rows(ours, m), rows(other, m)
        diffs = [f"only in ours: {k}" for k in a.keys() - b.keys()]
        diffs += [f"only in other: {k}" for k in b.keys() - a.keys()]
        for k in sorted(a.keys() & b.keys()):
            for col in a[k].keys() & b[k].keys():
                if not same(a[k][col], b[k][col]):
                    diffs.append(f"{k} {col}: {a[k][col]!r} vs {b[k][col]!r}")
        print(f"{m}: {len(a)} rows vs {len(b)}, {len(diffs)} differences")
        for d in diffs[:10]:
            print(f"  {d}")
        failed |= bool(diffs)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
