#!/usr/bin/env bash
# Stop the worker, its flow runs and the Prefect server that
# deployments/serve.sh started.
#
# The server and the worker each run in their own process group, recorded in
# <home>/server.pgid and <home>/worker.pgid. Prefect 3.9 starts each flow run
# in a session of its own, so a flow-run process is not in the worker's group
# and is stopped separately. Each group gets SIGTERM, then SIGKILL if it still
# runs TAU3MU_STOP_WAIT_S seconds later (default: 20).
#   TAU3MU_PREFECT_HOME   Prefect home given to serve.sh (default: .prefect/)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${TAU3MU_PREFECT_HOME:-$ROOT/.prefect}
WAIT_S=${TAU3MU_STOP_WAIT_S:-20}

# Send SIGTERM to process group $2 (described as $1), then SIGKILL after WAIT_S.
signal_group() {
    local what=$1 pgid=$2 waited=0
    kill -0 -- "-$pgid" 2>/dev/null || return 0

    echo "stopping the $what (process group $pgid)"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    while kill -0 -- "-$pgid" 2>/dev/null && ((waited < WAIT_S * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 -- "-$pgid" 2>/dev/null; then
        echo "the $what did not stop within $WAIT_S s after SIGTERM; sending" \
            "SIGKILL" >&2
        kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
}

# Stop the group recorded in $STATE/$1.pgid, and then the groups of the
# processes that were its children when this function started.
stop_recorded() {
    local name=$1 file=$STATE/$1.pgid pgid child
    if [[ ! -s $file ]]; then
        echo "no $name.pgid file in $STATE; nothing to stop"
        return 0
    fi
    pgid=$(cat "$file")
    if ! kill -0 -- "-$pgid" 2>/dev/null; then
        echo "$name (process group $pgid) is not running"
        rm -f "$file"
        return 0
    fi

    local children
    children=$(pgrep -P "$pgid" || true)
    signal_group "$name" "$pgid"
    for child in $children; do
        # A child that leads its own group (a flow run) outlives the group
        # signal above unless the worker ended it while stopping.
        if [[ $(ps -o pgid= -p "$child" 2>/dev/null | tr -d ' ') == "$child" ]]; then
            signal_group "$name's child process" "$child"
        fi
    done
    rm -f "$file"
}

# The worker first, so it can still report to the server while it stops.
stop_recorded worker
stop_recorded server
