#!/bin/sh
# Entry point of the worker image: a Prefect process worker on the work pool
# that prefect.yaml deploys to. Extra arguments go to `prefect worker start`.
#   PREFECT_API_URL   API of the Prefect server (required), e.g.
#                     http://127.0.0.1:4200/api
#   TAU3MU_WORK_POOL  work pool to poll (default: tau3mu)
set -eu

if [ -z "${PREFECT_API_URL:-}" ]; then
    echo "error: PREFECT_API_URL is not set; pass the server's API address," \
        "for example: docker run -e PREFECT_API_URL=http://127.0.0.1:4200/api" >&2
    exit 2
fi

exec prefect worker start --pool "${TAU3MU_WORK_POOL:-tau3mu}" --type process "$@"
