"""Production loop on the LSF emulator: retries, resume, cancellation, arrays."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis.errors import BatchError, ConfigError
from analysis.production import ledger as lg
from analysis.production.config import ProductionConfig, load_config, parse_config
from analysis.production.lsf import LsfBackend
from analysis.production.runner import Production, ProductionCancelled, make_backend
from tests.lsf_emulator import lsfemu
from tests.lsf_emulator.harness import emulator, toy_payload

PROJECT = Path(__file__).resolve().parents[1]

# flows/__init__.py routes the ``analysis`` loggers to the Prefect API. These
# tests run the production code outside a flow run, where Prefect warns that
# it drops those records instead of sending them.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Logger 'analysis[.a-z_]*' attempted to send logs to the API without "
    "a flow run id:UserWarning"
)


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Path]:
    with emulator(tmp_path / "emu") as state:
        yield state


def _config(tmp_path: Path, **overrides: Any) -> ProductionConfig:
    data: dict[str, Any] = {
        "name": "t",
        "run_dir": str(tmp_path / "run dir"),
        "backend": "lsf",
        "payload": toy_payload(),
        "poll": {"interval_s": 0.2, "retry_initial_s": 0.05, "not_found_grace_s": 1.0},
        "samples": [{"name": "sig", "jobs": 2}],
    }
    data.update(overrides)
    return parse_config(data, tmp_path)


def _run(config: ProductionConfig) -> Production:
    production = Production(config, make_backend(config))
    try:
        production.run()
    finally:
        production.close()
    return production


def _ledger(config: ProductionConfig) -> lg.Ledger:
    return lg.Ledger(config.run_dir / "ledger.sqlite")


def test_run_verifies_and_lists_outputs(emu: Path, tmp_path: Path) -> None:
    config = _config(tmp_path)
    production = Production(config, make_backend(config))
    result = production.run()
    production.close()
    assert result.jobs == 2
    assert result.submissions == 2
    # toy payload writes 10 entries per job
    assert result.entries == {"sig": 20}
    listing = json.loads(result.listing.read_text())
    assert listing["samples"]["sig"] == [str(p) for p in result.outputs["sig"]]
    assert all(Path(p).is_file() for p in listing["samples"]["sig"])


def test_status_logged_while_jobs_run(
    emu: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lsfemu.set_control(emu, pend_s=3.0)
    caplog.set_level(logging.INFO, logger="analysis.production.runner")
    _run(_config(tmp_path))
    status = [
        r.getMessage()
        for r in caplog.records
        if re.fullmatch(r"production t: .* of 2 jobs", r.getMessage())
    ]
    # The first poll logs at once; the next line would come 60 s later.
    assert status == ["production t: 2 pending of 2 jobs"]


def test_failed_job_resubmitted(emu: Path, tmp_path: Path) -> None:
    lsfemu.set_control(emu, fail_names={"t.sig.00001.a1": 3})
    config = _config(tmp_path)
    _run(config)
    with _ledger(config) as ledger:
        rows = ledger.submissions("t.sig.00001")
        job = ledger.job("t.sig.00001")
    assert [r["status"] for r in rows] == ["retry", "done"]
    assert rows[0]["exit_code"] == 3
    assert job.attempt == 2
    assert job.state == lg.DONE
    assert lsfemu.submissions_by_name(emu) == {
        "t.sig.00000.a1": 1, "t.sig.00001.a1": 1, "t.sig.00001.a2": 1,
    }  # fmt: skip


def test_final_failure_summary(emu: Path, tmp_path: Path) -> None:
    lsfemu.set_control(emu, fail_names={"t.sig.00000.a1": 4, "t.sig.00000.a2": 4})
    config = _config(tmp_path, max_attempts=2)
    with pytest.raises(BatchError) as info:
        _run(config)
    message = str(info.value)
    assert "1 of 2 jobs" in message
    assert "t.sig.00000: 2 attempts" in message
    assert "exit codes [4, 4]" in message
    assert "t.sig.00000.a2.out" in message
    with _ledger(config) as ledger:
        assert ledger.job("t.sig.00001").state == lg.DONE


def test_rerun_retries_jobs_failed_for_good(emu: Path, tmp_path: Path) -> None:
    lsfemu.set_control(emu, fail_names={"t.sig.00000.a1": 4, "t.sig.00000.a2": 4})
    config = _config(tmp_path, max_attempts=2)
    with pytest.raises(BatchError):
        _run(config)

    # The cause is fixed: the rerun gives the job two new attempts.
    lsfemu.set_control(emu, fail_names={"t.sig.00000.a3": 5})
    production = Production(config, make_backend(config))
    try:
        result = production.run()
    finally:
        production.close()
    assert result.entries == {"sig": 20}
    with _ledger(config) as ledger:
        job = ledger.job("t.sig.00000")
        statuses = [r["status"] for r in ledger.submissions("t.sig.00000")]
        reopened = ledger.events("reopened")
    assert job.state == lg.DONE
    assert job.attempt == 4
    assert statuses == ["retry", "failed", "retry", "done"]
    assert [e["detail"] for e in reopened] == ["t.sig.00000"]
    # The job that was done in the first run is not submitted again.
    assert lsfemu.submissions_by_name(emu)["t.sig.00001.a1"] == 1
    assert "t.sig.00001.a2" not in lsfemu.submissions_by_name(emu)


def test_empty_output_counts_as_failure(emu: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, payload=toy_payload("--entries", "0"), max_attempts=1)
    with pytest.raises(BatchError, match="has no entries"):
        _run(config)


def test_transient_bjobs_errors_retried(emu: Path, tmp_path: Path) -> None:
    for kind in ("please_wait", "cannot_connect", "lsf_down", "reset", "truncated"):
        lsfemu.add_fault(emu, "bjobs", kind)
    config = _config(tmp_path)
    _run(config)
    with _ledger(config) as ledger:
        assert [j.failures for j in ledger.jobs()] == [0, 0]
    assert set(lsfemu.submissions_by_name(emu).values()) == {1}


def test_bsub_without_id_not_duplicated(emu: Path, tmp_path: Path) -> None:
    lsfemu.add_fault(emu, "bsub", "silent")
    lsfemu.add_fault(emu, "bsub", "lsf_down")
    config = _config(tmp_path)
    _run(config)
    assert lsfemu.submissions_by_name(emu) == {"t.sig.00000.a1": 1, "t.sig.00001.a1": 1}


def test_lag_and_clean_period(emu: Path, tmp_path: Path) -> None:
    # Jobs are invisible for 0.5 s after bsub and forgotten as soon as they end,
    # so every outcome comes from the job report in the -o log.
    lsfemu.set_control(emu, lag_s=0.5, clean_period_s=0.0)
    config = _config(tmp_path)
    _run(config)
    with _ledger(config) as ledger:
        assert {j.state for j in ledger.jobs()} == {lg.DONE}
        assert [j.failures for j in ledger.jobs()] == [0, 0]


def test_unknown_state_escalated(emu: Path, tmp_path: Path) -> None:
    lsfemu.override_stat(emu, "t.sig.00000.a1", "UNKWN", 60)
    poll = {"interval_s": 0.2, "unknown_escalate_s": 0.5, "not_found_grace_s": 1.0}
    config = _config(tmp_path, payload=toy_payload("--sleep", "2"), poll=poll)
    _run(config)
    with _ledger(config) as ledger:
        escalated = ledger.events("escalated")
        job = ledger.job("t.sig.00000")
    assert [e["job"] for e in escalated] == ["t.sig.00000"]
    assert job.attempt == 2
    assert job.state == lg.DONE


def test_arrays_with_failed_element(emu: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, use_arrays=True, array_limit=2,
                     samples=[{"name": "sig", "jobs": 4}])  # fmt: skip
    lsfemu.set_control(emu, fail_names={"t.sig.00000-00003.a1[3]": 9})
    _run(config)
    assert lsfemu.submissions_by_name(emu) == {
        "t.sig.00000-00003.a1": 1, "t.sig.00002.a2": 1,
    }  # fmt: skip
    with _ledger(config) as ledger:
        rows = ledger.submissions("t.sig.00002")
        assert {j.state for j in ledger.jobs()} == {lg.DONE}
    assert rows[0]["exit_code"] == 9
    assert rows[0]["job_id"].endswith("[3]")


def test_unconfirmed_submission_found_on_rerun(emu: Path, tmp_path: Path) -> None:
    # A crash after the ledger recorded the intent and bsub ran, before the id
    # was stored: the rerun must find the job by name and not submit again.
    config = _config(tmp_path, samples=[{"name": "sig", "jobs": 1}])
    production = Production(config, make_backend(config))
    production.ledger.add_jobs(
        (p.name, p.sample, p.index, p.outputs, p.argv)
        for p in production.plans.values()
    )
    plan = production.plans["t.sig.00000"]
    spec = production._single_spec(plan, 1, write=True)
    production.ledger.begin_submission(
        [(plan.name, spec.name, None, spec.log_out, spec.log_err)]
    )
    assert isinstance(production.backend, LsfBackend)
    subprocess.run(
        production.backend.submit_argv(spec), check=True, capture_output=True
    )
    production.close()

    _run(config)
    assert lsfemu.submissions_by_name(emu) == {"t.sig.00000.a1": 1}


_CRASH_SCRIPT = """
import sys
from analysis.production.config import load_config
from analysis.production.runner import Production, make_backend
config = load_config(sys.argv[1])
Production(config, make_backend(config)).run()
"""


def _write_config(tmp_path: Path, payload: list[str], jobs: int = 3) -> Path:
    path = tmp_path / "production.yaml"
    data = {
        "name": "t",
        "run_dir": "run",
        "backend": "lsf",
        "payload": payload,
        "poll": {"interval_s": 0.2, "retry_initial_s": 0.05, "not_found_grace_s": 1.0},
        "samples": [{"name": "sig", "jobs": jobs}],
    }
    path.write_text(json.dumps(data))
    return path


def _wait_until(predicate: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s} s")


def test_crash_and_resume_no_duplicates(emu: Path, tmp_path: Path) -> None:
    path = _write_config(tmp_path, toy_payload("--sleep", "1.5"))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_SCRIPT, str(path)], cwd=PROJECT
    )
    try:
        _wait_until(lambda: len(lsfemu.submissions_by_name(emu)) == 3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lsfemu.running_pids(emu) or lsfemu.executor_pids(emu)

    config = load_config(path)
    _run(config)
    assert lsfemu.submissions_by_name(emu) == {f"t.sig.{i:05d}.a1": 1 for i in range(3)}
    with _ledger(config) as ledger:
        assert {j.state for j in ledger.jobs()} == {lg.DONE}


def test_stop_event_kills_jobs(emu: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, payload=toy_payload("--sleep", "30"))
    stop = threading.Event()
    production = Production(config, make_backend(config), stop=stop)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            production.run()
        except BaseException as exc:
            errors.append(exc)
        finally:
            production.close()

    thread = threading.Thread(target=target)
    thread.start()
    _wait_until(lambda: len(lsfemu.running_pids(emu)) == 2)
    stop.set()
    thread.join(timeout=30)
    assert len(errors) == 1
    assert isinstance(errors[0], ProductionCancelled)
    _wait_until(lambda: not lsfemu.running_pids(emu))
    with _ledger(config) as ledger:
        assert {j.state for j in ledger.jobs()} == {lg.KILLED}
        assert len(ledger.events("cancelled")) == 1
    assert lsfemu.count_calls(emu, "bkill") == 1


def test_cli_sigterm_kills_jobs(emu: Path, tmp_path: Path, prefect_api: str) -> None:
    path = _write_config(tmp_path, toy_payload("--sleep", "30"), jobs=2)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.production", "--config", str(path)],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until(lambda: len(lsfemu.running_pids(emu)) == 2, timeout_s=60)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, stderr.decode()
    _wait_until(lambda: not lsfemu.running_pids(emu))
    config = load_config(path)
    with _ledger(config) as ledger:
        assert {j.state for j in ledger.jobs()} == {lg.KILLED}


def test_dry_run_submits_nothing(emu: Path, tmp_path: Path) -> None:
    path = _write_config(tmp_path, toy_payload())
    proc = subprocess.run(
        [sys.executable, "-m", "flows.production", "--config", str(path),
         "--backend", "lsf", "--dry-run"],
        cwd=PROJECT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 3
    assert all(argv[0] == "bsub" for argv in lines)
    assert [argv[argv.index("-J") + 1] for argv in lines] == [
        "t.sig.00000.a1", "t.sig.00001.a1", "t.sig.00002.a1",
    ]  # fmt: skip
    assert lsfemu.count_calls(emu, "bsub") == 0
    assert not (path.parent / "run" / "ledger.sqlite").exists()


# --- config ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a b", "x[1]", "s;rm", "", "é"])
def test_config_rejects_sample_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"samples\.0\.name"):
        _config(tmp_path, samples=[{"name": name, "jobs": 1}])


def test_config_rejects_unknown_placeholder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\{outptu\}.*Did you mean: 'output'"):
        _config(tmp_path, payload=["run", "{outptu}"])


def test_config_rejects_attribute_placeholder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain names"):
        _config(tmp_path, payload=["run", "{output.__class__}"])


def test_config_rejects_empty_queue(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lsf\.queue = '': .*at least 1 character"):
        _config(tmp_path, lsf={"queue": ""})


def test_config_suggests_known_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"max_atempts.*Did you mean: 'max_attempts'"):
        _config(tmp_path, max_atempts=2)


def test_plan_splits_file_lists(tmp_path: Path) -> None:
    listing = tmp_path / "files.txt"
    listing.write_text("# mdst files\n/d/a 1.root\n/d/b.root\n\n/d/c.root\n")
    payload = ["basf2", "{steering}", "--", "--output", "{output}", "{inputs}"]
    samples = [{"name": "data", "file_list": "files.txt", "files_per_job": 2}]
    config = _config(tmp_path, payload=payload, samples=samples)
    plans = list(Production(config, make_backend(config, "local")).plans.values())
    assert [p.inputs for p in plans] == [["/d/a 1.root", "/d/b.root"], ["/d/c.root"]]
    assert plans[0].argv[-2:] == ["/d/a 1.root", "/d/b.root"]
    assert plans[1].argv[-1] == "/d/c.root"
    assert plans[0].seed != plans[1].seed
