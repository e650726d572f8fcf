"""Write the reading benchmark's dataset: basf2-layout files with 40 branches.

The 25 branches of ``analysis.generate`` come from a pool of generated events
(signal, generic tau pairs and continuum), resampled event by event with
replacement so that any number of candidates can be written quickly. Fifteen
more branches are drawn at random with realistic shapes, so the files carry
the four branch types of recent basf2 releases: int32 (``nKLMClusters``),
uint32 (``__event__``, ``nECLClusters``), bool (``passesTrigger``) and double.
``extraInfo(BDT)`` is NaN for 2% of the candidates, as basf2 writes a missing
extra-info value.

Every file has its own run number and consecutive event numbers, and the
candidates of an event are consecutive rows, as basf2 writes them. Baskets
hold 100,000 entries (800 kB per double branch), close to the clusters that
ROOT's default auto-flush of 30 MB gives for 40 branches.

Run from the repository root (about 2 minutes per 2.5 million candidates on a
loaded 2-core machine)::

    .venv/bin/python bench/bench_reading_generate.py --outdir /tmp/bench-reading \
        --files 8 --candidates-per-file 2500000
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.generate import generate_sample, write_ntuple

log = logging.getLogger("bench_reading_generate")

TREE = "tau3mu"
BASKET_ENTRIES = 100_000

# Generated events per sample in the pool: about 148,000 candidates, 2% of
# them signal, so the preselection keeps about as few as on real background.
POOL_EVENTS = {"signal": 5_000, "taupair": 1_000_000, "qqbar": 1_000_000}


def generate_pool(seed: int) -> dict[str, np.ndarray]:
    """Generate the candidate pool that the files are resampled from."""
    seeds = np.random.SeedSequence(seed).spawn(len(POOL_EVENTS))
    parts = []
    for (sample, n_events), seq in zip(POOL_EVENTS.items(), seeds, strict=True):
        start = time.perf_counter()
        part = generate_sample(sample, n_events, int(seq.generate_state(1)[0]))
        # Event numbers restart per sample, so shift them apart.
        part["__event__"] = part["__event__"] + np.uint32(len(parts) * 10_000_000)
        parts.append(part)
        log.info(
            "pool: %s, %d events, %d candidates in %.1f s",
            sample,
            n_events,
            part["M"].size,
            time.perf_counter() - start,
        )
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def resample_events(
    pool: dict[str, np.ndarray], n_candidates: int, rng: np.random.Generator
) -> np.ndarray:
    """Return pool row indices of whole events, drawn with replacement.

    The result contains at most ``n_candidates`` rows and stops at an event
    boundary, so it is up to one event short of ``n_candidates``.
    """
    event = pool["__event__"]
    starts = np.flatnonzero(np.r_[True, event[1:] != event[:-1]])
    counts = np.diff(np.r_[starts, event.size])
    mean = counts.mean()
    chosen = rng.integers(0, starts.size, int(n_candidates / mean * 1.05) + 10)
    sizes = counts[chosen]
    keep = np.cumsum(sizes) <= n_candidates
    chosen, sizes = chosen[keep], sizes[keep]
    first_row = np.repeat(np.cumsum(sizes) - sizes, sizes)
    within = np.arange(sizes.sum()) - first_row
    return np.repeat(starts[chosen], sizes) + within


def extra_branches(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw the fifteen branches that ``analysis.generate`` does not write."""
    out: dict[str, np.ndarray] = {}
    for i in range(3):
        out[f"daughter__bo{i}__cm__spelectronID__bc"] = rng.beta(0.5, 8.0, n)
        out[f"daughter__bo{i}__cm__sppionID__bc"] = rng.beta(1.0, 2.0, n)
        # Impact parameter (cm): a core of 0.05 cm and 2% displaced tracks.
        core = rng.normal(0.0, 0.05, n)
        out[f"daughter__bo{i}__cm__spdr__bc"] = np.where(
            rng.uniform(size=n) < 0.02, rng.normal(0.0, 3.0, n), core
        )
    out["dz"] = rng.normal(0.0, 0.1, n)
    out["R2"] = rng.beta(2.0, 5.0, n)
    out["nKLMClusters"] = rng.poisson(2.0, n).astype(np.int32)
    out["nECLClusters"] = rng.poisson(8.0, n).astype(np.uint32)
    out["passesTrigger"] = rng.uniform(size=n) < 0.97
    bdt = rng.beta(2.0, 2.0, n)
    bdt[rng.uniform(size=n) < 0.02] = np.nan
    out["extraInfo__boBDT__bc"] = bdt
    return out


def write_file(
    path: Path,
    pool: dict[str, np.ndarray],
    n_candidates: int,
    run: int,
    rng: np.random.Generator,
) -> int:
    """Write one file of about ``n_candidates`` candidates; return the count."""
    rows = resample_events(pool, n_candidates, rng)
    columns = {name: values[rows] for name, values in pool.items()}

    # Renumber: consecutive events from 1 within the file's own run.
    source = pool["__event__"][rows]
    new_event = np.cumsum(np.r_[True, source[1:] != source[:-1]])
    columns["__event__"] = new_event.astype(np.uint32)
    columns["__run__"] = np.full(rows.size, run, np.int32)
    columns.update(extra_branches(rows.size, rng))

    write_ntuple(path, columns, tree=TREE, chunk_rows=BASKET_ENTRIES)
    return int(rows.size)


def main(argv: list[str] | None = None) -> int:
    """Command line: write the benchmark files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outdir", type=Path, default=Path("/tmp/bench-reading"))
    parser.add_argument("--files", type=int, default=8, help="number of files")
    parser.add_argument(
        "--candidates-per-file",
        type=int,
        default=2_500_000,
        help="candidates per file (default 2,500,000)",
    )
    parser.add_argument("--seed", type=int, default=20260301, help="random seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    pool = generate_pool(args.seed)
    total = 0
    for index in range(args.files):
        rng = np.random.default_rng([args.seed, index])
        path = args.outdir / f"part-{index:03d}.root"
        start = time.perf_counter()
        total += write_file(path, pool, args.candidates_per_file, index + 1, rng)
        log.info("wrote %s in %.1f s", path, time.perf_counter() - start)
    log.info("%d candidates in %d files under %s", total, args.files, args.outdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
