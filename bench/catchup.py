#!/usr/bin/env python3
"""When a catch-up run had read and committed its whole backlog.

    catchup.py ours DAEMON_LOG
    catchup.py spark JOB_STDOUT

Prints one JSON line: `events` (messages read) and `end_at` (epoch seconds).
The idle wait that detects the end of input, and the finalization of the
windows that only the end of input makes final, are left out for both:

  ours   the last `epoch committed` line, or the first `windows final` after
         it when that one came from the watermark (not the end-of-input
         finalization that directly precedes `stopping`)
  spark  `last_input_at`: the end of the last micro-batch that had input; a
         micro-batch finalizes the windows its watermark made final before
         it ends, so this includes the same work
"""
import json
import re
import sys
from datetime import datetime


def ts(line):
    stamp = line.split()[0].rstrip("Z")
    return datetime.fromisoformat(stamp + "+00:00").timestamp()


def ours(path):
    lines = open(path).read().splitlines()
    commits = [i for i, line in enumerate(lines) if "epoch committed" in line]
    if not commits:
        sys.exit(f"{path}: no epoch was committed")
    end = ts(lines[commits[-1]])
    later = [i for i in range(commits[-1] + 1, len(lines)) if "daemon: windows final " in lines[i]]
    if later:
        i = later[0]
        after = lines[i + 1] if i + 1 < len(lines) else ""
        if "stopping" not in after:
            end = ts(lines[i])
    events = None
    for line in lines:
        m = re.match(r"stopped: \d+ epochs, (\d+) messages", line)
        if m:
            events = int(m.group(1))
    if events is None:
        sys.exit(f"{path}: no 'stopped:' summary line")
    return {"events": events, "end_at": end}


def spark(path):
    d = json.loads(open(path).read().strip().splitlines()[-1])
    return {"events": d["events"], "end_at": d["last_input_at"]}


if __name__ == "__main__":
    system, path = sys.argv[1:3]
    print(json.dumps({"ours": ours, "spark": spark}[system](path)))
