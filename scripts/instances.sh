#!/usr/bin/env bash
# Scale-out test: two instances in one consumer group share the partitions
# and write to the real S3 server; one is killed with SIGKILL mid-run; the
# other takes over its partitions, abandons its unfinished epoch and takes
# the finalizer lease. The output must equal a single instance's clean run.
# A third process reusing a live instance id is refused.
# Needs the services up and their variables exported (make does both).
#
#   INSTANCES_MESSAGES  messages produced (default 400000)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MESSAGES="${INSTANCES_MESSAGES:-400000}"

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
id="instances-$$-$(date +%s)"
export AP_SIGNALS_TOPIC="sig-$id" AP_EXECUTIONS_TOPIC="exe-$id"
log() { echo "instances: $*" >&2; }

log "producing $MESSAGES messages"
"$BIN" produce --count "$MESSAGES" --seed 11 --start 2026-08-01T00:00:00Z --signal-gap 0.5 \
  --late-rate 0 --partitions 4 2>&1 | tail -n 1 >&2
run_args=(run --interval 1 --max-rows 10000 --allowed-lateness 60 --instance-timeout 10)

log "reference: one instance"
AP_GROUP="$id-ref" "$BIN" "${run_args[@]}" --output "$work/ref" --stop-when-idle 5 \
  2>"$work/ref.log" || { tail -n 20 "$work/ref.log" >&2; exit 1; }

out="s3://$AP_S3_BUCKET/$id"
log "two instances, a and b, writing to $out"
start() {
  AP_GROUP="$id-pair" "$BIN" "${run_args[@]}" --instance-id "$1" --output "$out" \
    --stop-when-idle 10 2>"$work/$1.log" &
  pids+=($!)
}
start a
start b
committed() { grep -c 'epoch committed' "$work/$1.log" || true; }
for _ in $(seq 1 300); do
  [[ $(committed a) -ge 2 && $(committed b) -ge 2 ]] && break
  sleep 0.05
done
[[ $(committed a) -ge 2 && $(committed b) -ge 2 ]] \
  || { log "both instances should be committing epochs"; tail -n 5 "$work/a.log" "$work/b.log" >&2; exit 1; }
# Mid-epoch, most likely: between its claims and its commit record.
sleep 0.3
log "killing a (SIGKILL) after $(committed a) epochs"
kill -9 "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true

log "a second process with b's id is refused"
if AP_GROUP="$id-pair" "$BIN" "${run_args[@]}" --instance-id b --output "$out" 2>"$work/dup.log"; then
  log "expected a refusal"; exit 1
fi
grep -q 'instance id "b" is in use' "$work/dup.log" || { cat "$work/dup.log" >&2; exit 1; }
log "ok: $(tail -n 1 "$work/dup.log")"

rc=0
wait "${pids[1]}" || rc=$?
pids=()
[[ $rc -eq 0 ]] || { log "b exit status $rc"; tail -n 30 "$work/b.log" >&2; exit 1; }
summary="$(tail -n 1 "$work/b.log")"
log "b finished: $summary"
read_by_b=$(sed -nE 's/^stopped: [0-9]+ epochs, ([0-9]+) messages.*/\1/p' <<<"$summary")
[[ ${read_by_b:-0} -gt $((MESSAGES / 2)) ]] \
  || { log "b read ${read_by_b:-0} of $MESSAGES messages: it did not take a's partitions over"; exit 1; }
grep -q 'holding the finalizer lease' "$work/b.log" \
  || { log "b never held the finalizer lease"; exit 1; }
log "a committed $(committed a) epochs, b $(committed b); b abandoned $(grep -c 'abandoning the unfinished epoch' "$work/b.log" || true) unfinished epochs of a"

python3 scripts/compare_outputs.py "$BIN" "$work/ref" "$out"
