"""The one-touch analysis: one Prefect flow, one retried task per stage.

Stages run in order (preselection, signal region, BDT, working point, limit);
a failing stage stops the flow. Tasks retry only errors that can pass on a
second try (file-system errors and timeouts); configuration and physics errors
fail at once. A stage that completed earlier with the same inputs, config
section and code is reused from the run directory (see ``flows/runstate.py``);
``force=True`` recomputes everything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from analysis.config import AnalysisConfig, load_config
from analysis.errors import AnalysisError, OutputError
from flows import report, runstate, stages

log = logging.getLogger(__name__)

STAGES = ("preselection", "signal_region", "bdt", "working_point", "limit")

# Config sections each stage reads (besides those of the stages before it).
STAGE_SECTIONS = {
    "preselection": (
        "samples",
        "tree",
        "preselection",
        "best_candidate",
        "bdt",
        "signal_region",
        "extra_branches",
        "limit",
    ),
    "signal_region": ("signal_region", "split", "blinding"),
    "bdt": ("bdt",),
    "working_point": ("figure_of_merit", "signal_region", "split", "limit"),
    "limit": ("limit", "blinding"),
}


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry file-system errors and timeouts; never config or physics errors."""
    try:
        state.result()
    except (OSError, TimeoutError, OutputError):
        return True
    except BaseException:
        return False
    return False


class _Progress:
    """A Prefect progress artifact, updated at most every two seconds.

    A log line with the same numbers follows at most every
    ``LOG_EVERY_S`` seconds, for a user who watches the terminal.
    """

    LOG_EVERY_S = 30.0

    def __init__(self, stage: str, unit: str) -> None:
        self._stage = stage
        self._unit = unit
        self._id = create_progress_artifact(
            0.0, key=f"progress-{stage.replace('_', '-')}", description=stage
        )
        self._last = 0.0
        self._last_log = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last_log >= self.LOG_EVERY_S:
            self._last_log = now
            log.info("stage %s: %d of %d %s done", self._stage, done, total, self._unit)
        if done < total and now - self._last < 2.0:
            return
        self._last = now
        update_progress_artifact(self._id, 100.0 * done / max(total, 1))


