"""Event identifiers and the deterministic train/test split by event.

An event is (``__experiment__``, ``__run__``, ``__event__``, plus
``__production__`` where present) within one input file; a file without these
branches has one event per row. Every candidate of an event lands on the same
side of the split, and the split depends only on the event key and the seed,
never on row order or the table library's version.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from analysis.ntuple import EVENT_BRANCHES

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Mix 64-bit integers with the splitmix64 finaliser (a fixed, public hash)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def event_ids(frame: pl.DataFrame, file_index: int, row_offset: int = 0) -> np.ndarray:
    """Return a 64-bit event identifier per row of one file's table.

    Args:
        frame: candidates of one input file.
        file_index: position of the file in its sample, mixed into the id so
            that equal event numbers in different files stay different events.
        row_offset: index of the table's first row in the file, used only
            when the file has no event branches (one event per row).
    """
    keys = [name for name in EVENT_BRANCHES if name in frame.columns]
    if {"__experiment__", "__run__", "__event__"} <= set(keys):
        h = _splitmix64(np.full(frame.height, file_index, dtype=np.uint64))
        for name in keys:
            values = frame[name].to_numpy().astype(np.int64).view(np.uint64)
            h = _splitmix64(h ^ values)
        return h.view(np.int64)
    rows = np.arange(row_offset, row_offset + frame.height, dtype=np.uint64)
    h = _splitmix64(np.full(frame.height, file_index, dtype=np.uint64))
    return _splitmix64(h ^ rows).view(np.int64)


def is_test_event(ids: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Return True for events in the test set, False for the training set.

    The decision is a hash of the event id and the seed compared with
    ``test_fraction``, so it is reproducible and independent per event.
    """
    mixed = _splitmix64(ids.view(np.uint64) ^ _splitmix64(np.array([seed], np.uint64)))
    uniform = (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return uniform < test_fraction
