#!/usr/bin/env bash
# The benchmark: this service and the same job in Spark Structured Streaming,
# on the same topics of the real local broker, measured the same way, in one
# run. `make bench` calls it with the services up.
#
#   BENCH_MESSAGES=5000000   the seeded backlog (contract-shaped, with
#                            duplicates, malformed and out-of-order records)
#   BENCH_FRESH_SECONDS=240  how long events stream for the freshness figures
#   BENCH_INTERVAL=5         epoch (trigger) interval, seconds, both systems
#   BENCH_LATENESS=10        allowed lateness, seconds, both systems
#   BENCH_SPARK=1            0 leaves Spark out
#   BENCH_WORK=DIR           where outputs and logs go (default: a new /tmp folder)
#
# What is measured:
#   catch-up    the job starts on the whole backlog and stops by itself once it
#               has read every partition to its end, committed every epoch and
#               made every window final; events/s from its start to the
#               whole backlog committed (catchup.py: the idle wait that detects
#               the end is left out); CPU seconds and peak RSS of the whole
#               process tree (Spark's JVM included)
#   freshness   events stream at 50% of that system's own catch-up rate; per
#               event, its Kafka timestamp to its raw row being in a readable
#               Parquet file; per window, its end to its system_metrics_1m row
#               being readable; p50/p95/p99
#   reprocess   `reprocess` of the whole backlog's range from raw/, events/s
#   distinct    reprocess of the first hour with the count-distinct rewrite
#               off and on (AP_DISTINCT_REWRITE=off), the same rows either way
#
# The table goes to stdout and to bench/results/<date>.md.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$BENCH_DIR/../scripts/common.sh"

MESSAGES="${BENCH_MESSAGES:-5000000}"
FRESH_SECONDS="${BENCH_FRESH_SECONDS:-240}"
INTERVAL="${BENCH_INTERVAL:-5}"
LATENESS="${BENCH_LATENESS:-10}"
SPARK="${BENCH_SPARK:-1}"
IDLE=10
START=2026-03-01T00:00:00Z

log() { echo "bench: $(date +%T) $*" >&2; }
work="${BENCH_WORK:-$(mktemp -d /tmp/ap-bench.XXXXXX)}"
mkdir -p "$work" "$BENCH_DIR/results"
log "work folder $work"
id="b$(date +%s)"

CACHE="$BENCH_DIR/.cache"
if [[ $SPARK == 1 ]]; then
  "$BENCH_DIR/spark/setup.sh" >&2
fi
PY="$CACHE/venv/bin/python"
[[ -x $PY ]] || python3 -m venv "$CACHE/venv"
"$PY" -c 'import pyarrow' 2>/dev/null || "$PY" -m pip -q install pyarrow

measure() { "$PY" "$BENCH_DIR/measure.py" "$@"; }
# field FILE EXPR: EXPR over the JSON object on the last line of FILE.
field() { "$PY" -c 'import json,sys; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(eval(sys.argv[2], {}, d))' "$@"; }
calc() { "$PY" -c "print($1)"; }

ours() { # output group signals-topic executions-topic [run flags...]
  local out=$1 group=$2 st=$3 et=$4
  shift 4
  echo "$BIN" run --output "$out" --group "$group" --signals-topic "$st" --executions-topic "$et" \
    --interval "$INTERVAL" --allowed-lateness "$LATENESS" --idle-timeout "$IDLE" "$@"
}
spark() { # output signals-topic executions-topic [job flags...]
  local out=$1 st=$2 et=$3
  shift 3
  echo "$PY" "$BENCH_DIR/spark/job.py" --brokers "$AP_BROKERS" --output "$out" \
    --signals-topic "$st" --executions-topic "$et" \
    --interval "$INTERVAL" --allowed-lateness "$LATENESS" "$@"
}

systems=(ours)
[[ $SPARK == 1 ]] && systems+=(spark)

# --- catch-up ------------------------------------------------------------------
SIG="sig-$id" EXE="exe-$id"
log "producing a backlog of $MESSAGES messages into $SIG / $EXE"
# No events held back minutes: which of those count as late depends on where
# each system's micro-batches happen to end, and the two outputs are compared
# row by row below. Duplicates, malformed records, disorder within the
# lateness and executions before their signal stay in.
"$BIN" produce --count "$MESSAGES" --seed 11 --start "$START" --signal-gap 0.5 --late-rate 0 \
  --signals-topic "$SIG" --executions-topic "$EXE" --partitions 4 2>&1 | tail -n 1 >&2

