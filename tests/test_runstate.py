"""Run directories: the lock, stage records and fault injection."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from flows import runstate


def _try_lock(path: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    # Runs in a separate process, so the lock is contended as between two runs.
    try:
        with runstate.run_lock(Path(path)):
            queue.put("locked")
    except runstate.RunLockedError as err:
        queue.put(str(err))


def test_second_run_in_same_directory_is_rejected(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with runstate.run_lock(tmp_path):
        other = context.Process(target=_try_lock, args=(str(tmp_path), queue))
        other.start()
        other.join(60)
    message = queue.get(timeout=10)
    assert "in use by another run" in message
    with runstate.run_lock(tmp_path):
        pass  # released after the block


def test_stage_record_round_trip(tmp_path: Path) -> None:
    assert runstate.completed_summary(tmp_path, "bdt", "k1") is None
    runstate.mark_completed(tmp_path, "bdt", "k1", {"auc": 0.9})
    assert runstate.completed_summary(tmp_path, "bdt", "k1") == {"auc": 0.9}
    assert runstate.completed_summary(tmp_path, "bdt", "k2") is None
    runstate.clear_records(tmp_path)
    assert runstate.completed_summary(tmp_path, "bdt", "k1") is None


def test_corrupt_record_is_ignored(tmp_path: Path) -> None:
    (tmp_path / ".stages").mkdir()
    (tmp_path / ".stages" / "bdt.json").write_text('{"key": ')
    assert runstate.completed_summary(tmp_path, "bdt", "k") is None


def test_stage_key_changes_with_any_part() -> None:
    base = runstate.stage_key("code", {"a.root": "h1"}, "bdt", "cfg")
    assert base == runstate.stage_key("code", {"a.root": "h1"}, "bdt", "cfg")
    assert base != runstate.stage_key("code", {"a.root": "h2"}, "bdt", "cfg")
    assert base != runstate.stage_key("code2", {"a.root": "h1"}, "bdt", "cfg")


def test_fault_once_then_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runstate.FAULT_VARIABLE, "bdt:once")
    runstate.maybe_inject_fault(tmp_path, "limit")  # other stages unaffected
    with pytest.raises(runstate.InjectedFault):
        runstate.maybe_inject_fault(tmp_path, "bdt")
    runstate.maybe_inject_fault(tmp_path, "bdt")


def test_fault_always_and_bad_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runstate.FAULT_VARIABLE, "bdt:always")
    for _ in range(2):
        with pytest.raises(runstate.InjectedPermanentFault):
            runstate.maybe_inject_fault(tmp_path, "bdt")
    monkeypatch.setenv(runstate.FAULT_VARIABLE, "bdt:sometimes")
    with pytest.raises(runstate.InjectedPermanentFault, match="'sometimes'"):
        runstate.maybe_inject_fault(tmp_path, "bdt")
