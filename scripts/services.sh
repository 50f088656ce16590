#!/usr/bin/env bash
# Local Apache Kafka broker + S3-compatible server for integration tests.
#
#   scripts/services.sh up       install if needed, start, create topics/bucket
#   scripts/services.sh down     stop both
#   scripts/services.sh status   show what runs
#   scripts/services.sh env      print the variables tests use
#   scripts/services.sh stop|start kafka|s3   one service, for fault tests
#
# Both run as plain processes bound to 127.0.0.1 (no containers here).
# `up` is idempotent: installed artifacts are cached under the state folder and
# already-running services are left alone. Progress goes to stderr and the
# `export` lines to stdout, so `eval "$(scripts/services.sh up)"` works.
#
# Kafka: the broker jars come from Maven Central (scripts/kafka/pom.xml) and run
# as a single KRaft node (broker + controller).
# S3: Versity S3 Gateway (versitygw, Apache-2.0) with its posix backend, built
# from the Go module proxy. MinIO is AGPL, which this project avoids.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
STATE_DIR="${AP_SERVICES_DIR:-$REPO_DIR/.services}"

KAFKA_HOST=127.0.0.1
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
KAFKA_TOPICS=(influencer_signals execution_results)
KAFKA_PARTITIONS=4
# Fixed so that state folders from different runs are interchangeable.
KAFKA_CLUSTER_ID="YXBfbG9jYWxfa2Fma2ExAA"

S3_HOST=127.0.0.1
S3_PORT=9000
S3_BUCKET=analytics
S3_REGION=us-east-1
S3_ACCESS_KEY=analytics
S3_SECRET_KEY=analytics-secret
VERSITYGW_MODULE=github.com/versity/versitygw
VERSITYGW_VERSION=v1.8.0

KAFKA_DIR="$STATE_DIR/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PID="$KAFKA_DIR/kafka.pid"
S3_DIR="$STATE_DIR/s3"
S3_BIN_DIR="$STATE_DIR/bin"
S3_BIN="$S3_BIN_DIR/versitygw"
S3_DATA="$S3_DIR/data"
S3_PID="$S3_DIR/s3.pid"

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- process helpers ---------------------------------------------------------

# Running only if the pid is alive AND is still our program (pids get reused).
pid_running() { # pidfile pattern
    local pidfile=$1 pattern=$2 pid
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pattern"
}

