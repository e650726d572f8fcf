"""Event ids and the train/test split by event."""

from __future__ import annotations

import numpy as np
import polars as pl

from analysis.split import event_ids, is_test_event


def _events(n_events: int, candidates: int) -> pl.DataFrame:
    event = np.repeat(np.arange(n_events, dtype=np.uint32), candidates)
    return pl.DataFrame(
        {
            "__experiment__": np.full(event.size, 12, np.int32),
            "__run__": np.full(event.size, 3, np.int32),
            "__event__": event,
        }
    )


def test_candidates_of_an_event_share_the_side() -> None:
    frame = _events(5000, 3)
    ids = event_ids(frame, file_index=0)
    test = is_test_event(ids, 0.3, seed=11).reshape(-1, 3)
    assert np.all(test.min(axis=1) == test.max(axis=1))


def test_split_fraction_is_binomial() -> None:
    ids = event_ids(_events(100_000, 1), file_index=0)
    fraction = is_test_event(ids, 0.3, seed=5).mean()
    # Binomial standard deviation sqrt(0.3 * 0.7 / 1e5) = 0.00145; allow 5 sigma.
    assert abs(fraction - 0.3) < 5 * 0.00145


def test_split_is_deterministic_and_seeded() -> None:
    ids = event_ids(_events(10_000, 1), file_index=0)
    first = is_test_event(ids, 0.5, seed=1)
    assert np.array_equal(first, is_test_event(ids, 0.5, seed=1))
    assert not np.array_equal(first, is_test_event(ids, 0.5, seed=2))


def test_split_ignores_row_order() -> None:
    frame = _events(2000, 2)
    ids = event_ids(frame, file_index=4)
    shuffled = np.random.default_rng(0).permutation(ids.size)
    assert np.array_equal(
        is_test_event(ids, 0.5, 9)[shuffled], is_test_event(ids[shuffled], 0.5, 9)
    )


def test_same_event_in_other_file_differs() -> None:
    frame = _events(10, 1)
    assert not np.any(event_ids(frame, 0) == event_ids(frame, 1))


def test_file_without_event_branches_has_one_event_per_row() -> None:
    frame = pl.DataFrame({"x": np.zeros(100)})
    ids = event_ids(frame, file_index=0)
    assert np.unique(ids).size == 100
    again = event_ids(frame.slice(50, 50), file_index=0, row_offset=50)
    assert np.array_equal(ids[50:], again)