class _WarningCollector(logging.Handler):
    """Collect the messages of WARNING and ERROR records, without repeats."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = f"{record.name}: {record.getMessage()}"
        if message not in self.messages:
            self.messages.append(message)


def _stage_task(name: str) -> Callable[..., Any]:
    return task(
        name=name,
        retries=2,
        retry_delay_seconds=1,
        retry_condition_fn=_retry_transient,
        cache_policy=NO_CACHE,
        persist_result=False,
    )


def _run_stage(
    stage: str,
    run_dir: Path,
    key: str,
    force: bool,
    work: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    logger = get_run_logger()
    if not force:
        summary = runstate.completed_summary(run_dir, stage, key)
        if summary is not None:
            logger.info("stage %s: reusing the completed result in %s", stage, run_dir)
            return summary
    runstate.maybe_inject_fault(run_dir, stage)
    start = time.perf_counter()
    collector = _WarningCollector()
    watched = [logging.getLogger(name) for name in ("analysis", "flows")]
    for logger_ in watched:
        logger_.addHandler(collector)
    try:
        summary = work()
    except AnalysisError as err:
        raise type(err)(f"stage {stage!r} failed: {err}") from err
    finally:
        for logger_ in watched:
            logger_.removeHandler(collector)
    # Warnings change how far a result can be trusted: keep them with it.
    summary["warnings"] = collector.messages
    runstate.maybe_inject_fault(run_dir, stage, point="end")
    runstate.mark_completed(run_dir, stage, key, summary)
    logger.info("stage %s: done in %.1f s", stage, time.perf_counter() - start)
    return summary


def _load(config_path: str, unblind: bool) -> AnalysisConfig:
    config = load_config(config_path)
    if unblind and not config.blinding.unblind:
        config = config.model_copy(
            update={"blinding": config.blinding.model_copy(update={"unblind": True})}
        )
    return config


@_stage_task("preselection")
def preselection_task(
    config_path: str, unblind: bool, run_dir: str, key: str, force: bool
) -> dict[str, Any]:
    config = _load(config_path, unblind)
    path = Path(run_dir)
    summary = _run_stage(
        "preselection",
        path,
        key,
        force,
        lambda: stages.preselection(config, path, _Progress("preselection", "files")),
    )
    # Outside the cached stage: a config that only adds skims.root reuses it.
    return {**summary, "root_skims": stages.root_skims(config, path)}


@_stage_task("signal-region")
def signal_region_task(
    config_path: str, unblind: bool, run_dir: str, key: str, force: bool
) -> dict[str, Any]:
    config = _load(config_path, unblind)
    path = Path(run_dir)
    return _run_stage(
        "signal_region",
        path,
        key,
        force,
        lambda: stages.signal_region(config, path),
    )


@_stage_task("bdt")
def bdt_task(
    config_path: str, unblind: bool, run_dir: str, key: str, force: bool
) -> dict[str, Any]:
    config = _load(config_path, unblind)
    path = Path(run_dir)
    return _run_stage(
        "bdt",
        path,
        key,
        force,
        lambda: stages.train(
            config, path, _Progress("bdt", "trials"), study_tag=key[:16]
        ),
    )


@_stage_task("working-point")
def working_point_task(
    config_path: str, unblind: bool, run_dir: str, key: str, force: bool
) -> dict[str, Any]:
    config = _load(config_path, unblind)
    path = Path(run_dir)
    return _run_stage(
        "working_point",
        path,
        key,
        force,
        lambda: stages.working_point(config, path),
    )


@_stage_task("limit")
def limit_task(
    config_path: str,
    unblind: bool,
    run_dir: str,
    key: str,
    force: bool,
    working: dict[str, Any],
) -> dict[str, Any]:
    config = _load(config_path, unblind)
    path = Path(run_dir)
    return _run_stage(
        "limit",
        path,
        key,
        force,
        lambda: stages.upper_limit(
            config, path, working, _Progress("limit", "scan points")
        ),
    )


def _artifacts(results: dict[str, Any], markdown: str, run_dir: Path) -> None:
    create_markdown_artifact(markdown, key="report", description=str(run_dir))
    create_table_artifact(results["cutflow"], key="cutflow", description="cut-flow")
    bdt = {k: v for k, v in results["bdt"].items() if not isinstance(v, dict | list)}
    create_table_artifact(
        [{"quantity": k, "value": v} for k, v in bdt.items()],
        key="bdt",
        description="BDT performance",
    )
    limit = results["limit"]
    rows = [
        {"quantity": k, "value": v} for k, v in limit.items() if not isinstance(v, dict)
    ]
    create_table_artifact(rows, key="limit", description="upper limit")
    plots = sorted(run_dir.rglob("*.png"))
    create_markdown_artifact(
        "# Plots\n\n"
        + "\n".join(
            f"- [{p.relative_to(run_dir)}]({p.resolve().as_uri()})" for p in plots
        ),
        key="plots",
        description="plots in the run directory",
    )


@flow(name="one-touch", log_prints=False, persist_result=False)
def one_touch(
    config: str = "configs/demo.yaml",
    run_name: str | None = None,
    unblind: bool = False,
    force: bool = False,
    runs_dir: str = "runs",
) -> dict[str, Any]:
    """Run the whole analysis from ntuples to the upper limit.

    Args:
        config: path of the analysis YAML file.
        run_name: name of the run directory under ``runs_dir``; defaults to the
            config's ``name``. Rerunning into the same directory reuses stages
            whose inputs did not change.
        unblind: look at the data in the signal region (overrides the config).
        force: recompute every stage even if an earlier result matches.
        runs_dir: folder holding the run directories.

    Returns:
        The content of ``results.json`` plus ``run_dir`` and ``report``.
    """
    logger = get_run_logger()
    # Milestones of the physics modules are INFO records; let them through
    # whatever level the root logger has in this process.
    logging.getLogger("analysis").setLevel(logging.INFO)
    cfg = _load(config, unblind)
    run_dir = Path(runs_dir) / (run_name or cfg.name)
    with runstate.run_lock(run_dir):
        if force:
            runstate.clear_records(run_dir)
            # A forced run also searches the BDT parameters again.
            for study in (run_dir / "bdt").glob("study-*.db"):
                study.unlink()
        input_files = [f for files in stages.expanded_inputs(cfg) for f in files]
        hashes = runstate.file_hashes(input_files)
        code = runstate.code_version()
        logger.info("run directory %s, %d input files", run_dir, len(hashes))

        keys: dict[str, str] = {}
        previous = [code, hashes]
        for stage in STAGES:
            sections = cfg.section_hash(*STAGE_SECTIONS[stage])
            keys[stage] = runstate.stage_key(*previous, stage, sections)
            previous = [keys[stage]]

        args = (config, unblind, str(run_dir))
        summaries: dict[str, dict[str, Any]] = {}
        summaries["preselection"] = preselection_task(
            *args, keys["preselection"], force
        )
        summaries["signal_region"] = signal_region_task(
            *args, keys["signal_region"], force
        )
        summaries["bdt"] = bdt_task(*args, keys["bdt"], force)
        summaries["working_point"] = working_point_task(
            *args, keys["working_point"], force
        )
        summaries["limit"] = limit_task(
            *args, keys["limit"], force, summaries["working_point"]
        )

        results = report.build_results(
            cfg, Path(config), run_dir, summaries, hashes, code
        )
        results_path = report.write_results(run_dir / "results.json", results)
        report_path = report.write_report(run_dir / "report.md", results, run_dir)
        _artifacts(results, report_path.read_text(encoding="utf-8"), run_dir)
    logger.info("results in %s, report %s", results_path, report_path)
    return {**results, "run_dir": str(run_dir), "report": str(report_path)}
