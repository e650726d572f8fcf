"""Prefect flow ``production``: basf2 (or generator) jobs on LSF or local processes.

Command line::

    python -m flows.production --config configs/production-demo.yaml \
        --backend local [--dry-run]
    python -m flows.production --config FILE --serve   # as a deployment

The flow is a thin wrapper: :class:`analysis.production.runner.Production`
does the work and keeps the ledger. A cancelled flow run kills its batch jobs,
through the loop when SIGTERM or Ctrl-C reaches the process, and through the
``on_cancellation`` hook (which reads the ledger) otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from analysis.errors import AnalysisError, BatchError, ConfigError
from analysis.production.config import load_config
from analysis.production.runner import (
    Production,
    ProductionCancelled,
    kill_active,
    make_backend,
)

log = logging.getLogger(__name__)


@task(name="run-production", cache_policy=NO_CACHE, persist_result=False)
def run_production(config_path: str, backend: str | None) -> dict[str, Any]:
    """Submit, poll and verify every job; return the output listing.

    No Prefect retries: a rerun of the flow resumes from the ledger instead.
    """
    logger = get_run_logger()
    config = load_config(config_path)
    production = Production(config, make_backend(config, backend))
    try:
        result = production.run()
    finally:
        production.close()
    logger.info(
        "production %s: %d jobs, %d submissions, outputs listed in %s",
        config.name,
        result.jobs,
        result.submissions,
        result.listing,
    )
    rows = "\n".join(
        f"| {sample} | {len(files)} | {result.entries.get(sample, 0)} |"
        for sample, files in result.outputs.items()
    )
    create_markdown_artifact(
        key="production-outputs",
        markdown="| sample | files | entries |\n|---|---|---|\n" + rows,
        description=f"verified outputs of production {config.name}",
    )
    return {
        "listing": str(result.listing),
        "samples": {k: [str(p) for p in v] for k, v in result.outputs.items()},
        "entries": result.entries,
        "jobs": result.jobs,
        "submissions": result.submissions,
    }


def _kill_on_cancel(flow: Any, flow_run: Any, state: Any) -> None:
    """Kill the run's batch jobs listed in the ledger when Prefect cancels it.

    The parameter names are part of the hook interface. The flow engine
    passes the arguments by position, but the runner behind ``flow.serve()``
    passes them as ``flow=``, ``flow_run=`` and ``state=`` (Prefect 3.9.1,
    ``prefect/runner/_hook_runner.py``).
    """
    parameters = getattr(flow_run, "parameters", {}) or {}
    config = load_config(parameters["config"])
    backend = make_backend(config, parameters.get("backend"))
    killed = kill_active(config, backend, f"flow run {flow_run.id} cancelled")
    log.warning("flow run %s cancelled: %d jobs killed", flow_run.id, killed)


@flow(name="production", on_cancellation=[_kill_on_cancel])
def production(
    config: str, backend: str | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Run the production described by the YAML file ``config``.

    Args:
        config: path of the production config.
        backend: ``local`` or ``lsf``; ``None`` takes the config's ``backend``.
        dry_run: return the submission argv of every job, submitting nothing.

    Returns:
        The output listing (``listing``, ``samples``, ``entries``, ``jobs``,
        ``submissions``), or ``{"argv": [...]}`` for a dry run.

    Raises:
        BatchError: a job failed for good; the message lists attempts, exit
            codes and log paths of each failed job.
    """
    if dry_run:
        loaded = load_config(config)
        return {"argv": Production(loaded, make_backend(loaded, backend)).dry_run()}
    return run_production(config, backend)


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise ProductionCancelled(f"signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the flow from the command line; return the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.production",
        description="Run the production flow (basf2 jobs on LSF or locally).",
    )
    parser.add_argument("--config", required=True, help="production config (YAML)")
    parser.add_argument(
        "--backend",
        choices=["local", "lsf"],
        default=None,
        help="batch backend; default: the config's backend",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the submission argv of every job (JSON, one per line)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="serve the flow as the Prefect deployment 'production' instead",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )

    try:
        if args.dry_run:
            config = load_config(args.config)
            backend = make_backend(config, args.backend)
            for command in Production(config, backend).dry_run():
                sys.stdout.write(json.dumps(command) + "\n")
            return 0
        if args.serve:
            production.serve(
                name="production",
                parameters={
                    "config": str(Path(args.config).resolve()),
                    "backend": args.backend,
                },
            )
            return 0
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_on_sigterm)
        production(config=args.config, backend=args.backend)
    except ConfigError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except (BatchError, AnalysisError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    except (KeyboardInterrupt, ProductionCancelled):
        sys.stderr.write("cancelled: running jobs were killed, see the ledger\n")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
