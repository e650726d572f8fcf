#!/usr/bin/env bash
# Start a Prefect server on 127.0.0.1, the process work pool "tau3mu", every
# deployment of prefect.yaml and one worker. deployments/stop.sh stops them.
#
# Settings, read from the environment:
#   TAU3MU_PREFECT_HOME   Prefect home: database, logs and .pgid files
#                         (default: .prefect/ in the project folder)
#   TAU3MU_PREFECT_PORT   server port on 127.0.0.1 (default: 4200)
#   TAU3MU_PREFECT_WAIT_S seconds to wait for the server to become healthy
#                         (default: 120)
#   TAU3MU_VENV_BIN       folder with the prefect and python commands
#                         (default: .venv/bin in the project folder)
#   PREFECT_WORKER_QUERY_SECONDS  worker poll interval in s (default here: 5)
#   PREFECT_UI_ENABLED, PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED and other
#   Prefect settings pass through to the server and the worker.
set -euo pipefail

# Job control gives each background job its own process group, so stop.sh can
# signal the server or the worker together with its children. Without it, a
# background job of a non-interactive shell ignores SIGINT, and the worker,
# which handles SIGTERM by sending itself SIGINT, would never stop.
set -m

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${TAU3MU_PREFECT_HOME:-$ROOT/.prefect}
PORT=${TAU3MU_PREFECT_PORT:-4200}
WAIT_S=${TAU3MU_PREFECT_WAIT_S:-120}
BIN=${TAU3MU_VENV_BIN:-$ROOT/.venv/bin}
POOL=tau3mu

mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
export PREFECT_HOME=$STATE
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_CLI_PROMPT=false
export PREFECT_WORKER_QUERY_SECONDS=${PREFECT_WORKER_QUERY_SECONDS:-5}

alive() {
    [[ -s $1 ]] && kill -0 -- "-$(cat "$1")" 2>/dev/null
}

for name in server worker; do
    if alive "$STATE/$name.pgid"; then
        echo "error: a $name started from $STATE is still running" \
            "(process group $(cat "$STATE/$name.pgid")); run deployments/stop.sh" \
            "first" >&2
        exit 1
    fi
done

# From here on, a failed step stops whatever this script started.
trap 'echo "error: serve.sh failed; stopping what it started" >&2;
      "$ROOT/deployments/stop.sh"' ERR

"$BIN/python" "$ROOT/deployments/check_server.py" port-free "$PORT"

echo "starting the Prefect server on 127.0.0.1:$PORT (log: $STATE/server.log)"
PREFECT_API_URL="" "$BIN/prefect" server start --host 127.0.0.1 --port "$PORT" \
    </dev/null >>"$STATE/server.log" 2>&1 &
SERVER_PID=$!
echo "$SERVER_PID" >"$STATE/server.pgid"
if ! "$BIN/python" "$ROOT/deployments/check_server.py" healthy \
    "$PREFECT_API_URL/health" "$WAIT_S" "$SERVER_PID"; then
    tail -n 20 "$STATE/server.log" >&2
    false
fi
echo "server healthy: UI http://127.0.0.1:$PORT, API $PREFECT_API_URL"

"$BIN/prefect" work-pool create "$POOL" --type process --overwrite

# Deploy without TAU3MU_PROJECT, so the pull step keeps its placeholder and
# each worker fills in its own project folder (see prefect.yaml).
(cd "$ROOT" && env -u TAU3MU_PROJECT "$BIN/prefect" --no-prompt deploy --all)

echo "starting a worker on pool $POOL (log: $STATE/worker.log)"
TAU3MU_PROJECT=$ROOT "$BIN/prefect" worker start --pool "$POOL" --type process \
    </dev/null >>"$STATE/worker.log" 2>&1 &
echo $! >"$STATE/worker.pgid"

trap - ERR
echo "ready: UI http://127.0.0.1:$PORT; run history in $STATE/prefect.db"
echo "try: PREFECT_API_URL=$PREFECT_API_URL $BIN/prefect deployment run" \
    "'one-touch/analysis'"
