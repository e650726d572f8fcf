"""Preselection of file groups as batch jobs, through the production layer.

With ``reading.executor: batch`` a sample's files are cut into groups of
``files_per_job``, and each group becomes one job of a small production
(:mod:`analysis.production`) on LSF or on the local machine. A job runs
:func:`analysis.preselection.select_file` on each file of its group and writes
the survivors (parquet) and the per-file counts (JSON). The parent then
rebuilds one :class:`~analysis.preselection.FileSelection` per file, in file
order, so the merged cut-flow and table are identical to a single-process run.

Everything a job needs is in one JSON spec, whose hash names the work folder
``<work_dir>/<sample>-<hash>``. The production ledger lives there, so a rerun
with the same inputs and cuts (a retried task, a resumed flow) re-attaches to
the running jobs and reuses finished groups instead of submitting them again.
A change to the files (their paths, sizes or modification times), cuts, kept
branches or chunk size gives a new hash and a new folder.

Run one group by hand (what each batch job runs)::

    python -m analysis.batch_reading --spec <work>/spec.json --group 0 \
        --results <work>/results
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import polars as pl

from analysis.errors import (
    AnalysisError,
    BatchError,
    ConfigError,
    InputFileError,
    OutputError,
)
from analysis.outputs import atomic_path, write_json
from analysis.production import ledger as lg
from analysis.production.config import (
    LocalSettings,
    LsfSettings,
    PollSettings,
    ProductionConfig,
    parse_config,
)
from analysis.production.runner import Production, make_backend

log = logging.getLogger(__name__)

SPEC_NAME = "spec.json"
RESULTS_NAME = "results"
#: Seconds between two checks for Ctrl-C while samples run side by side.
WAIT_STEP_S = 0.5
#: Lines of a failed job's standard error quoted in the error message.
STDERR_TAIL_LINES = 8


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """Settings of the batch jobs that read a sample's file groups.

    Attributes:
        backend: ``lsf`` (``bsub``/``bjobs``/``bkill``) or ``local`` (local
            processes, for tests and for machines without a batch system).
        files_per_job: input files per job; the last job takes the rest.
        work_dir: folder of the specs, ledgers, logs and results.
        max_attempts: submissions of one group before the run fails.
        use_arrays: submit each sample's groups as one LSF job array.
        lsf: ``bsub`` options (queue, memory, wall time, ...).
        local: settings of the local backend.
        poll: timing of the poll loop.
    """

    backend: str
    files_per_job: int
    work_dir: Path
    max_attempts: int = 3
    use_arrays: bool = False
    lsf: LsfSettings = dataclasses.field(default_factory=LsfSettings)
    local: LocalSettings = dataclasses.field(default_factory=LocalSettings)
    poll: PollSettings = dataclasses.field(default_factory=PollSettings)


def job_spec(spec: Any, available: Sequence[str], files_per_job: int) -> dict[str, Any]:
    """Return the JSON-ready job spec of a sample selection.

    Args:
        spec: the :class:`~analysis.preselection.SampleSelection`.
        available: branch names the cuts are resolved against.
        files_per_job: files per group.
    """
    files = [Path(f).resolve() for f in spec.files]
    return {
        "name": spec.name,
        "files": [str(f) for f in files],
        # Size and modification time: a file rewritten in place (a new
        # production into the same paths) gives a new key, not stale results.
        "file_stats": [_stat(f) for f in files],
        "tree": spec.tree,
        "cuts": [list(c) for c in spec.cuts],
        "keep": list(spec.keep),
        "scale": spec.scale,
        "selection": spec.selection,
        "step_size": spec.step_size,
        "salt": spec.salt,
        "available": list(available),
        "files_per_job": files_per_job,
    }


def _stat(path: Path) -> list[int]:
    try:
        info = path.stat()
    except OSError as err:
        raise InputFileError(
            f"input file {path} cannot be read: {err.strerror}; check the sample's "
            "files in the config"
        ) from err
    return [info.st_size, info.st_mtime_ns]


def spec_key(data: dict[str, Any]) -> str:
    """Return the SHA-256 of a job spec (its canonical JSON)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def groups(n_files: int, files_per_job: int) -> list[range]:
    """Return the file indices of each job."""
    return [
        range(start, min(start + files_per_job, n_files))
        for start in range(0, n_files, files_per_job)
    ]


