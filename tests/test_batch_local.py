"""Local backend: concurrency limit, job report, kill, re-attach after restart."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from analysis.production.batch import JobSpec, JobState, read_job_report
from analysis.production.local import LocalBackend

SLEEP = [
    sys.executable,
    "-c",
    "import time; print('started', flush=True); time.sleep(30)",
]


def _spec(tmp_path: Path, name: str, command: list[str]) -> JobSpec:
    return JobSpec(
        name, command, tmp_path / f"{name}.out", tmp_path / f"{name}.err", tmp_path
    )


def _wait(backend: LocalBackend, job_id: str, states: set[JobState]) -> JobState:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        state = backend.poll([job_id])[job_id].state
        if state in states:
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {states} within 20 s")


def test_local_concurrency_limit(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "state", max_concurrent=1)
    first = backend.submit(_spec(tmp_path, "first", SLEEP))
    second = backend.submit(_spec(tmp_path, "second", ["true"]))
    try:
        statuses = backend.poll([first, second])
        assert statuses[first].state is JobState.RUNNING
        assert statuses[second].state is JobState.PENDING
        backend.kill([first])
        assert _wait(backend, first, {JobState.FAILED}) is JobState.FAILED
        assert _wait(backend, second, {JobState.DONE}) is JobState.DONE
    finally:
        backend.kill([first, second])
        backend.wait_all(10)


def test_local_job_report_and_exit_code(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "state")
    job_id = backend.submit(
        _spec(
            tmp_path, "bad", [sys.executable, "-c", "print('x'); raise SystemExit(4)"]
        )
    )
    assert _wait(backend, job_id, {JobState.FAILED, JobState.DONE}) is JobState.FAILED
    assert backend.poll([job_id])[job_id].exit_code == 4
    report = read_job_report(tmp_path / "bad.out")
    assert report is not None
    assert report.exit_code == 4
    assert (tmp_path / "bad.out").read_text().startswith("x\n")
    backend.wait_all(10)


def test_local_reattach_after_restart(tmp_path: Path) -> None:
    first = LocalBackend(tmp_path / "state")
    job_id = first.submit(_spec(tmp_path, "long.a1", SLEEP))
    try:
        _wait(first, job_id, {JobState.RUNNING})
        # Wait for the payload: a wrapper killed while Python starts up ends
        # without writing its final state.
        deadline = time.monotonic() + 20
        log = tmp_path / "long.a1.out"
        while not (log.exists() and "started" in log.read_text()):
            assert time.monotonic() < deadline, "payload did not start within 20 s"
            time.sleep(0.05)
        # A new instance, as after an orchestrator crash, finds the job only
        # through its state file.
        second = LocalBackend(tmp_path / "state")
        assert second.poll([job_id])[job_id].state is JobState.RUNNING
        found = second.find_by_name("long.a1")
        assert [s.job_id for s in found] == [job_id]
        second.kill([job_id])
        assert _wait(first, job_id, {JobState.FAILED}) is JobState.FAILED
        assert second.poll([job_id])[job_id].state is JobState.FAILED
    finally:
        first.kill([job_id])
        first.wait_all(10)


def test_local_unknown_id_not_found(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "state")
    assert backend.poll(["local-000000000000"])["local-000000000000"].state is (
        JobState.NOT_FOUND
    )