# Right after the fork the pid is still a copy of this shell, not yet the
# service's command line: a just-started service is only checked for life.
pid_alive() { [[ -f $1 ]] && kill -0 "$(<"$1")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

start_detached() { # pidfile logfile cmd...
    local pidfile=$1 logfile=$2
    shift 2
    # setsid: own session, so the caller's shell ending or ^C does not stop it.
    # 9>&-: do not hand the `up` lock (fd 9) down to the long-lived service.
    setsid nohup "$@" </dev/null >>"$logfile" 2>&1 9>&- &
    echo $! >"$pidfile"
}

stop_pid() { # name pidfile pattern
    local name=$1 pidfile=$2 pattern=$3 pid i
    if ! pid_running "$pidfile" "$pattern"; then
        rm -f "$pidfile"
        log "$name: not running"
        return 0
    fi
    pid=$(<"$pidfile")
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    # Kafka needs a few seconds for a controlled shutdown.
    for ((i = 0; i < 60; i++)); do
        pid_running "$pidfile" "$pattern" || break
        sleep 0.5
    done
    if pid_running "$pidfile" "$pattern"; then
        log "$name: still alive after 30s, killing"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$pidfile"
}

# --- Kafka -------------------------------------------------------------------

kafka_java() { # main-class args... (short-lived tools: small heap, quiet logs)
    # The timeout keeps a wedged broker from hanging `up` forever.
    timeout "${AP_KAFKA_TOOL_TIMEOUT:-120}" java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile="$KAFKA_DIR/config/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" "$@"
}

kafka_install() {
    local pom="$SCRIPT_DIR/kafka/pom.xml" stamp want tmp
    want=$(sha256sum "$pom" | cut -d' ' -f1)
    stamp="$KAFKA_LIBS/.pom.sha256"
    if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (needed to fetch Kafka jars)"
    log "kafka: fetching jars from Maven Central"
    mkdir -p "$KAFKA_DIR"
    tmp=$(mktemp -d "$KAFKA_DIR/libs.tmp.XXXXXX")
    # Fetch into a temp folder and swap, so an interrupted fetch is never used.
    mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DoutputDirectory="$tmp" >&2 ||
        { rm -rf "$tmp"; die "kafka: maven fetch failed"; }
    echo "$want" >"$tmp/.pom.sha256"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
}

kafka_write_config() {
    mkdir -p "$KAFKA_DIR/config" "$KAFKA_DATA" "$KAFKA_DIR/logs"
    # Regenerated each time: it holds absolute paths, and the state folder may move.
    cat >"$KAFKA_DIR/config/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=$KAFKA_PARTITIONS
default.replication.factor=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
# Tests create few, small segments; keep disk use and startup scans small.
log.segment.bytes=67108864
log.retention.hours=24
# Room for oversized messages, so the daemon (not the broker) rejects them.
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
EOF
    # Broker log: rolling file so long test sessions do not fill the disk.
    cat >"$KAFKA_DIR/config/log4j2.properties" <<EOF
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $KAFKA_DIR/logs/server.log
appender.file.filePattern = $KAFKA_DIR/logs/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.statechange.name = state.change.logger
logger.statechange.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
EOF
    # Command-line tools: warnings only, on stderr.
    cat >"$KAFKA_DIR/config/tools-log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = err
EOF
}

kafka_up() {
    command -v java >/dev/null || die "java not found (Kafka 4.x needs Java 17+)"
    kafka_install
    kafka_write_config
    if pid_running "$KAFKA_PID" kafka.Kafka; then
        log "kafka: already running (pid $(<"$KAFKA_PID"))"
    else
        if port_open "$KAFKA_HOST" "$KAFKA_PORT" || port_open "$KAFKA_HOST" "$KAFKA_CONTROLLER_PORT"; then
            die "kafka: port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT is taken by another process"
        fi
        if [[ ! -f $KAFKA_DATA/meta.properties ]]; then
            log "kafka: formatting storage (cluster id $KAFKA_CLUSTER_ID)"
            kafka_java kafka.tools.StorageTool format --standalone \
                -t "$KAFKA_CLUSTER_ID" -c "$KAFKA_DIR/config/server.properties" >&2
        fi
        log "kafka: starting on $KAFKA_HOST:$KAFKA_PORT"
        start_detached "$KAFKA_PID" "$KAFKA_DIR/logs/kafka.out" \
            java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$KAFKA_DIR/config/log4j2.properties" \
            -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/config/server.properties"
    fi
    kafka_wait
    kafka_ensure_topics
}

kafka_wait() {
    local i
    for ((i = 0; i < 120; i++)); do
        pid_alive "$KAFKA_PID" ||
            die "kafka: process exited; see $KAFKA_DIR/logs/server.log and kafka.out"
        port_open "$KAFKA_HOST" "$KAFKA_PORT" && return 0
        sleep 0.5
    done
    die "kafka: not listening on $KAFKA_PORT after 60s; see $KAFKA_DIR/logs/server.log"
}

kafka_ensure_topics() {
    local existing topic i
    # The port opens slightly before the broker serves metadata: retry the list.
    for ((i = 0; i < 10; i++)); do
        if existing=$(kafka_java org.apache.kafka.tools.TopicCommand \
            --bootstrap-server "$KAFKA_HOST:$KAFKA_PORT" --list 2>>"$KAFKA_DIR/logs/tools.log"); then
            break
        fi
        [[ $i -lt 9 ]] || die "kafka: broker does not answer; see $KAFKA_DIR/logs/tools.log"
        sleep 2
    done
    for topic in "${KAFKA_TOPICS[@]}"; do
        if grep -qx -- "$topic" <<<"$existing"; then
            continue
        fi
        log "kafka: creating topic $topic ($KAFKA_PARTITIONS partitions)"
        kafka_java org.apache.kafka.tools.TopicCommand \
            --bootstrap-server "$KAFKA_HOST:$KAFKA_PORT" --create --if-not-exists \
            --topic "$topic" --partitions "$KAFKA_PARTITIONS" --replication-factor 1 >&2
    done
    log "kafka: ready, topics: ${KAFKA_TOPICS[*]}"
}

# --- S3 (versitygw) ----------------------------------------------------------

s3_install() {
    [[ -x $S3_BIN ]] && return 0
    command -v go >/dev/null || die "go not found (needed to build versitygw)"
    log "s3: building $VERSITYGW_MODULE@$VERSITYGW_VERSION (takes a few minutes on 2 cores)"
    mkdir -p "$S3_BIN_DIR"
    local start=$SECONDS
    # GOTOOLCHAIN=local: never try to download another Go toolchain.
    GOBIN="$S3_BIN_DIR" GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
        go install "$VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION" >&2 ||
        die "s3: go install failed"
    log "s3: built in $((SECONDS - start))s"
}

s3_curl() { # method path [curl args...]
    local method=$1 path=$2
    shift 2
    if [[ $method == HEAD ]]; then set -- --head "$@"; else set -- -X "$method" "$@"; fi
    # The S3 API wants x-amz-content-sha256, which curl's sigv4 does not add.
    curl -sS --max-time 10 -o /dev/null -w '%{http_code}' \
        --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
        "$@" "http://$S3_HOST:$S3_PORT$path"
}

s3_up() {
    command -v curl >/dev/null || die "curl not found"
    s3_install
    mkdir -p "$S3_DATA" "$S3_DIR/logs"
    if pid_running "$S3_PID" versitygw; then
        log "s3: already running (pid $(<"$S3_PID"))"
    else
        port_open "$S3_HOST" "$S3_PORT" && die "s3: port $S3_PORT is taken by another process"
        log "s3: starting versitygw on $S3_HOST:$S3_PORT"
        start_detached "$S3_PID" "$S3_DIR/logs/versitygw.log" \
            "$S3_BIN" --port "$S3_HOST:$S3_PORT" --region "$S3_REGION" \
            --access "$S3_ACCESS_KEY" --secret "$S3_SECRET_KEY" --quiet \
            posix "$S3_DATA"
    fi
    local i code=000
    for ((i = 0; i < 60; i++)); do
        pid_alive "$S3_PID" || die "s3: process exited; see $S3_DIR/logs/versitygw.log"
        # An authenticated ListBuckets proves the server and the credentials work.
        code=$(s3_curl GET / 2>/dev/null) || true
        [[ $code == 200 ]] && break
        sleep 0.5
    done
    [[ $code == 200 ]] || die "s3: no answer (last HTTP $code); see $S3_DIR/logs/versitygw.log"
    code=$(s3_curl HEAD "/$S3_BUCKET")
    if [[ $code != 200 ]]; then
        log "s3: creating bucket $S3_BUCKET"
        code=$(s3_curl PUT "/$S3_BUCKET")
        [[ $code == 200 ]] || die "s3: creating bucket $S3_BUCKET failed (HTTP $code)"
    fi
    log "s3: ready, bucket: $S3_BUCKET"
}

# --- commands ----------------------------------------------------------------

print_env() {
    cat <<EOF
export AP_BROKERS=$KAFKA_HOST:$KAFKA_PORT
export AP_S3_ENDPOINT=http://$S3_HOST:$S3_PORT
export AP_S3_BUCKET=$S3_BUCKET
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export AWS_REGION=$S3_REGION
EOF
}

cmd_up() {
    mkdir -p "$STATE_DIR"
    # One `up` at a time: two concurrent ones would both start a broker.
    exec 9>"$STATE_DIR/.lock"
    flock 9
    kafka_up
    s3_up
    print_env
}

cmd_down() {
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/.lock"
    flock 9
    stop_pid s3 "$S3_PID" versitygw
    stop_pid kafka "$KAFKA_PID" kafka.Kafka
}

cmd_status() {
    local rc=0
    if pid_running "$KAFKA_PID" kafka.Kafka; then
        echo "kafka: running (pid $(<"$KAFKA_PID")) on $KAFKA_HOST:$KAFKA_PORT"
    else
        echo "kafka: stopped"
        rc=1
    fi
    if pid_running "$S3_PID" versitygw; then
        echo "s3:    running (pid $(<"$S3_PID")) on http://$S3_HOST:$S3_PORT, bucket $S3_BUCKET"
    else
        echo "s3:    stopped"
        rc=1
    fi
    echo "state: $STATE_DIR"
    return $rc
}

# One service at a time, for fault tests: stop it, then start it again.
cmd_one() { # stop|start kafka|s3
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/.lock"
    flock 9
    case "$1:$2" in
    stop:kafka) stop_pid kafka "$KAFKA_PID" kafka.Kafka ;;
    stop:s3) stop_pid s3 "$S3_PID" versitygw ;;
    start:kafka) kafka_up ;;
    start:s3) s3_up ;;
    *)
        echo "usage: $0 stop|start kafka|s3" >&2
        exit 2
        ;;
    esac
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) print_env ;;
stop | start) cmd_one "$1" "${2:-}" ;;
*)
    echo "usage: $0 up|down|status|env|stop SERVICE|start SERVICE" >&2
    exit 2
    ;;
esac
