#!/usr/bin/env bash
# A real MLflow tracking server on loopback, its backend store on the project's local PostgreSQL
# (scripts/postgres-local.sh), as the lab runs one: what the tracking tests start, and a way to
# watch SAE runs on one machine (tracking.mlflow_uri: http://127.0.0.1:$PORT).
#
#   scripts/mlflow-local.sh start   PostgreSQL up (started when down) with a database `mlflow`; the
#                                   server on 127.0.0.1:$PORT; prints the MLFLOW_TRACKING_URI export
#   scripts/mlflow-local.sh stop    stop exactly the server it started (PostgreSQL stays up)
#
# The server is the full `mlflow` package in its own .venv-mlflow (created on first start): its
# pins (pyarrow) are not the project's, and the project's jobs need only the client,
# mlflow-skinny, which is in .venv. State (pid, log, artifacts) under $INTERP_ASSETS_MLFLOW_DIR
# (default /tmp/interp-assets-mlflow); port $INTERP_ASSETS_MLFLOW_PORT (default 55000). PostgreSQL
# is chosen by the INTERP_ASSETS_PG_* variables of postgres-local.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${INTERP_ASSETS_MLFLOW_DIR:-/tmp/interp-assets-mlflow}
PORT=${INTERP_ASSETS_MLFLOW_PORT:-55000}
MLFLOW_VERSION=3.17.2      # the server matching the client pinned in pyproject.toml (mlflow-skinny)
VENV=.venv-mlflow
log() { echo "mlflow-local: $*" >&2; }
die() { log "$*"; exit 1; }

ensure_server_installed() {
    if ! [ -x "$VENV/bin/mlflow" ] || ! "$VENV/bin/python" -c "import mlflow, sys; sys.exit(mlflow.__version__ != '$MLFLOW_VERSION')"; then
        log "installing mlflow==$MLFLOW_VERSION (the server) into $VENV ..."
        python3.11 -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "mlflow==$MLFLOW_VERSION" \
            "psycopg2-binary==2.9.13" 2> >(grep -v "^WARNING: Location" >&2) || die "pip install mlflow failed"
    fi
}

healthy() { "$VENV/bin/python" - "$PORT" <<'PY'
import sys, urllib.request
try:
    sys.exit(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2).read().strip() != b"OK")
except Exception:
    sys.exit(1)
PY
}

cmd_start() {
    ensure_server_installed
    mkdir -p "$STATE/artifacts"
    if [ -f "$STATE/server.pid" ] && kill -0 "$(cat "$STATE/server.pid")" 2>/dev/null && healthy; then
        log "already up on 127.0.0.1:$PORT"
    else
        bash scripts/postgres-local.sh start > /dev/null
        bash scripts/postgres-local.sh createdb mlflow
        eval "$(bash scripts/postgres-local.sh env)"
        # The backend's password reaches the server through its environment, not its command line.
        MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://$DAGSTER_PG_USERNAME:$DAGSTER_PG_PASSWORD@$DAGSTER_PG_HOST:$DAGSTER_PG_PORT/mlflow" \
            setsid "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$PORT" --workers 1 \
            --artifacts-destination "$STATE/artifacts" > "$STATE/server.log" 2>&1 < /dev/null &
        echo $! > "$STATE/server.pid"
        for _ in $(seq 240); do healthy && break; sleep 0.5; done
        healthy || die "the server did not answer on 127.0.0.1:$PORT (see $STATE/server.log): $(tail -5 "$STATE/server.log")"
        log "up on 127.0.0.1:$PORT (mlflow $MLFLOW_VERSION, backend store: PostgreSQL database mlflow)"
    fi
    echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT"
}

cmd_stop() {
    if [ -f "$STATE/server.pid" ] && kill -0 "$(cat "$STATE/server.pid")" 2>/dev/null; then
        # setsid made the server its own process group: stop it and its workers together.
        kill -TERM -- "-$(cat "$STATE/server.pid")" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$(cat "$STATE/server.pid")" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$(cat "$STATE/server.pid")" 2>/dev/null || true
        rm -f "$STATE/server.pid"
        log "stopped"
    else
        log "not running"
    fi
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    *) echo "usage: $0 start | stop" >&2; exit 2 ;;
esac
