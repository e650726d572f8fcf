#!/usr/bin/env bash
# Stop the worker and the Prefect server that deployments/serve.sh started.
#
# Each of them runs in its own process group, recorded in <home>/worker.pgid and
# <home>/server.pgid. This script sends SIGTERM to each group, waits up to
# TAU3MU_STOP_WAIT_S seconds (default: 20) and then sends SIGKILL. Flow runs in
# progress on the worker are stopped with it and marked as crashed.
#   TAU3MU_PREFECT_HOME   Prefect home given to serve.sh (default: .prefect/)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${TAU3MU_PREFECT_HOME:-$ROOT/.prefect}
WAIT_S=${TAU3MU_STOP_WAIT_S:-20}

stop_group() {
    local name=$1 file=$STATE/$1.pgid pgid
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

    echo "stopping the $name (process group $pgid)"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    local waited=0
    while kill -0 -- "-$pgid" 2>/dev/null && ((waited < WAIT_S * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 -- "-$pgid" 2>/dev/null; then
        echo "the $name did not stop within $WAIT_S s after SIGTERM; sending" \
            "SIGKILL" >&2
        kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
    rm -f "$file"
}

# The worker first, so it can still report to the server while it stops.
stop_group worker
stop_group server