declare -A rate cpu rss
for s in "${systems[@]}"; do
  log "catch-up: $s"
  if [[ $s == ours ]]; then
    cmd=$(ours "$work/ours" "ours-$id" "$SIG" "$EXE" --stop-when-idle "$IDLE")
  else
    cmd=$(spark "$work/spark" "$SIG" "$EXE" --stop-when-idle "$IDLE")
  fi
  # shellcheck disable=SC2086 # the command line is built of plain words
  measure "$work/$s-catchup.json" -- $cmd >"$work/$s-catchup.out" 2>"$work/$s-catchup.log" \
    || { tail -n 30 "$work/$s-catchup.log" >&2; exit 1; }
  if [[ $s == ours ]]; then
    tail -n 1 "$work/ours-catchup.log" >&2
    "$PY" "$BENCH_DIR/catchup.py" ours "$work/ours-catchup.log" >"$work/ours-end.json"
  else
    tail -n 1 "$work/spark-catchup.out" >&2
    "$PY" "$BENCH_DIR/catchup.py" spark "$work/spark-catchup.out" >"$work/spark-end.json"
  fi
  n=$(field "$work/$s-end.json" events)
  [[ $n -ge $MESSAGES ]] || { log "$s read $n of $MESSAGES messages"; exit 1; }
  # From the process start (JVM start included) to the whole backlog committed.
  took=$(calc "$(field "$work/$s-end.json" end_at) - $(field "$work/$s-catchup.json" started_at)")
  rate[$s]=$(calc "round($n / $took)")
  cpu[$s]=$(field "$work/$s-catchup.json" cpu_s)
  rss[$s]=$(field "$work/$s-catchup.json" peak_rss_mib)
  log "$s: ${rate[$s]} events/s, ${cpu[$s]} CPU s, peak RSS ${rss[$s]} MiB"
done

# Both systems' metrics over the same backlog must agree.
if [[ $SPARK == 1 ]]; then
  "$PY" "$BENCH_DIR/compare.py" "$work/ours" "$work/spark" >&2 \
    || log "WARNING: Spark's metrics differ from ours (see above)"
fi