def _result_paths(results: Path, group: int) -> tuple[Path, Path]:
    stem = f"group-{group:05d}"
    return results / f"{stem}.parquet", results / f"{stem}.json"


def run_group(spec_path: Path, group: int, results: Path) -> Path:
    """Select the files of one group and write survivors and counts.

    The parquet file is written before the JSON file, both atomically, so a
    JSON file marks a complete result.

    Returns:
        The JSON file of the group.

    Raises:
        InputFileError: a file of the group cannot be read.
        CutError: a cut is invalid.
        BatchError: the group index is outside the sample.
    """
    from analysis.preselection import SampleSelection, select_file

    data = json.loads(spec_path.read_text(encoding="utf-8"))
    spans = groups(len(data["files"]), data["files_per_job"])
    if not 0 <= group < len(spans):
        raise BatchError(
            f"group {group} not found in sample {data['name']!r}, which has "
            f"{len(spans)} groups (0 to {len(spans) - 1})"
        )
    spec = SampleSelection(
        name=data["name"],
        files=[Path(f) for f in data["files"]],
        tree=data["tree"],
        cuts=[(name, text) for name, text in data["cuts"]],
        keep=data["keep"],
        scale=data["scale"],
        selection=data["selection"],
        step_size=data["step_size"],
        salt=data["salt"],
    )
    per_file = []
    tables = []
    for index in spans[group]:
        selected = select_file(spec, index, data["available"])
        tables.append(selected.table)
        per_file.append(
            {
                "file": data["files"][index],
                "rows": selected.table.height,
                "candidates": selected.candidates,
                "events": selected.events,
                "weighted_candidates": selected.weighted_candidates,
                "weighted_events": selected.weighted_events,
            }
        )
        log.info("%s: %d survivors", data["files"][index], selected.table.height)
    parquet, summary = _result_paths(results, group)
    results.mkdir(parents=True, exist_ok=True)
    with atomic_path(parquet) as tmp:
        pl.concat(tables, how="vertical").write_parquet(tmp)
    return write_json(
        summary, {"key": spec_key(data), "group": group, "files": per_file}
    )


@dataclasses.dataclass(frozen=True)
class _SampleBatch:
    """One sample's batch reading: its spec, work folder and production."""

    spec: Any
    key: str
    work: Path
    spans: list[range]
    production: ProductionConfig


def _prepare(
    spec: Any, available: Sequence[str], settings: BatchSettings
) -> _SampleBatch:
    """Write the job spec of a sample and build its production config.

    Raises:
        ConfigError: the work folder cannot be created or written.
        InputFileError: an input file is missing.
    """
    data = job_spec(spec, available, settings.files_per_job)
    key = spec_key(data)
    # Absolute: the jobs run in the work folder, and relative paths in their
    # command line would be resolved from there.
    work = (settings.work_dir / f"{spec.name}-{key[:12]}").absolute()
    spec_path = work / SPEC_NAME
    results = work / RESULTS_NAME
    try:
        work.mkdir(parents=True, exist_ok=True)
        if not spec_path.exists():
            write_json(spec_path, data)
    except (OSError, OutputError) as err:
        raise ConfigError(
            f"reading.batch.work_dir {str(settings.work_dir)!r} is invalid: cannot "
            f"create {work}: {err}; give a writable folder on a disk the batch "
            "hosts see"
        ) from err
    spans = groups(len(spec.files), settings.files_per_job)
    # The payload is a template: braces in a path must not read as placeholders.
    literal = {"spec": _literal(spec_path), "results": _literal(results)}
    production = parse_config(
        {
            # The key in the name keeps job names unique across selections, so
            # when bsub prints no job id, the lookup by name finds only ours.
            "name": f"preselection-{key[:8]}",
            "run_dir": str(work),
            "backend": settings.backend,
            "payload": [
                "{python}",
                "-m",
                "analysis.batch_reading",
                "--spec",
                literal["spec"],
                "--group",
                "{index}",
                "--results",
                literal["results"],
            ],
            "max_attempts": settings.max_attempts,
            "use_arrays": settings.use_arrays,
            "verify_outputs": False,
            "lsf": settings.lsf.model_dump(),
            "local": settings.local.model_dump(),
            "poll": settings.poll.model_dump(),
            "samples": [{"name": spec.name, "jobs": len(spans)}],
        },
        work,
        source=f"batch reading of sample {spec.name!r}",
    )
    log.info(
        "%s: %d files in %d %s jobs of up to %d files; work folder %s",
        spec.name,
        len(spec.files),
        len(spans),
        settings.backend,
        settings.files_per_job,
        work,
    )
    return _SampleBatch(spec, key, work, spans, production)


