#!/usr/bin/env bash
# Backlog test: millions of events wait in the topics when the daemon starts;
# while it catches up, its peak resident memory must stay under the ceiling
# given with --memory-limit. Prints the peak against the ceiling and the rate.
# Needs the services up and their variables exported (make does both).
#
#   BACKLOG_MESSAGES  messages waiting when the daemon starts (default 1000000)
#   BACKLOG_LIMIT     the --memory-limit ceiling (default 512MiB)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MESSAGES="${BACKLOG_MESSAGES:-1000000}"
LIMIT="${BACKLOG_LIMIT:-512MiB}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
id="backlog-$$-$(date +%s)"
export AP_SIGNALS_TOPIC="sig-$id" AP_EXECUTIONS_TOPIC="exe-$id" AP_GROUP="$id"
log() { echo "backlog: $*" >&2; }

log "producing a backlog of $MESSAGES messages"
"$BIN" produce --count "$MESSAGES" --seed 5 --start 2026-07-01T00:00:00Z --signal-gap 0.5 \
  --partitions 4 2>&1 | tail -n 1 >&2

log "catching up with --memory-limit $LIMIT"
"$BIN" run --output "$work/out" --memory-limit "$LIMIT" --stop-when-idle 5 2>"$work/run.log" \
  || { tail -n 20 "$work/run.log" >&2; exit 1; }
summary="$(tail -n 1 "$work/run.log")"
log "$summary"

read -r messages peak ceiling < <(sed -nE \
  's/^stopped: [0-9]+ epochs, ([0-9]+) messages.*peak RSS ([0-9]+) MiB \(--memory-limit ([0-9]+) MiB\)$/\1 \2 \3/p' <<<"$summary")
[[ -n ${peak:-} ]] || { log "no peak RSS in the summary line"; exit 1; }
[[ $messages -ge $MESSAGES ]] || { log "read $messages of $MESSAGES messages"; exit 1; }
log "peak RSS $peak MiB against a ceiling of $ceiling MiB"
[[ $peak -le $ceiling ]] || { log "peak RSS over the ceiling"; exit 1; }
