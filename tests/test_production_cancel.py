"""Cancelling the production flow through Prefect kills its LSF jobs.

A real Prefect server (the session fixture ``prefect_server``) and the flow
served by ``python -m flows.production --serve`` in its own process group,
with the LSF emulator first on PATH. The test starts a flow run whose jobs
sleep for a minute and cancels it through the Prefect API once the ledger
shows every job running. After Prefect reports the run as cancelled, it checks
the emulator's records, the ledger and the job processes.

Prefect cancels in two places. The runner sends SIGTERM to the flow-run
process, whose production loop kills the jobs as the signal unwinds it, and
then runs the ``on_cancellation`` hook ``_kill_on_cancel`` in the serving
process, which kills whatever the ledger still lists as active.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import pytest

from analysis.production import ledger as lg
from tests.lsf_emulator import lsfemu
from tests.lsf_emulator.harness import BIN, emulator, toy_payload

PROJECT = Path(__file__).resolve().parents[1]
JOBS = 3
# Two ids per bkill call, so that killing three jobs takes more than one chunk.
BKILL_CHUNK = 2
# The jobs would sleep far longer than the test waits for them.
JOB_SLEEP_S = 60
# Timeouts in s. The whole test took 40-45 s on a 2-core machine.
SERVE_TIMEOUT_S = 45
RUNNING_TIMEOUT_S = 45
CANCEL_TIMEOUT_S = 45


def _wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _write_config(folder: Path) -> Path:
    path = folder / "production.yaml"
    data = {
        "name": "t",
        "run_dir": "run",
        "backend": "lsf",
        "payload": toy_payload("--sleep", str(JOB_SLEEP_S)),
        "lsf": {"bkill_chunk": BKILL_CHUNK},
        "poll": {"interval_s": 0.2, "retry_initial_s": 0.05, "not_found_grace_s": 1.0},
        "samples": [{"name": "sig", "jobs": JOBS}],
    }
    path.write_text(json.dumps(data))
    return path


def _ledger_jobs(ledger_path: Path) -> list[lg.JobRecord]:
    if not ledger_path.exists():
        return []
    with lg.Ledger(ledger_path) as ledger:
        return ledger.jobs()


def _killed_by_emulator(state: Path) -> dict[str, bool]:
    """Return, per job id, whether the emulator's ``bkill`` marked it killed."""
    conn = lsfemu.connect(state)
    rows = conn.execute("SELECT id, killed FROM jobs").fetchall()
    conn.close()
    return {str(job_id): bool(killed) for job_id, killed in rows}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Path]:
    with emulator(tmp_path / "emu") as state:
        yield state


@pytest.fixture
def served_flow(emu: Path, prefect_api: str, tmp_path: Path) -> Iterator[Path]:
    """Serve the production flow in its own process group and yield its config."""
    path = _write_config(tmp_path)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "LSFEMU_DIR": str(emu),
        "LSFEMU_PYTHON": sys.executable,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(tmp_path / "prefect-serve"),
        # The runner looks for scheduled and cancelling runs every 10 s by default.
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    log_file = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.production", "--config", str(path),
         "--backend", "lsf", "--serve"],
        cwd=PROJECT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield path
    finally:
        # The group contains the serving process and the flow-run processes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log_file.close()


@pytest.mark.integration
def test_prefect_cancel_kills_jobs(
    served_flow: Path, emu: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelling

    ledger_path = tmp_path / "run" / "ledger.sqlite"
    serve_log = tmp_path / "serve.log"

    with get_client(sync_client=True) as client:

        def deployment_id() -> UUID | None:
            try:
                return client.read_deployment_by_name("production/production").id
            except ObjectNotFound:
                return None

        _wait_until(deployment_id, SERVE_TIMEOUT_S, "deployment production")
        flow_run = client.create_flow_run_from_deployment(deployment_id())

        def all_running() -> bool:
            jobs = _ledger_jobs(ledger_path)
            return len(jobs) == JOBS and {j.state for j in jobs} == {lg.RUNNING}

        _wait_until(all_running, RUNNING_TIMEOUT_S, f"{JOBS} running jobs")
        running = _ledger_jobs(ledger_path)
        job_pids = lsfemu.running_pids(emu)

        client.set_flow_run_state(flow_run.id, Cancelling())

        def cancelled() -> bool:
            state = client.read_flow_run(flow_run.id).state
            return state is not None and state.is_cancelled()

        _wait_until(cancelled, CANCEL_TIMEOUT_S, "state Cancelled")

    log_text = serve_log.read_text(errors="replace")
    killed = _killed_by_emulator(emu)
    for job in running:
        assert job.job_id is not None
        assert killed[job.job_id], f"job {job.job_id} not killed:\n{log_text}"
    # The kills of one path alone need ceil(JOBS / BKILL_CHUNK) bkill calls.
    assert lsfemu.count_calls(emu, "bkill") >= -(-JOBS // BKILL_CHUNK)

    after = {job.name: job for job in _ledger_jobs(ledger_path)}
    for job in running:
        assert after[job.name].state == lg.KILLED
        assert (after[job.name].reason or "").startswith("killed: ")

    # Every cancel adds one event, so the hook leaves its own even when the
    # loop in the flow-run process has already killed every job.
    # NOTE: so the hook's own bkill is not exercised here. It only kills jobs
    # when the flow-run process dies before its loop can (SIGKILL, OOM).
    with lg.Ledger(ledger_path) as ledger:
        details = [event["detail"] for event in ledger.events("cancelled")]
    hook_reason = f"flow run {flow_run.id} cancelled"
    assert any(hook_reason in detail for detail in details), (
        f"hook _kill_on_cancel left no 'cancelled' event {details}:\n{log_text}"
    )

    assert len(job_pids) == JOBS
    _wait_until(
        lambda: not any(_alive(pid) for pid in job_pids), 10, "job processes to end"
    )
