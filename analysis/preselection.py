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

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from analysis.cuts import Cut, parse_cut, parse_expression
from analysis.errors import CutError, PhysicsError
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
    """What to read from one sample and how to select it."""

    name: str
    files: Sequence[Path]
    tree: str | None
    cuts: Sequence[tuple[str, str]]
    keep: Sequence[str]
    scale: float = 1.0
    selection: str | None = None
    step_size: str | int = "64 MB"
    salt: int = 0


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


def select_sample(
    spec: SampleSelection,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pl.DataFrame, list[CutFlowStep]]:
    """Apply the preselection to one sample, chunk by chunk.

    Args:
        spec: files, tree, named cuts, branches to keep and the weight scale.
        progress: called as ``progress(files_done, files_total)``.

    Returns:
        The surviving candidates (columns ``keep`` plus ``event_id``,
        ``weight``, ``sample``) and the cut-flow steps, starting with
        ``input`` (and ``sample selection`` when the sample has one).

    Raises:
        InputFileError: a file cannot be read; see :mod:`analysis.ntuple`.
        CutError: a cut is invalid or names an unknown branch.
    """
    if not spec.files:
        raise PhysicsError(f"sample {spec.name!r} has no input files")
    available = tree_branches(spec.files[0], spec.tree)
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
    branches = sorted(needed)

    flow = [CutFlowStep(spec.name, name, text) for name, text, _ in steps]
    counters = [_EventCounter() for _ in steps]
    kept: list[pl.DataFrame] = []

    for file_index, path in enumerate(spec.files):
        row_offset = 0
        for counter in counters:
            counter.last_id = None
        for chunk in iterate_tree(path, spec.tree, branches, spec.step_size):
            chunk = _with_ids_and_weights(
                chunk, spec.salt * 1_000_003 + file_index, row_offset, spec.scale
            )
            row_offset += chunk.height
            for i, (_, _, step_cut) in enumerate(steps):
                if step_cut is not None:
                    chunk = chunk.filter(step_cut.expr())
                weights = chunk["weight"].to_numpy()
                flow[i].candidates += chunk.height
                flow[i].weighted_candidates += float(weights.sum())
                counters[i].add(chunk["event_id"].to_numpy(), weights)
            columns = [*spec.keep, "event_id", "weight"]
            kept.append(chunk.select(list(dict.fromkeys(columns))))
        if progress is not None:
            progress(file_index + 1, len(spec.files))
        log.debug("%s: read %s", spec.name, path)

    for step, counter in zip(flow, counters, strict=True):
        step.events = counter.events
        step.weighted_events = counter.weighted
    table = pl.concat(kept, how="vertical").with_columns(sample=pl.lit(spec.name))
    log.info(
        "%s: %d of %d candidates pass the preselection",
        spec.name,
        flow[-1].candidates,
        flow[0].candidates,
    )
    return table, flow


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
