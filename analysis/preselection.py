"""Preselection: cut strings, the cut-flow, best-candidate selection, skims.

Each sample's files are read chunk by chunk (only the needed branches); the
named cuts are applied in order, and for every step the cut-flow counts
candidates and events, raw and weighted. Events are counted as runs of
consecutive rows with the same event key, which is the order in which basf2
writes candidates; a run that continues across a chunk boundary counts once.

Weights: each candidate carries ``weight = __weight__ * scale``, where
``scale = sigma * L / N_generated`` for simulated samples normalised to
luminosity, a fixed weight from the config, or 1.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from analysis.batch_reading import (
    BatchSettings,
    select_in_batch,
    select_many_in_batch,
)
from analysis.cuts import Cut, parse_cut, parse_expression
from analysis.errors import ConfigError, CutError, OutputError, PhysicsError
from analysis.generate import write_ntuple
from analysis.ntuple import EVENT_BRANCHES, iterate_tree, tree_branches
from analysis.outputs import atomic_path
from analysis.split import _splitmix64, event_ids

log = logging.getLogger(__name__)

WEIGHT_BRANCH = "__weight__"


@dataclass
class CutFlowStep:
    """Counts after one preselection step for one sample."""

    sample: str
    step: str
    cut: str
    candidates: int = 0
    events: int = 0
    weighted_candidates: float = 0.0
    weighted_events: float = 0.0

    def as_row(self) -> dict[str, object]:
        """Return the step as a flat mapping (one cut-flow table row)."""
        return {
            "sample": self.sample,
            "step": self.step,
            "cut": self.cut,
            "candidates": self.candidates,
            "events": self.events,
            "weighted_candidates": self.weighted_candidates,
            "weighted_events": self.weighted_events,
        }


@dataclass
class _EventCounter:
    """Counts runs of equal event ids across chunks."""

    last_id: int | None = None
    events: int = 0
    weighted: float = 0.0

    def add(self, ids: np.ndarray, weights: np.ndarray) -> None:
        if ids.size == 0:
            return
        starts = np.r_[True, ids[1:] != ids[:-1]]
        if self.last_id is not None and ids[0] == self.last_id:
            starts[0] = False
        self.events += int(starts.sum())
        self.weighted += float(weights[starts].sum())
        self.last_id = int(ids[-1])


@dataclass
class SampleSelection:
    """Selection of one sample: files, tree, cuts, kept branches and weights.

    Attributes:
        workers: number of worker processes that read files in parallel;
            1 reads every file in the calling process. The result does not
            depend on the number of workers.
        batch: when set, groups of files run as batch jobs instead (see
            :mod:`analysis.batch_reading`) and ``workers`` is ignored. The
            result is the same as in one process.
    """

    name: str
    files: Sequence[Path]
    tree: str | None
    cuts: Sequence[tuple[str, str]]
    keep: Sequence[str]
    scale: float = 1.0
    selection: str | None = None
    step_size: str | int = "64 MB"
    salt: int = 0
    workers: int = 1
    batch: BatchSettings | None = None


@dataclass
class FileSelection:
    """Preselection result of one input file: counts per step and survivors.

    The lists have one entry per step (``input``, the sample selection if any,
    then each cut). Events are counted within the file, so the results of a
    sample's files add up to the sample's cut-flow.
    """

    table: pl.DataFrame
    candidates: list[int]
    events: list[int]
    weighted_candidates: list[float]
    weighted_events: list[float]


@dataclass(frozen=True)
class _Plan:
    """Parsed steps and the branches to read, shared by every file."""

    steps: list[tuple[str, str, Cut | None]]
    branches: list[str]
    columns: list[str]


def compile_cuts(
    cuts: Sequence[tuple[str, str]], available: Sequence[str]
) -> list[tuple[str, Cut]]:
    """Parse every named cut against the branches of the first input file.

    Raises:
        CutError: a cut is invalid or names no branch; the message names the
            cut as well as the parser's position and suggestions.
    """
    compiled = []
    for name, text in cuts:
        try:
            compiled.append((name, parse_cut(text, available)))
        except CutError as err:
            raise CutError(f"preselection cut {name!r}: {err}") from None
    return compiled


def _plan(spec: SampleSelection, available: Sequence[str]) -> _Plan:
    steps: list[tuple[str, str, Cut | None]] = [("input", "", None)]
    if spec.selection:
        steps.append(
            ("sample selection", spec.selection, parse_cut(spec.selection, available))
        )
    for name, cut in compile_cuts(spec.cuts, available):
        steps.append((name, cut.text, cut))

    needed = set(spec.keep)
    for _, _, step_cut in steps:
        if step_cut is not None:
            needed |= set(step_cut.variables)
    needed |= {b for b in (*EVENT_BRANCHES, WEIGHT_BRANCH) if b in available}
    columns = list(dict.fromkeys([*spec.keep, "event_id", "weight"]))
    return _Plan(steps, sorted(needed), columns)


def select_file(
    spec: SampleSelection, file_index: int, available: Sequence[str]
) -> FileSelection:
    """Apply the preselection to one file of a sample, chunk by chunk.

    Only one chunk of ``spec.step_size`` bytes of the needed branches is in
    memory at a time, besides the surviving candidates.

    Args:
        spec: the sample; ``spec.files[file_index]`` is read.
        file_index: position of the file in the sample, mixed into event ids.
        available: branch names the cuts are resolved against (those of the
            sample's first file).

    Raises:
        InputFileError: the file cannot be read; see :mod:`analysis.ntuple`.
        CutError: a cut is invalid or names an unknown branch.
    """
    plan = _plan(spec, available)
    path = spec.files[file_index]
    cuts = [(i, cut) for i, (_, _, cut) in enumerate(plan.steps) if cut is not None]
    n_steps = len(plan.steps)
    candidates = [0] * n_steps
    weighted = [0.0] * n_steps
    counters = [_EventCounter() for _ in plan.steps]
    kept: list[pl.DataFrame] = []
    row_offset = 0

    for chunk in iterate_tree(path, spec.tree, plan.branches, spec.step_size):
        chunk = _with_ids_and_weights(
            chunk, spec.salt * 1_000_003 + file_index, row_offset, spec.scale
        )
        row_offset += chunk.height
        # Every cut is evaluated on the whole chunk in one pass, and each step
        # then narrows the rows of the step before: no table is copied.
        masks: list[np.ndarray | None] = [None] * n_steps
        if cuts:
            evaluated = chunk.select([cut.expr().alias(f"_cut{i}") for i, cut in cuts])
            for i, _ in cuts:
                masks[i] = evaluated[f"_cut{i}"].to_numpy()
        ids = chunk["event_id"].to_numpy()
        weights = chunk["weight"].to_numpy()
        rows: np.ndarray | None = None
        for i, mask in enumerate(masks):
            if mask is not None:
                rows = np.flatnonzero(mask) if rows is None else rows[mask[rows]]
            step_ids = ids if rows is None else ids[rows]
            step_weights = weights if rows is None else weights[rows]
            candidates[i] += step_ids.size
            weighted[i] += float(step_weights.sum())
            counters[i].add(step_ids, step_weights)
        survivors = chunk.select(plan.columns)
        kept.append(survivors if rows is None else survivors[rows])

    log.debug("%s: read %s", spec.name, path)
    return FileSelection(
        table=pl.concat(kept, how="vertical"),
        candidates=candidates,
        events=[c.events for c in counters],
        weighted_candidates=weighted,
        weighted_events=[c.weighted for c in counters],
    )


def select_sample(
    spec: SampleSelection,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pl.DataFrame, list[CutFlowStep]]:
    """Apply the preselection to one sample, file by file and chunk by chunk.

    With ``spec.workers > 1`` the files are read by that many worker
    processes; with ``spec.batch`` set, groups of files run as batch jobs.
    Each file's counts are added in file order, so the cut-flow and the table
    are identical for any number of workers and any executor.

    Args:
        spec: files, tree, named cuts, branches to keep and the weight scale.
        progress: called as ``progress(files_done, files_total)``.

    Returns:
        The surviving candidates (columns ``keep`` plus ``event_id``,
        ``weight``, ``sample``) in file order, and the cut-flow steps,
        starting with ``input`` (and ``sample selection`` when the sample has
        one).

    Raises:
        InputFileError: a file cannot be read; see :mod:`analysis.ntuple`.
        CutError: a cut is invalid or names an unknown branch.
        PhysicsError: the sample has no input files.
        ConfigError: ``spec.workers`` is below 1.
        BatchError: a batch job failed on every attempt.
    """
    _check_sample(spec)
    available = tree_branches(spec.files[0], spec.tree)
    plan = _plan(spec, available)
    workers = min(spec.workers, len(spec.files))
    if spec.batch is not None:
        results = select_in_batch(spec, available, spec.batch, progress)
    elif workers == 1:
        results = _select_in_process(spec, available, progress)
    else:
        results = _select_in_workers(spec, available, workers, progress)
    return _merge_files(spec, plan, results)


def select_samples_in_batch(
    specs: Sequence[SampleSelection],
    batch: BatchSettings,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[pl.DataFrame, list[CutFlowStep]]]:
    """Apply the preselection to several samples as batch jobs, all at once.

    Every sample's jobs are submitted together and polled side by side, so
    the wall time is that of the slowest sample. Each result is the one
    :func:`select_sample` gives for that sample.

    Args:
        specs: the samples; their own ``batch`` and ``workers`` are ignored.
        batch: backend, group size, work folder and batch options.
        progress: called as ``progress(files_done, files_total)`` over all
            samples.

    Raises:
        BatchError: a group failed on every attempt; the message covers every
            failed sample.
        InputFileError, CutError, PhysicsError: as for :func:`select_sample`,
            before any job is submitted.
    """
    prepared = []
    for spec in specs:
        _check_sample(spec)
        available = tree_branches(spec.files[0], spec.tree)
        prepared.append((spec, available, _plan(spec, available)))
    results = select_many_in_batch(
        [(spec, available) for spec, available, _ in prepared], batch, progress
    )
    return [
        _merge_files(spec, plan, files)
        for (spec, _, plan), files in zip(prepared, results, strict=True)
    ]


def _check_sample(spec: SampleSelection) -> None:
    if not spec.files:
        raise PhysicsError(f"sample {spec.name!r} has no input files")
    if spec.workers < 1:
        raise ConfigError(
            f"sample {spec.name!r}: workers must be at least 1, got {spec.workers}"
        )


def _merge_files(
    spec: SampleSelection, plan: _Plan, results: Sequence[FileSelection]
) -> tuple[pl.DataFrame, list[CutFlowStep]]:
    """Add the per-file counts and tables in file order."""
    flow = [CutFlowStep(spec.name, name, text) for name, text, _ in plan.steps]
    for result in results:
        for i, step in enumerate(flow):
            step.candidates += result.candidates[i]
            step.events += result.events[i]
            step.weighted_candidates += result.weighted_candidates[i]
            step.weighted_events += result.weighted_events[i]
    table = pl.concat([r.table for r in results], how="vertical").with_columns(
        sample=pl.lit(spec.name)
    )
    log.info(
        "%s: %d of %d candidates in %d files pass the preselection",
        spec.name,
        flow[-1].candidates,
        flow[0].candidates,
        len(spec.files),
    )
    return table, flow


def _select_in_process(
    spec: SampleSelection,
    available: Sequence[str],
    progress: Callable[[int, int], None] | None,
) -> list[FileSelection]:
    results = []
    for file_index in range(len(spec.files)):
        results.append(select_file(spec, file_index, available))
        if progress is not None:
            progress(file_index + 1, len(spec.files))
    return results


def _select_in_workers(
    spec: SampleSelection,
    available: Sequence[str],
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> list[FileSelection]:
    # "spawn" because forking a process that runs polars' thread pool can
    # deadlock the child.
    context = multiprocessing.get_context("spawn")
    log.info(
        "%s: reading %d files with %d worker processes",
        spec.name,
        len(spec.files),
        workers,
    )
    results: list[FileSelection | None] = [None] * len(spec.files)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        futures = {
            pool.submit(select_file, spec, index, list(available)): index
            for index in range(len(spec.files))
        }
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress(done, len(spec.files))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [r for r in results if r is not None]


def _die_with_parent(parent: int) -> None:
    """Make a worker end when the process that started it ends.

    Without this, a worker whose parent was killed (SIGKILL, out of memory)
    would read on until its current file is done. Linux sends the signal set
    by ``prctl(PR_SET_PDEATHSIG)`` when the parent dies; the check of the
    parent pid covers a parent that died before the call.
    """
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _with_ids_and_weights(
    chunk: pl.DataFrame, file_index: int, row_offset: int, scale: float
) -> pl.DataFrame:
    ids = event_ids(chunk, file_index, row_offset)
    if WEIGHT_BRANCH in chunk.columns:
        weight = chunk[WEIGHT_BRANCH].cast(pl.Float64) * scale
    else:
        weight = pl.Series(np.full(chunk.height, scale, dtype=np.float64))
    return chunk.with_columns(pl.Series("event_id", ids), weight.alias("weight"))


def best_candidate(
    table: pl.DataFrame,
    *,
    variable: str | None,
    direction: str,
    seed: int = 1,
) -> pl.DataFrame:
    """Keep one candidate per event.

    Args:
        table: candidates with an ``event_id`` column.
        variable: ranking expression (a branch or a formula in the cut
            language, such as ``abs(M - 1.777)``); unused for ``random``.
        direction: ``highest``, ``lowest`` or ``random``.
        seed: seed of the random choice; the choice per event depends only on
            the seed, the event id and the candidate's position in the event.

    Ties keep the candidate that comes first in file order. Candidates whose
    ranking value is NaN rank below every number, so an event keeps a NaN
    candidate only when it has no other.

    Raises:
        CutError: the ranking expression is invalid.
    """
    if table.height == 0:
        return table
    ranked = table.with_row_index("_row")
    if direction == "random":
        position = (
            ranked.select(pl.col("_row") - pl.col("_row").min().over("event_id"))
            .to_series()
            .to_numpy()
        )
        key = _splitmix64(
            ranked["event_id"].to_numpy().view(np.uint64)
            ^ _splitmix64(position.astype(np.uint64) + np.uint64(seed))
        )
        ranked = ranked.with_columns(pl.Series("_rank", key.astype(np.float64)))
        descending = False
    else:
        if variable is None:
            raise CutError("best-candidate selection needs a ranking variable")
        expr, _ = parse_expression(variable, table.columns)
        ranked = ranked.with_columns(expr.cast(pl.Float64).alias("_rank"))
        descending = direction == "highest"
        worst = -np.inf if descending else np.inf
        ranked = ranked.with_columns(
            pl.when(pl.col("_rank").is_nan() | pl.col("_rank").is_null())
            .then(worst)
            .otherwise(pl.col("_rank"))
            .alias("_rank")
        )
    best = (
        ranked.sort(["_rank", "_row"], descending=[descending, False])
        .unique(subset="event_id", keep="first", maintain_order=True)
        .sort("_row")
    )
    return best.drop("_row", "_rank")


def cutflow_table(steps: Sequence[CutFlowStep]) -> pl.DataFrame:
    """Build the cut-flow table with efficiencies relative to the previous step
    and to the input, per sample."""
    table = pl.DataFrame([s.as_row() for s in steps])
    previous = pl.col("candidates").shift(1).over("sample")
    first = pl.col("candidates").first().over("sample")
    previous_events = pl.col("events").shift(1).over("sample")
    first_events = pl.col("events").first().over("sample")
    return table.with_columns(
        eff_step=(pl.col("candidates") / previous).fill_null(1.0),
        eff_total=pl.col("candidates") / first,
        event_eff_step=(pl.col("events") / previous_events).fill_null(1.0),
        event_eff_total=pl.col("events") / first_events,
    ).with_columns(pl.selectors.float().fill_nan(0.0))


def cutflow_markdown(table: pl.DataFrame) -> str:
    """Format the cut-flow table as Markdown, one block of rows per sample."""
    header = (
        "| sample | step | candidates | events | weighted candidates "
        "| eff. step | eff. total |\n|---|---|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['sample']} | {r['step']} | {r['candidates']} | {r['events']} "
        f"| {r['weighted_candidates']:.4g} | {r['eff_step']:.3f} "
        f"| {r['eff_total']:.3f} |"
        for r in table.iter_rows(named=True)
    ]
    return header + "\n".join(lines) + "\n"


def write_parquet(table: pl.DataFrame, path: str | Path) -> Path:
    """Write a table as parquet, atomically."""
    with atomic_path(path) as tmp:
        table.write_parquet(tmp)
    return Path(path)


def write_root_skim(table: pl.DataFrame, path: str | Path, tree: str) -> Path:
    """Write a skim as a flat TTree that ROOT reads, atomically.

    Numeric and boolean columns become branches of their own type (``Int64``
    becomes ``Long64_t``), except that 8- and 16-bit integers are widened to
    32 bits: ROOT shows a ``Char_t`` branch as a character. String columns
    such as ``sample`` and ``kind`` hold one value per file, so they are left
    out and named in the log.

    Raises:
        OutputError: a column is neither numeric, boolean nor a string (a
            list, for example).
    """
    columns: dict[str, np.ndarray] = {}
    dropped = []
    for name, dtype in table.schema.items():
        if dtype == pl.String or dtype == pl.Categorical:
            dropped.append(name)
        elif dtype in (pl.Int8, pl.Int16):
            columns[name] = table[name].cast(pl.Int32).to_numpy()
        elif dtype in (pl.UInt8, pl.UInt16):
            columns[name] = table[name].cast(pl.UInt32).to_numpy()
        elif dtype.is_numeric() or dtype == pl.Boolean:
            columns[name] = table[name].to_numpy()
        else:
            raise OutputError(
                f"column {name!r} of type {dtype} cannot be written to the ROOT "
                f"skim {path}; keep only flat numeric branches"
            )
    if dropped:
        log.info("ROOT skim %s: left out the string columns %s", path, dropped)
    return write_ntuple(path, columns, tree=tree)
