#!/usr/bin/env bash
# Fault test: while the daemon catches up on a backlog, the S3 server is
# stopped for FAULT_OUTAGE seconds and the Kafka broker is restarted; then a
# local output file system is read-only, then full. The daemon must ride
# each out by itself (retrying, naming the path, committing nothing while the
# store fails) and end with exactly the output of an undisturbed run. An
# output location that cannot be created must fail at once, naming the path.
# Needs the services up and their variables exported (make does both).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SERVICES=scripts/services.sh
MESSAGES="${FAULT_MESSAGES:-300000}"
OUTAGE="${FAULT_OUTAGE:-60}"

work="$(mktemp -d)"
daemon=""
small=""
cleanup() {
  [[ -n $daemon ]] && kill -9 "$daemon" 2>/dev/null
  [[ -n $small ]] && umount "$small" 2>/dev/null
  # Leave the services running whatever happened.
  "$SERVICES" start s3 >/dev/null 2>&1 || true
  "$SERVICES" start kafka >/dev/null 2>&1 || true
  if [[ -n ${FAULT_KEEP:-} ]]; then echo "faults: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
id="faults-$$-$(date +%s)"
export AP_SIGNALS_TOPIC="sig-$id" AP_EXECUTIONS_TOPIC="exe-$id"
log() { echo "faults: $*" >&2; }

log "an output location that cannot be created"
if "$BIN" run --output /dev/null/out --stop-when-idle 1 2>"$work/bad.log"; then
  log "expected a failure"; exit 1
fi
grep -q "/dev/null/out" "$work/bad.log" || { log "the error does not name the path:"; cat "$work/bad.log" >&2; exit 1; }
log "ok: $(tail -n 1 "$work/bad.log")"

log "producing $MESSAGES messages"
"$BIN" produce --count "$MESSAGES" --seed 9 --start 2026-06-01T00:00:00Z --signal-gap 0.5 \
  --late-rate 0 --partitions 4 2>&1 | tail -n 1 >&2
run_args=(run --interval 1 --max-rows 20000 --allowed-lateness 60 --stop-when-idle 10)

log "reference run (local directory)"
AP_GROUP="$id-ref" "$BIN" "${run_args[@]}" --output "$work/ref" 2>"$work/ref.log" \
  || { tail -n 20 "$work/ref.log" >&2; exit 1; }

out="s3://$AP_S3_BUCKET/$id"
log "faulted run to $out"
AP_GROUP="$id-s3" "$BIN" "${run_args[@]}" --output "$out" 2>"$work/s3.log" &
daemon=$!
sleep 3
log "stopping the S3 server for $OUTAGE s"
"$SERVICES" stop s3
sleep "$OUTAGE"
"$SERVICES" start s3 >/dev/null
log "S3 back; restarting the Kafka broker"
"$SERVICES" stop kafka
sleep 5
"$SERVICES" start kafka >/dev/null
rc=0
wait "$daemon" || rc=$?
daemon=""
[[ $rc -eq 0 ]] || { log "daemon exit status $rc"; tail -n 30 "$work/s3.log" >&2; exit 1; }
retries=$(grep -c "consumption paused, nothing committed" "$work/s3.log" || true)
log "daemon finished; $retries epoch writes were retried during the outage"
[[ $retries -gt 0 ]] || { log "the outage was never noticed: the test did not test anything"; exit 1; }

python3 scripts/compare_outputs.py "$BIN" "$work/ref" "$out"

# A small file system of our own: read-only first, then full. Mounting one
# needs root (as on CI); elsewhere the check says it was skipped.
small="$work/small"
mkdir -p "$small"
if ! mount -t tmpfs -o size=8m tmpfs "$small" 2>/dev/null; then
  small=""
  log "SKIPPED the read-only and disk-full checks: mounting a tmpfs needs root"
  exit 0
fi
mkdir "$small/out"
mount -o remount,ro "$small"
# Waits until the daemon's log has a failed epoch write naming the output.
wait_for_failure() {
  for _ in $(seq 1 600); do
    if grep "consumption paused, nothing committed" "$work/disk.log" | grep "$small/out" | grep -q "$1"; then
      return 0
    fi
    kill -0 "$daemon" 2>/dev/null || { log "daemon died"; tail -n 20 "$work/disk.log" >&2; exit 1; }
    sleep 0.1
  done
  log "no failed write naming $small/out with \"$1\""; tail -n 20 "$work/disk.log" >&2; exit 1
}
commits() { { find "$small/out/_checkpoints" -path '*commits*' -type f 2>/dev/null || true; } | wc -l; }
stalled() {
  local before
  before=$(commits)
  sleep 3
  [[ $(commits) -eq $before ]] || { log "epochs were committed while the store failed"; exit 1; }
}
log "local output on a read-only file system"
AP_GROUP="$id-disk" "$BIN" "${run_args[@]}" --output "$small/out" 2>"$work/disk.log" &
daemon=$!
wait_for_failure "Read-only file system"
stalled
log "ok: $(grep -m1 'Read-only file system' "$work/disk.log" | grep -o 'output store.*')"
mount -o remount,rw "$small"
log "writable again, 8 MiB: waiting for the disk to fill"
wait_for_failure "No space left on device"
stalled
log "ok: $(grep -m1 'No space left' "$work/disk.log" | grep -o 'output store.*')"
mount -o remount,size=1g "$small"
log "space freed: the daemon resumes by itself"
rc=0
wait "$daemon" || rc=$?
daemon=""
[[ $rc -eq 0 ]] || { log "daemon exit status $rc"; tail -n 30 "$work/disk.log" >&2; exit 1; }
python3 scripts/compare_outputs.py "$BIN" "$work/ref" "$small/out"
