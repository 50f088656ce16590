#!/usr/bin/env python3
"""Runs one command and measures its whole process tree.

    measure.py OUT.json -- CMD ARGS...

Samples every process below the command (a JVM that pyspark starts counts
too) five times a second and writes, as JSON:

  started_at    when the command was started (epoch seconds)
  wall_s        from start to exit
  cpu_s         user + system seconds of the tree (per process, its last
                sample; the direct child's own rusage if that is larger)
  peak_rss_mib  the largest sum of resident memory over the tree at one time
  exit_code     of the command

The command's stdout and stderr pass through unchanged.
"""
import json
import os
import resource
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def tree(root):
    seen, todo = [], [root]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children(p))
    return seen


def sample(pid):
    """(cpu seconds, rss bytes) of one process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    # Fields after the command name: utime and stime are the 12th and 13th.
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    return cpu, rss_pages * PAGE


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit("usage: measure.py OUT.json -- CMD ARGS...")
    out_path, cmd = sys.argv[1], sys.argv[3:]
    started_at, started = time.time(), time.monotonic()
    proc = subprocess.Popen(cmd)
    cpu_by_pid, peak = {}, 0
    while proc.poll() is None:
        rss = 0
        for pid in tree(proc.pid):
            s = sample(pid)
            if s is not None:
                cpu_by_pid[pid] = max(cpu_by_pid.get(pid, 0.0), s[0])
                rss += s[1]
        peak = max(peak, rss)
        time.sleep(0.2)
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = max(sum(cpu_by_pid.values()), usage.ru_utime + usage.ru_stime)
    result = {
        "started_at": round(started_at, 3),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 2),
        # ru_maxrss (KiB) covers the direct child alone; the tree sum is the figure.
        "peak_rss_mib": round(max(peak, usage.ru_maxrss * 1024) / 2**20, 1),
        "exit_code": proc.returncode,
    }
    with open(out_path, "w") as f:
        json.dump(result, f)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