# --- reprocess -------------------------------------------------------------------
to=$("$BIN" query --output "$work/ours" --format json \
  "SELECT to_char(date_bin(INTERVAL '1 minute', max(executed_at)) + INTERVAL '1 minute', '%Y-%m-%dT%H:%M:%SZ') AS t
   FROM raw_execution_results" | field /dev/stdin t)
log "reprocess $START .. $to from raw/"
"$BIN" reprocess --output "$work/ours" --from "$START" --to "$to" 2>"$work/reprocess.log" >/dev/null
tail -n 1 "$work/reprocess.log" >&2
reprocess_rate=$(sed -nE 's/.*\(([0-9]+) events\/s\)$/\1/p' "$work/reprocess.log" | tail -n 1)

hour_end=${START/T00:/T01:}
[[ $to < $hour_end ]] && hour_end=$to # a backlog shorter than an hour
declare -A distinct
for mode in off on; do
  AP_DISTINCT_REWRITE=$mode "$BIN" reprocess --output "$work/ours" --from "$START" --to "$hour_end" \
    2>"$work/distinct-$mode.log" >/dev/null
  distinct[$mode]=$(sed -nE 's/.*\(([0-9]+) events\/s\)$/\1/p' "$work/distinct-$mode.log" | tail -n 1)
  log "first hour, count-distinct rewrite $mode: ${distinct[$mode]} events/s"
done

# --- freshness ---------------------------------------------------------------------
declare -A load
for s in "${systems[@]}"; do
  FSIG="fsig-$s-$id" FEXE="fexe-$s-$id"
  load[$s]=$(calc "round(${rate[$s]} / 2)")
  log "freshness: $s at ${load[$s]} events/s for $FRESH_SECONDS s"
  "$BIN" produce --count 1 --signals-topic "$FSIG" --executions-topic "$FEXE" --partitions 4 2>/dev/null
  out="$work/$s-fresh"
  if [[ $s == ours ]]; then
    cmd=$(ours "$out" "fresh-$id" "$FSIG" "$FEXE")
  else
    cmd=$(spark "$out" "$FSIG" "$FEXE")
  fi
  # shellcheck disable=SC2086
  $cmd >"$work/$s-fresh.out" 2>"$work/$s-fresh.log" &
  job=$!
  "$PY" "$BENCH_DIR/freshness.py" --root "$out" --until-file "$work/$s-fresh.stop" \
    --out "$work/$s-fresh.json" >&2 &
  watcher=$!
  sleep 15 # the consumer joins its group (Spark: the JVM starts) before events flow
  "$BIN" produce --rate "${load[$s]}" --duration "$FRESH_SECONDS" --signals-topic "$FSIG" \
    --executions-topic "$FEXE" 2>&1 | tail -n 1 >&2
  produced_at=$(date +%s)
  sleep $((LATENESS + 3 * INTERVAL + 5))
  # Windows ending after the last events minus the lateness close only at the
  # end of input: the watcher leaves them out.
  echo "$((produced_at - LATENESS - INTERVAL - 1))" >"$work/$s-fresh.stop.tmp"
  mv "$work/$s-fresh.stop.tmp" "$work/$s-fresh.stop"
  wait "$watcher"
  kill -TERM "$job" 2>/dev/null || true
  wait "$job" 2>/dev/null || true
done

# --- the table -----------------------------------------------------------------------
versions() {
  echo "- analytics-processor $(git -C "$REPO_DIR" describe --always --dirty), $(rustc --version)"
  echo "- DataFusion $(sed -n '/^name = "datafusion"$/{n;s/version = //;s/"//g;p;q}' "$REPO_DIR/Cargo.lock")," \
    "Apache Kafka $(sed -nE 's/.*<kafka.version>(.*)<\/kafka.version>.*/\1/p' "$REPO_DIR/scripts/kafka/pom.xml")"
  [[ $SPARK == 1 ]] && echo "- Spark $("$PY" -c 'import pyspark; print(pyspark.__version__)'), $(java -version 2>&1 | head -n 1)"
  echo "- machine: $(nproc) cores ($(sed -nE 's/^model name\s*: (.*)/\1/p' /proc/cpuinfo | head -n 1)), $(free -g | awk '/^Mem:/{print $2}') GiB memory; broker, S3 server and the job on one box"
}
fresh() { # system raw_visible|window_final percentile
  [[ -f $work/$1-fresh.json ]] && field "$work/$1-fresh.json" "$2.get('p$3_s')"
}
row() { # figure ours spark better(higher|lower)
  local figure=$1 o=$2 s=${3:-} better=$4 ratio="—"
  if [[ -n $s && $s != None && $o != None && $s != 0 && $o != 0 ]]; then
    if [[ $better == higher ]]; then ratio="$(calc "round($o / $s, 1)")× ours"; else ratio="$(calc "round($s / $o, 1)")× ours"; fi
  fi
  printf '| %s | %s | %s | %s |\n' "$figure" "$o" "${s:-—}" "$ratio"
}
table() {
  echo "# Benchmark $(date -u +%Y-%m-%d)"
  echo
  versions
  echo "- $MESSAGES messages backlog, interval $INTERVAL s, allowed lateness $LATENESS s, freshness for $FRESH_SECONDS s"
  echo
  echo "| figure | ours | Spark | ratio (how many times better ours is) |"
  echo "|---|---|---|---|"
  row "catch-up, events/s" "${rate[ours]}" "${rate[spark]:-}" higher
  row "catch-up, CPU seconds" "${cpu[ours]}" "${cpu[spark]:-}" lower
  row "catch-up, peak RSS MiB" "${rss[ours]}" "${rss[spark]:-}" lower
  row "freshness load, events/s (50% of own catch-up)" "${load[ours]}" "${load[spark]:-}" higher
  for what in "raw_visible:raw row readable, s after its Kafka timestamp" \
              "window_final:window's metric row readable, s after window end"; do
    for p in 50 95 99; do
      row "${what#*:}, p$p" "$(fresh ours "${what%%:*}" $p)" "$(fresh spark "${what%%:*}" $p)" lower
    done
  done
  row "reprocess from raw/, events/s" "$reprocess_rate" "" higher
  row "first hour reprocess, count-distinct rewrite off → on, events/s" "${distinct[off]} → ${distinct[on]}" "" higher
  echo
  echo "Logs and outputs: $work"
}
result="$BENCH_DIR/results/$(date -u +%Y-%m-%d).md"
table | tee "$result"
log "written to $result"
