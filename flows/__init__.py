"""Prefect flows of the tau -> 3mu pipeline: production and the one-touch analysis.

Importing this package sets Prefect defaults that the environment can still
override: ``analysis`` and ``optuna`` loggers reach the run logs, no usage telemetry
is sent, and an ephemeral server gets 90 s to start on a busy machine
(Prefect's default of 20 s is too short on two loaded cores).
"""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "analysis,optuna")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Log records of those loggers outside a flow run stay local instead of
# raising Prefect's "no flow run" warning.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
