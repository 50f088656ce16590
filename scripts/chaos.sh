#!/usr/bin/env bash
# Crash test: the daemon is killed with SIGKILL at random moments and
# restarted; its final output must equal a clean run's over the same messages:
# the same rows in every table, no duplicated or missing id, every dead letter
# once. Needs the services up and their variables exported (make does both).
#
#   CHAOS_MESSAGES  messages produced (default 1000000)
#   CHAOS_KILLS     SIGKILLs (default 20)
#   CHAOS_SEED      seed of the messages and of the kill times (default 3)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MESSAGES="${CHAOS_MESSAGES:-1000000}"
KILLS="${CHAOS_KILLS:-20}"
SEED="${CHAOS_SEED:-3}"

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
id="chaos-$$-$(date +%s)"
export AP_SIGNALS_TOPIC="sig-$id" AP_EXECUTIONS_TOPIC="exe-$id"
log() { echo "chaos: $*" >&2; }

log "producing $MESSAGES messages (seed $SEED)"
# No event later than the allowed lateness: then every window's final rows
# are fully determined by the messages, which is what the two runs compare.
"$BIN" produce --count "$MESSAGES" --seed "$SEED" --start 2026-05-01T00:00:00Z \
  --signal-gap 0.5 --late-rate 0 --partitions 4 2>&1 | tail -n 1 >&2

# Small epochs: many epoch boundaries for the kills to land around.
run_args=(run --interval 1 --max-rows 10000 --allowed-lateness 60)

log "clean run"
AP_GROUP="$id-clean" "$BIN" "${run_args[@]}" --output "$work/clean" --stop-when-idle 5 \
  2>"$work/clean.log" || { tail -n 20 "$work/clean.log" >&2; exit 1; }
tail -n 1 "$work/clean.log" >&2

log "chaos run: $KILLS kills"
touch "$work/chaos.log"
committed() { grep -c 'epoch committed' "$work/chaos.log" || true; }
RANDOM=$SEED
for k in $(seq 1 "$KILLS"); do
  AP_GROUP="$id-chaos" AP_INSTANCE_ID="chaos-0" \
    "$BIN" "${run_args[@]}" --output "$work/chaos" 2>>"$work/chaos.log" &
  pids=($!)
  # Kills are spread over the work: after 1 to 8 more committed epochs (or
  # 4 s), then 0 to 0.3 s into the next one: mid-write, mid-finalization,
  # between the offset record and the commit.
  target=$(($(committed) + 1 + RANDOM % 8))
  for _ in $(seq 1 40); do
    [[ $(committed) -ge $target ]] && break
    sleep 0.1
  done
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", (r % 30) / 100 }')"
  kill -9 "${pids[0]}" 2>/dev/null || true
  wait "${pids[0]}" 2>/dev/null || true
  pids=()
  log "kill $k/$KILLS: $(committed) epochs committed so far"
done
# A clean stop in between: SIGTERM writes the current epoch and exits 0.
AP_GROUP="$id-chaos" AP_INSTANCE_ID="chaos-0" \
  "$BIN" "${run_args[@]}" --output "$work/chaos" 2>>"$work/chaos.log" &
pids=($!)
sleep 3
kill -TERM "${pids[0]}"
rc=0
wait "${pids[0]}" || rc=$?
pids=()
[[ $rc -eq 0 ]] || { log "SIGTERM: exit status $rc, expected 0"; tail -n 20 "$work/chaos.log" >&2; exit 1; }
log "SIGTERM: clean exit"
AP_GROUP="$id-chaos" AP_INSTANCE_ID="chaos-0" \
  "$BIN" "${run_args[@]}" --output "$work/chaos" --stop-when-idle 5 2>>"$work/chaos.log" \
  || { tail -n 20 "$work/chaos.log" >&2; exit 1; }
tail -n 1 "$work/chaos.log" >&2
log "$KILLS kills; $(grep -c "was not committed before the last stop" "$work/chaos.log" || true) restarts abandoned an uncommitted epoch"

python3 scripts/compare_outputs.py "$BIN" "$work/clean" "$work/chaos"
