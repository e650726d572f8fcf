"""LSF backend against the LSF emulator: argv, bsub output, bjobs states, errors."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.errors import BatchError
from analysis.production.batch import (
    LSF_STATES,
    ArraySpec,
    JobSpec,
    JobState,
    TransientBatchError,
    parse_job_report,
    read_job_report,
)
from analysis.production.config import LsfSettings
from analysis.production.lsf import LsfBackend
from tests.lsf_emulator import lsfemu
from tests.lsf_emulator.harness import emulator


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Path]:
    with emulator(tmp_path / "emu") as state:
        yield state


def _spec(tmp_path: Path, name: str, command: list[str]) -> JobSpec:
    return JobSpec(
        name=name,
        command=command,
        log_out=tmp_path / f"{name}.out",
        log_err=tmp_path / f"{name}.err",
        cwd=tmp_path,
    )


def _wait_for(backend: LsfBackend, job_id: str, states: set[JobState]) -> JobState:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = backend.poll([job_id]).get(job_id)
        if status is not None and status.state in states:
            return status.state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {states} within 20 s")


SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]

# flows/__init__.py routes the ``analysis`` loggers to the Prefect API. These
# tests run the production code outside a flow run, where Prefect warns that
# it drops those records instead of sending them.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Logger 'analysis[.a-z_]*' attempted to send logs to the API without "
    "a flow run id:UserWarning"
)


# --- argv --------------------------------------------------------------------


def test_bsub_argv_all_options(tmp_path: Path) -> None:
    settings = LsfSettings(
        queue="l",
        slots=4,
        memory_mb=2000,
        memory_option="M",
        walltime_min=90,
        project="belle2",
        extra_options=["-G", "grp"],
    )
    argv = LsfBackend(settings).submit_argv(_spec(tmp_path, "p.s.00001.a1", ["run"]))
    assert argv[:3] == ["bsub", "-q", "l"]
    assert argv[argv.index("-n") + 1] == "4"
    assert argv[argv.index("-M") + 1] == "2000"
    assert argv[argv.index("-W") + 1] == "90"
    assert argv[argv.index("-P") + 1] == "belle2"
    assert argv[argv.index("-J") + 1] == "p.s.00001.a1"
    assert argv[argv.index("-cwd") + 1] == str(tmp_path)
    assert argv[-3:] == ["-G", "grp", "run"]


def test_bsub_argv_unset_options_absent(tmp_path: Path) -> None:
    argv = LsfBackend(LsfSettings()).submit_argv(_spec(tmp_path, "j", ["run"]))
    for option in ("-n", "-M", "-R", "-W", "-P"):
        assert option not in argv
    assert "False" not in argv
    assert "None" not in argv


def test_bsub_argv_rusage_memory(tmp_path: Path) -> None:
    argv = LsfBackend(LsfSettings(memory_mb=3000)).submit_argv(
        _spec(tmp_path, "j", ["run"])
    )
    assert argv[argv.index("-R") + 1] == "rusage[mem=3000]"


def test_bsub_argv_keeps_spaces_and_metacharacters(tmp_path: Path) -> None:
    folder = tmp_path / "dir with space; $(touch x) & `y` 'q'"
    folder.mkdir()
    spec = JobSpec(
        "j", ["echo", "a b", "$HOME", "*"], folder / "o u t", folder / "e", folder
    )
    argv = LsfBackend(LsfSettings()).submit_argv(spec)
    assert argv[argv.index("-o") + 1] == str(folder / "o u t")
    assert argv[argv.index("-cwd") + 1] == str(folder)
    # LSF runs the last element through /bin/sh, which must split it back
    # into the job's argv without expanding anything.
    assert shlex.split(argv[-1]) == ["echo", "a b", "$HOME", "*"]


def test_array_argv_name_and_limit(tmp_path: Path) -> None:
    spec = ArraySpec(
        "p.s", 7, 3, ["run"], tmp_path / "o.%I", tmp_path / "e.%I", tmp_path
    )
    argv = LsfBackend(LsfSettings()).submit_array_argv(spec)
    assert argv[argv.index("-J") + 1] == "p.s[1-7]%3"
    no_limit = ArraySpec(
        "p.s", 7, None, ["run"], tmp_path / "o", tmp_path / "e", tmp_path
    )
    argv = LsfBackend(LsfSettings()).submit_array_argv(no_limit)
    assert argv[argv.index("-J") + 1] == "p.s[1-7]"


# --- bsub through the emulator ----------------------------------------------


def test_submit_paths_with_metacharacters(emu: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a b;$(x)"
    folder.mkdir()
    marker = folder / "it ran"
    script = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    command = [sys.executable, "-c", script, str(marker), "a b; $HOME"]
    spec = JobSpec("meta", command, folder / "o u t.log", folder / "e.log", folder)
    backend = LsfBackend(LsfSettings())
    job_id = backend.submit(spec)
    assert job_id is not None
    assert _wait_for(backend, job_id, {JobState.DONE, JobState.FAILED}) is JobState.DONE
    assert marker.read_text() == "a b; $HOME"
    report = read_job_report(folder / "o u t.log")
    assert report is not None
    assert report.succeeded


def test_submit_id_after_preamble(emu: Path, tmp_path: Path) -> None:
    lsfemu.add_fault(emu, "bsub", "preamble")
    job_id = LsfBackend(LsfSettings()).submit(_spec(tmp_path, "pre", ["true"]))
    assert job_id is not None
    assert int(job_id) > 1000


def test_submit_without_id_line_returns_none(emu: Path, tmp_path: Path) -> None:
    lsfemu.add_fault(emu, "bsub", "silent")
    backend = LsfBackend(LsfSettings())
    assert backend.submit(_spec(tmp_path, "silent.a1", ["true"])) is None
    found = backend.find_by_name("silent.a1")
    assert len(found) == 1
    assert found[0].name == "silent.a1"


def test_submit_lsf_down_is_transient(emu: Path, tmp_path: Path) -> None:
    lsfemu.add_fault(emu, "bsub", "lsf_down")
    with pytest.raises(TransientBatchError, match="LSF is down"):
        LsfBackend(LsfSettings()).submit(_spec(tmp_path, "down", ["true"]))
    assert lsfemu.submissions_by_name(emu) == {}


def test_submit_bad_queue_is_rejected(emu: Path, tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="No such queue") as info:
        LsfBackend(LsfSettings(queue="badq")).submit(_spec(tmp_path, "q", ["true"]))
    assert not isinstance(info.value, TransientBatchError)


def test_missing_bsub_names_setting(tmp_path: Path) -> None:
    backend = LsfBackend(LsfSettings(bsub=str(tmp_path / "no-bsub")))
    with pytest.raises(BatchError, match="not found"):
        backend.submit(_spec(tmp_path, "x", ["true"]))


# --- bjobs states ------------------------------------------------------------


def test_state_table_covers_lsf_states() -> None:
    expected = {
        "PEND": JobState.PENDING, "PSUSP": JobState.PENDING, "WAIT": JobState.PENDING,
        "PROV": JobState.PENDING, "RUN": JobState.RUNNING, "USUSP": JobState.RUNNING,
        "SSUSP": JobState.RUNNING, "UNKWN": JobState.UNKNOWN, "ZOMBI": JobState.UNKNOWN,
        "DONE": JobState.DONE, "EXIT": JobState.FAILED,
    }  # fmt: skip
    assert expected == LSF_STATES


@pytest.mark.parametrize(
    ("stat", "state"),
    [
        ("PSUSP", JobState.PENDING),
        ("WAIT", JobState.PENDING),
        ("PROV", JobState.PENDING),
        ("USUSP", JobState.RUNNING),
        ("SSUSP", JobState.RUNNING),
        ("UNKWN", JobState.UNKNOWN),
        ("ZOMBI", JobState.UNKNOWN),
    ],
)
def test_poll_reports_overridden_stat(
    emu: Path, tmp_path: Path, stat: str, state: JobState
) -> None:
    backend = LsfBackend(LsfSettings())
    job_id = backend.submit(_spec(tmp_path, f"st.{stat}", SLEEP))
    assert job_id is not None
    lsfemu.override_stat(emu, f"st.{stat}", stat, 30)
    status = backend.poll([job_id])[job_id]
    assert status.stat == stat
    assert status.state is state


def test_poll_pend_run_done_exit(emu: Path, tmp_path: Path) -> None:
    lsfemu.set_control(emu, pend_s=0.5)
    backend = LsfBackend(LsfSettings())
    ok = backend.submit(
        _spec(tmp_path, "ok", [sys.executable, "-c", "import time; time.sleep(0.8)"])
    )
    bad = backend.submit(
        _spec(tmp_path, "bad", [sys.executable, "-c", "raise SystemExit(7)"])
    )
    assert ok is not None
    assert bad is not None
    assert backend.poll([ok])[ok].state is JobState.PENDING
    assert _wait_for(backend, ok, {JobState.RUNNING}) is JobState.RUNNING
    assert _wait_for(backend, ok, {JobState.DONE}) is JobState.DONE
    status = backend.poll([bad])[bad]
    assert status.state is JobState.FAILED
    assert status.exit_code == 7


def test_poll_not_found_after_clean_period(emu: Path, tmp_path: Path) -> None:
    backend = LsfBackend(LsfSettings())
    job_id = backend.submit(_spec(tmp_path, "gone", ["true"]))
    assert job_id is not None
    _wait_for(backend, job_id, {JobState.DONE})
    lsfemu.set_control(emu, clean_period_s=0.0)
    statuses = backend.poll([job_id, "999"])
    assert statuses[job_id].state is JobState.NOT_FOUND
    assert statuses["999"].state is JobState.NOT_FOUND
    report = read_job_report(tmp_path / "gone.out")
    assert report is not None
    assert report.succeeded


def test_poll_hides_new_job_during_lag(emu: Path, tmp_path: Path) -> None:
    lsfemu.set_control(emu, lag_s=30.0)
    backend = LsfBackend(LsfSettings())
    job_id = backend.submit(_spec(tmp_path, "lag", ["true"]))
    assert job_id is not None
    assert backend.poll([job_id])[job_id].state is JobState.NOT_FOUND


@pytest.mark.parametrize(
    "kind", ["please_wait", "cannot_connect", "lsf_down", "reset", "truncated"]
)
def test_poll_transient_error_raises(emu: Path, tmp_path: Path, kind: str) -> None:
    backend = LsfBackend(LsfSettings())
    job_id = backend.submit(_spec(tmp_path, f"t.{kind}", ["true"]))
    assert job_id is not None
    lsfemu.add_fault(emu, "bjobs", kind)
    with pytest.raises(TransientBatchError):
        backend.poll([job_id])
    assert job_id in backend.poll([job_id])


def test_poll_ignores_bjobs_exit_code(emu: Path, tmp_path: Path) -> None:
    backend = LsfBackend(LsfSettings())
    job_id = backend.submit(_spec(tmp_path, "rc", SLEEP))
    assert job_id is not None
    lsfemu.add_fault(emu, "bjobs", "exit_nonzero")
    status = backend.poll([job_id])[job_id]
    assert status.state in (JobState.PENDING, JobState.RUNNING)


def test_poll_one_bjobs_call_per_cycle(emu: Path, tmp_path: Path) -> None:
    backend = LsfBackend(LsfSettings())
    ids = [backend.submit(_spec(tmp_path, f"one.{i}", ["true"])) for i in range(5)]
    before = lsfemu.count_calls(emu, "bjobs")
    statuses = backend.poll([i for i in ids if i])
    assert len(statuses) == 5
    assert lsfemu.count_calls(emu, "bjobs") - before == 1


def test_poll_splits_long_argv(emu: Path) -> None:
    backend = LsfBackend(LsfSettings(max_argv_bytes=1000))
    ids = [str(100000 + i) for i in range(300)]
    # base argv ~50 bytes + 300 ids of 7 bytes = 2150 bytes: 3 calls of <= 1000 bytes
    statuses = backend.poll(ids)
    assert backend.bjobs_calls == 3
    assert lsfemu.count_calls(emu, "bjobs") == 3
    assert all(s.state is JobState.NOT_FOUND for s in statuses.values())
    assert len(statuses) == 300


# --- arrays, names, kill ----------------------------------------------------


def test_array_elements_tracked_separately(emu: Path, tmp_path: Path) -> None:
    lsfemu.set_control(emu, fail_names={"arr[2]": 5})
    backend = LsfBackend(LsfSettings())
    spec = ArraySpec(
        "arr",
        3,
        2,
        ["true"],
        tmp_path / "arr.%I.out",
        tmp_path / "arr.%I.err",
        tmp_path,
    )
    array_id = backend.submit_array(spec)
    assert array_id is not None
    ids = [f"{array_id}[{i}]" for i in (1, 2, 3)]
    for job_id in ids:
        _wait_for(backend, job_id, {JobState.DONE, JobState.FAILED})
    statuses = backend.poll(ids)
    assert statuses[ids[0]].state is JobState.DONE
    assert statuses[ids[1]].state is JobState.FAILED
    assert statuses[ids[1]].exit_code == 5
    assert statuses[ids[2]].state is JobState.DONE
    report = read_job_report(tmp_path / "arr.2.out")
    assert report is not None
    assert report.exit_code == 5
    found = backend.find_by_name("arr")
    assert sorted(s.job_id for s in found) == sorted(ids)


def test_kill_running_job(emu: Path, tmp_path: Path) -> None:
    backend = LsfBackend(LsfSettings(bkill_chunk=1))
    ids = [backend.submit(_spec(tmp_path, f"k{i}", SLEEP)) for i in range(2)]
    live = [i for i in ids if i]
    for job_id in live:
        _wait_for(backend, job_id, {JobState.RUNNING})
    backend.kill(live)
    assert lsfemu.count_calls(emu, "bkill") == 2
    for job_id in live:
        assert _wait_for(backend, job_id, {JobState.FAILED}) is JobState.FAILED
    assert lsfemu.running_pids(emu) == []


# --- job report --------------------------------------------------------------

_REPORT = (
    "Sender: LSF System <lsfadmin@host>\nSubject: Job 1\n\n{line}\n\nResource usage\n"
)


def test_job_report_success() -> None:
    report = parse_job_report("out\n" + _REPORT.format(line="Successfully completed."))
    assert report is not None
    assert report.succeeded
    assert report.exit_code is None


def test_job_report_exit_code() -> None:
    report = parse_job_report(_REPORT.format(line="Exited with exit code 139."))
    assert report is not None
    assert not report.succeeded
    assert report.exit_code == 139


def test_job_report_signal() -> None:
    text = _REPORT.format(line="Exited with signal termination: Killed.")
    report = parse_job_report(text)
    assert report is not None
    assert not report.succeeded
    assert report.exit_code is None


def test_job_report_ignores_payload_text() -> None:
    text = "Successfully completed.\n" + _REPORT.format(line="Exited with exit code 2.")
    report = parse_job_report(text)
    assert report is not None
    assert report.exit_code == 2


def test_job_report_absent() -> None:
    assert parse_job_report("Successfully completed.\n") is None
    assert parse_job_report("") is None
