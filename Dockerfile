# Worker image: a Prefect process worker that runs the deployments of
# prefect.yaml (one-touch analysis, nightly reprocessing, production).
#
#   docker build -t tau3mu-worker .
#   docker run --rm --network host -e PREFECT_API_URL=http://127.0.0.1:4200/api \
#       -v "$PWD/data:/app/data:ro" -v "$PWD/runs:/app/runs" tau3mu-worker
#
# See docs/operations.md for the server side and the volumes.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --gid 10001 tau3mu \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin tau3mu

WORKDIR /app

# Dependencies and package first, so that a change to configs or scripts does
# not reinstall them. pyproject.toml names README.md as the package's readme.
COPY pyproject.toml README.md ./
COPY analysis/ analysis/
COPY flows/ flows/
RUN pip install --no-cache-dir . \
    && mkdir -p /app/runs /app/data \
    && chown 10001:10001 /app/runs /app/data

COPY prefect.yaml ./
COPY configs/ configs/
COPY deployments/worker-entrypoint.sh /usr/local/bin/tau3mu-worker

# TAU3MU_PROJECT fills the pull step of prefect.yaml: flow runs start in /app,
# where the relative config and run paths of the deployments resolve.
# PREFECT_API_URL is not set here: it comes from `docker run -e`.
ENV TAU3MU_PROJECT=/app \
    TAU3MU_WORK_POOL=tau3mu \
    PREFECT_HOME=/home/tau3mu/.prefect \
    PREFECT_LOGGING_EXTRA_LOGGERS=analysis,flows \
    PREFECT_LOGGING_ROOT_LEVEL=INFO \
    PREFECT_RESULTS_DEFAULT_SERIALIZER=json

# Numeric, so that a host that lacks the user name still resolves it.
USER 10001:10001

ENTRYPOINT ["tau3mu-worker"]