def select_in_batch(
    spec: Any,
    available: Sequence[str],
    settings: BatchSettings,
    progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """Run the preselection of one sample as batch jobs and merge the results.

    Args:
        spec: the :class:`~analysis.preselection.SampleSelection`.
        available: branch names the cuts are resolved against.
        settings: backend, group size, work folder and batch options.
        progress: called as ``progress(files_done, files_total)``.

    Returns:
        One :class:`~analysis.preselection.FileSelection` per input file, in
        file order.

    Raises:
        BatchError: a group failed on every attempt (the message quotes the
            end of its standard error and names its logs), or a finished
            group's results are missing or belong to other inputs.
        ConfigError: the work folder is unusable.
    """
    return select_many_in_batch([(spec, available)], settings, progress)[0]


def select_many_in_batch(
    samples: Sequence[tuple[Any, Sequence[str]]],
    settings: BatchSettings,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[Any]]:
    """Run the batch reading of several samples at the same time.

    Each sample is its own production with its own ledger, polled by its own
    thread, so the wall time is that of the slowest sample rather than the
    sum. When the calling thread is interrupted (Ctrl-C, SIGTERM, a Prefect
    cancellation), every sample's running jobs are killed before the
    exception propagates. When a sample fails, the others still finish, and
    the error lists every failed sample.

    Args:
        samples: ``(spec, available)`` per sample, as for
            :func:`select_in_batch`.
        settings: backend, group size, work folder and batch options.
        progress: called as ``progress(files_done, files_total)`` over all
            samples.

    Returns:
        Per sample, one :class:`~analysis.preselection.FileSelection` per
        input file, in file order.

    Raises:
        BatchError: see :func:`select_in_batch`; the message covers every
            failed sample.
        ConfigError: the work folder is unusable.
    """
    batches = [_prepare(spec, available, settings) for spec, available in samples]
    total = sum(len(b.spec.files) for b in batches)
    done = [0] * len(batches)
    lock = threading.Lock()

    def reporter(position: int) -> Callable[[int, int], None]:
        spans = batches[position].spans

        def report(jobs_done: int, _jobs: int) -> None:
            if progress is None:
                return
            with lock:
                done[position] = sum(len(span) for span in spans[:jobs_done])
                progress(sum(done), total)

        return report

    stop = threading.Event()
    if len(batches) == 1:
        _run_production(batches[0], stop, reporter(0))
    else:
        _run_concurrently(batches, stop, reporter)
    return [_merge(batch) for batch in batches]


def _run_production(
    batch: _SampleBatch, stop: threading.Event, report: Callable[[int, int], None]
) -> None:
    runner = Production(
        batch.production, make_backend(batch.production), stop=stop, progress=report
    )
    try:
        runner.run()
    except BatchError as err:
        raise BatchError(f"{err}\n{_failed_stderr(runner)}".rstrip()) from None
    finally:
        runner.close()


def _run_concurrently(
    batches: list[_SampleBatch],
    stop: threading.Event,
    reporter: Callable[[int], Callable[[int, int], None]],
) -> None:
    failures: list[str] = []
    with ThreadPoolExecutor(
        max_workers=len(batches), thread_name_prefix="batch-reading"
    ) as pool:
        futures = {
            pool.submit(_run_production, batch, stop, reporter(i)): batch
            for i, batch in enumerate(batches)
        }
        pending = set(futures)
        try:
            while pending:
                # A timed wait: an untimed one would hold off Ctrl-C until a
                # sample finished, because the signal handler runs only
                # between waits.
                done, pending = wait(
                    pending, timeout=WAIT_STEP_S, return_when=FIRST_COMPLETED
                )
                for future in done:
                    try:
                        future.result()
                    except BatchError as err:
                        name = futures[future].spec.name
                        failures.append(f"sample {name!r}: {err}")
        except BaseException:
            # Each production checks the event at its next wait, then kills its
            # jobs and ends. Leaving the with-block waits for all of them.
            stop.set()
            raise
    if failures:
        raise BatchError("\n".join(failures))


def _merge(batch: _SampleBatch) -> list[Any]:
    merged: list[Any] = []
    for group, span in enumerate(batch.spans):
        merged.extend(
            _read_group(
                batch.work / RESULTS_NAME,
                group,
                batch.key,
                span,
                batch.spec.files,
                batch.work,
            )
        )
    return merged


def _literal(path: Path) -> str:
    return str(path).replace("{", "{{").replace("}", "}}")


def _read_group(
    results: Path,
    group: int,
    key: str,
    span: range,
    files: Sequence[Path],
    work: Path,
) -> list[Any]:
    from analysis.preselection import FileSelection

    parquet, summary = _result_paths(results, group)
    remedy = (
        f"the production ledger in {work} counts it as done; delete {work} and "
        "rerun to select the sample again"
    )
    try:
        info = json.loads(summary.read_text(encoding="utf-8"))
        table = pl.read_parquet(parquet)
    except (OSError, ValueError, pl.exceptions.PolarsError) as err:
        raise BatchError(
            f"results of group {group} ({files[span[0]]} ...) cannot be read: "
            f"{err}; {remedy}"
        ) from err
    expected = [str(Path(files[i]).resolve()) for i in span]
    if info.get("key") != key or [f["file"] for f in info["files"]] != expected:
        raise BatchError(
            f"results {summary} belong to other inputs or cuts than this run; {remedy}"
        )
    if sum(f["rows"] for f in info["files"]) != table.height:
        raise BatchError(
            f"results {parquet} contain {table.height} rows, but {summary} counts "
            f"{sum(f['rows'] for f in info['files'])}; {remedy}"
        )
    selections = []
    offset = 0
    for entry in info["files"]:
        selections.append(
            FileSelection(
                table=table.slice(offset, entry["rows"]),
                candidates=entry["candidates"],
                events=entry["events"],
                weighted_candidates=entry["weighted_candidates"],
                weighted_events=entry["weighted_events"],
            )
        )
        offset += entry["rows"]
    return selections


def _failed_stderr(runner: Production) -> str:
    """Quote the end of the standard error of each failed job."""
    quoted = []
    for job in runner.ledger.jobs([lg.FAILED]):
        if job.log_err is None:
            continue
        try:
            lines = job.log_err.read_text(errors="replace").splitlines()
        except OSError:
            continue
        tail = [line for line in lines if line.strip()][-STDERR_TAIL_LINES:]
        if tail:
            quoted.append(
                f"standard error of {job.name} ({job.log_err}):\n    "
                + "\n    ".join(tail)
            )
    return "\n".join(quoted)


def main(argv: list[str] | None = None) -> int:
    """Run one group; exit 0 when its results are written, 2 on an error."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.batch_reading",
        description="Preselect one file group of a sample (one batch job).",
    )
    parser.add_argument("--spec", type=Path, required=True, help="job spec JSON")
    parser.add_argument("--group", type=int, required=True, help="group index")
    parser.add_argument("--results", type=Path, required=True, help="results folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        written = run_group(args.spec, args.group, args.results)
    except (AnalysisError, OSError) as err:
        kind = "input file" if isinstance(err, InputFileError) else "error"
        sys.stderr.write(f"tau3mu batch reading, {kind}: {err}\n")
        return 2
    log.info("wrote %s", written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
