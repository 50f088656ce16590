#!/usr/bin/env bash
# Installs what bench/spark/job.py needs into bench/.cache/ (idempotent):
#   venv/         a Python venv with pyspark (PyPI); pyspark ships Spark itself
#                 and its jars. bench/run.sh runs job.py with this venv's python.
#   spark-jars/   Spark's Kafka source and the jars it needs beyond pyspark's own
#                 (Maven Central, bench/spark/pom.xml); job.py passes them as
#                 spark.jars, so nothing is fetched (Ivy, --packages) at run time
#   pip/          pip's cache: the ~455 MB pyspark archive and its built wheel
# Progress goes to stderr; the last lines on stdout name what was installed:
#   SPARK_PYTHON=…  SPARK_JARS=…  (eval-able)
#
# Versions: Spark 4.1.1 (Scala 2.13), runs on Java 17. pyspark and the
# connector must have the same version: PYSPARK_VERSION here and
# <spark.version> in pom.xml. (4.1.3/4.0.x connectors' transitive
# spark-token-provider artifacts were not all on the registry here; 4.1.1's are.)
set -euo pipefail

PYSPARK_VERSION=4.1.1

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE="${SPARK_BENCH_CACHE:-$BENCH_DIR/.cache}"
VENV="$CACHE/venv"
JARS="$CACHE/spark-jars"
PIP_CACHE="$CACHE/pip"

log() { printf '[spark-setup] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

start=$SECONDS
mkdir -p "$CACHE" "$PIP_CACHE"
command -v java >/dev/null || die "java not found (Spark 4 needs Java 17+)"
command -v mvn >/dev/null || die "mvn not found (fetches the Kafka connector)"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || die "$PY not found"

# --- Python venv with pyspark --------------------------------------------------
if [[ -x $VENV/bin/python ]] &&
    "$VENV/bin/python" -c "import pyspark,sys; sys.exit(pyspark.__version__ != '$PYSPARK_VERSION')" 2>/dev/null; then
    log "pyspark $PYSPARK_VERSION already installed in $VENV"
else
    # The venv is shared with the other bench scripts (they add pyarrow):
    # created if missing, never deleted.
    [[ -x $VENV/bin/python ]] || { log "creating venv $VENV"; "$PY" -m venv "$VENV"; }
    "$VENV/bin/python" -m pip install -q --cache-dir "$PIP_CACHE" --upgrade pip >&2
    # pyspark is one ~400 MB archive; the pip cache keeps it for reinstalls.
    log "installing pyspark==$PYSPARK_VERSION from PyPI (large download, once)"
    "$VENV/bin/python" -m pip install --cache-dir "$PIP_CACHE" --progress-bar off \
        "pyspark==$PYSPARK_VERSION" >&2 || die "pip install pyspark failed"
    "$VENV/bin/python" -c "import pyspark; print(pyspark.__version__)" >&2
fi

# --- Kafka connector jars ------------------------------------------------------
# Only the four jars pyspark lacks; the connector's other dependencies
# (hadoop-client, scala-library, lz4, snappy, slf4j, ...) are in pyspark/jars.
want=$(cat "$SCRIPT_DIR/pom.xml" "$SCRIPT_DIR/maven-settings.xml" | sha256sum | cut -d' ' -f1)
stamp="$JARS/.pom.sha256"
if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
    log "connector jars already in $JARS"
else
    log "fetching spark-sql-kafka-0-10 and its dependencies from Maven Central"
    tmp=$(mktemp -d "$CACHE/spark-jars.tmp.XXXXXX")
    mvn -q -B -Dstyle.color=never -s "$SCRIPT_DIR/maven-settings.xml" -f "$SCRIPT_DIR/pom.xml" \
        dependency:copy-dependencies -DoutputDirectory="$tmp" -DincludeScope=runtime \
        -DincludeArtifactIds=spark-sql-kafka-0-10_2.13,spark-token-provider-kafka-0-10_2.13,kafka-clients,commons-pool2 >&2 ||
        { rm -rf "$tmp"; die "maven fetch failed"; }
    n=$(find "$tmp" -name '*.jar' | wc -l)
    [[ $n -eq 4 ]] || { rm -rf "$tmp"; die "expected 4 jars, got $n"; }
    echo "$want" >"$tmp/.pom.sha256"
    rm -rf "$JARS"
    mv "$tmp" "$JARS"
fi

jars=$(find "$JARS" -name '*.jar' | sort | paste -sd, -)
log "done in $((SECONDS - start))s"
echo "SPARK_PYTHON=$VENV/bin/python"
echo "SPARK_JARS=$jars"
