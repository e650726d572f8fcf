"""Prefect flows of the tau -> 3mu pipeline: production and the one-touch analysis.

Importing this package routes the ``analysis`` module loggers into Prefect's
run logs unless the environment already says otherwise.
"""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "analysis")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
