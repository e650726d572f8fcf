"""Preselection of file groups as batch jobs: local processes and the LSF emulator.

The batch executor must give the same cut-flow and table as one process, bit
for bit, and survive the emulator's transient errors. It must resubmit a
failed group, never submit a finished group again, and name the broken file
when a group fails for good.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import uproot
import yaml

from analysis.batch_reading import BatchSettings, groups, job_spec, main, spec_key
from analysis.config import parse_config
from analysis.errors import BatchError, ConfigError
from analysis.ntuple import tree_branches
from analysis.preselection import (
    SampleSelection,
    select_sample,
    select_samples_in_batch,
)
from analysis.production import ledger as lg
from analysis.production.config import PollSettings
from tests.lsf_emulator import lsfemu
from tests.lsf_emulator.harness import emulator
from tests.procs import children
from tests.test_reading_scale import CUTS, TREE, write_random_ntuple

# flows/__init__.py routes the ``analysis`` loggers to the Prefect API; outside
# a flow run Prefect warns that it drops those records.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Logger 'analysis[.a-z_]*' attempted to send logs to the API without "
    "a flow run id:UserWarning"
)

PROJECT = Path(__file__).resolve().parents[1]
FAST_POLL = PollSettings(interval_s=0.2, retry_initial_s=0.05, not_found_grace_s=2.0)


@pytest.fixture(scope="module")
def five_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five files of a basf2-layout sample, the second one with zero entries."""
    folder = tmp_path_factory.mktemp("batch-reading")
    paths = []
    for index, n in enumerate((12_000, 0, 9_000, 15_000, 6_000)):
        path = folder / f"part-{index}.root"
        write_random_ntuple(path, n, seed=index + 11)
        paths.append(path)
    return paths


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Path]:
    with emulator(tmp_path / "emu") as state:
        yield state


def _spec(files: list[Path], batch: BatchSettings | None = None) -> SampleSelection:
    return SampleSelection(
        name="sample",
        files=files,
        tree=TREE,
        cuts=CUTS,
        keep=["M", "chiProb", "nKLMClusters", "passesTrigger"],
        scale=0.37,
        step_size=4000,
        salt=3,
        batch=batch,
    )


def _batch(work: Path, backend: str, **options: Any) -> BatchSettings:
    return BatchSettings(
        backend=backend,
        files_per_job=options.pop("files_per_job", 2),
        work_dir=work,
        poll=options.pop("poll", FAST_POLL),
        **options,
    )


def _job(spec: SampleSelection, settings: BatchSettings, name: str) -> str:
    """Return the batch job name ``name`` (``sample.00001.a1``) of a selection."""
    available = tree_branches(spec.files[0], spec.tree)
    key = spec_key(job_spec(spec, available, settings.files_per_job))
    return f"preselection-{key[:8]}.{name}"


def _ledger_submissions(work: Path) -> int:
    (ledger_path,) = work.glob("*/ledger.sqlite")
    with lg.Ledger(ledger_path) as ledger:
        return len(ledger.submissions())


def test_groups_cover_every_file_once() -> None:
    spans = groups(5, 2)
    assert [list(s) for s in spans] == [[0, 1], [2, 3], [4]]
    assert [list(s) for s in groups(4, 10)] == [[0, 1, 2, 3]]


def test_local_jobs_match_one_process(five_files: list[Path], tmp_path: Path) -> None:
    reference, reference_flow = select_sample(_spec(five_files))
    progress: list[tuple[int, int]] = []
    table, flow = select_sample(
        _spec(five_files, _batch(tmp_path / "work", "local")),
        progress=lambda done, total: progress.append((done, total)),
    )

    # Bit for bit: each file's counts come back and are added in file order.
    assert table.equals(reference)
    assert [s.as_row() for s in flow] == [s.as_row() for s in reference_flow]
    assert table.height > 1000
    assert progress[-1] == (5, 5)
    assert all(total == 5 for _, total in progress)
    assert [done for done, _ in progress] == sorted({d for d, _ in progress})
    assert _ledger_submissions(tmp_path / "work") == 3


def test_lsf_jobs_survive_transient_errors(
    five_files: list[Path], tmp_path: Path, emu: Path
) -> None:
    reference, reference_flow = select_sample(_spec(five_files))
    lsfemu.add_fault(emu, "bsub", "lsf_down")
    lsfemu.add_fault(emu, "bjobs", "please_wait")
    lsfemu.add_fault(emu, "bjobs", "reset")
    settings = _batch(tmp_path / "work", "lsf", files_per_job=1)
    table, flow = select_sample(_spec(five_files, settings))

    assert table.equals(reference)
    assert [s.as_row() for s in flow] == [s.as_row() for s in reference_flow]
    # One job per file, each submitted once: the failed bsub was looked up by
    # name before it was retried.
    by_name = lsfemu.submissions_by_name(emu)
    assert len(by_name) == 5
    assert set(by_name.values()) == {1}


def test_rerun_reuses_finished_groups(
    five_files: list[Path], tmp_path: Path, emu: Path
) -> None:
    settings = _batch(tmp_path / "work", "lsf")
    first, first_flow = select_sample(_spec(five_files, settings))
    calls = lsfemu.count_calls(emu, "bsub")
    again, again_flow = select_sample(_spec(five_files, settings))

    assert lsfemu.count_calls(emu, "bsub") == calls == 3
    assert again.equals(first)
    assert [s.as_row() for s in again_flow] == [s.as_row() for s in first_flow]

    # Other cuts are another selection: a new work folder and new jobs.
    changed = _spec(five_files, settings)
    changed.cuts = [*CUTS, ("tight", "chiProb > 0.5")]
    tighter, _ = select_sample(changed)
    assert lsfemu.count_calls(emu, "bsub") == 6
    assert tighter.height < first.height
    assert len(list((tmp_path / "work").iterdir())) == 2


def test_rewritten_file_is_read_again(tmp_path: Path, emu: Path) -> None:
    files = []
    for index in range(2):
        path = tmp_path / f"part-{index}.root"
        write_random_ntuple(path, 5000, seed=index + 31)
        files.append(path)
    settings = _batch(tmp_path / "work", "lsf")
    first, _ = select_sample(_spec(files, settings))

    # A new production writes other events to the same path.
    write_random_ntuple(files[1], 7000, seed=99)
    again, _ = select_sample(_spec(files, settings))
    reference, _ = select_sample(_spec(files))

    assert again.equals(reference)
    assert not again.equals(first)
    assert lsfemu.count_calls(emu, "bsub") == 2


def test_rerun_after_fix_retries_group(
    five_files: list[Path], tmp_path: Path, emu: Path
) -> None:
    settings = _batch(tmp_path / "work", "lsf", max_attempts=2)
    spec = _spec(five_files, settings)
    failing = {_job(spec, settings, f"sample.00000.a{n}"): 1 for n in (1, 2)}
    lsfemu.set_control(emu, fail_names=failing)
    with pytest.raises(BatchError, match=r"\.sample\.00000: 2 attempts"):
        select_sample(spec)

    lsfemu.set_control(emu, fail_names={})
    table, _ = select_sample(spec)
    reference, _ = select_sample(_spec(five_files))
    submitted = lsfemu.submissions_by_name(emu)
    assert table.equals(reference)
    assert submitted[_job(spec, settings, "sample.00000.a3")] == 1
    assert submitted[_job(spec, settings, "sample.00001.a1")] == 1


def test_failed_job_is_resubmitted(
    five_files: list[Path], tmp_path: Path, emu: Path
) -> None:
    reference, _ = select_sample(_spec(five_files))
    settings = _batch(tmp_path / "work", "lsf")
    spec = _spec(five_files, settings)
    # The emulator fails the first attempt of group 1 with exit code 137.
    failing = {_job(spec, settings, "sample.00001.a1"): 137}
    lsfemu.set_control(emu, fail_names=failing)
    table, _ = select_sample(spec)

    assert table.equals(reference)
    assert lsfemu.submissions_by_name(emu)[_job(spec, settings, "sample.00001.a2")] == 1


def test_broken_file_fails_with_its_name(
    five_files: list[Path], tmp_path: Path, emu: Path
) -> None:
    broken = tmp_path / "broken.root"
    broken.write_bytes(five_files[0].read_bytes()[:20_000])
    settings = _batch(tmp_path / "work", "lsf", max_attempts=2)
    with pytest.raises(BatchError) as caught:
        select_sample(_spec([*five_files, broken], settings))

    message = str(caught.value)
    job = _job(_spec([*five_files, broken], settings), settings, "sample.00002")
    assert f"{job}: 2 attempts" in message
    assert "broken.root" in message
    assert f"standard error of {job}" in message
    # The finished groups wrote their results; the failed one wrote nothing.
    results = next((tmp_path / "work").glob("*/results"))
    assert sorted(p.name for p in results.glob("*.json")) == [
        "group-00000.json",
        "group-00001.json",
    ]
    assert not list(results.glob("*.tmp*"))


def test_samples_run_side_by_side(
    five_files: list[Path], tmp_path: Path, emu: Path
) -> None:
    settings = _batch(tmp_path / "work", "lsf", poll=PollSettings(interval_s=1.0))
    first = _spec(five_files[:3])
    second = dataclasses.replace(_spec(five_files[3:]), name="other", salt=4)
    progress: list[tuple[int, int]] = []
    results = select_samples_in_batch(
        [first, second], settings, lambda done, total: progress.append((done, total))
    )

    for spec, (table, flow) in zip((first, second), results, strict=True):
        reference, reference_flow = select_sample(spec)
        assert table.equals(reference)
        assert [s.as_row() for s in flow] == [s.as_row() for s in reference_flow]
    assert progress[-1] == (5, 5)
    # Side by side: the second sample's first job was submitted before the
    # first sample's last job was seen done. One after the other, it would
    # come after.
    (first_work,) = (tmp_path / "work").glob("sample-*")
    (second_work,) = (tmp_path / "work").glob("other-*")
    with sqlite3.connect(first_work / "ledger.sqlite") as conn:
        (first_done,) = conn.execute(
            "SELECT MAX(updated_at) FROM jobs WHERE state = 'done'"
        ).fetchone()
    with sqlite3.connect(second_work / "ledger.sqlite") as conn:
        (second_start,) = conn.execute(
            "SELECT MIN(started_at) FROM submissions"
        ).fetchone()
    assert second_start < first_done


_INTERRUPTED = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from analysis.batch_reading import BatchSettings
from analysis.preselection import SampleSelection, select_samples_in_batch
from analysis.production.config import PollSettings
from tests.test_reading_scale import CUTS, TREE
files = [Path(f) for f in sys.argv[3:]]
batch = BatchSettings(
    backend="lsf", files_per_job=1, work_dir=Path(sys.argv[2]),
    poll=PollSettings(interval_s=5.0),
)
specs = [
    SampleSelection(name=f"s{i}", files=[f], tree=TREE, cuts=CUTS, keep=["M"], salt=i)
    for i, f in enumerate(files)
]
try:
    select_samples_in_batch(specs, batch)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_kills_jobs_of_every_sample(
    five_files: list[Path], tmp_path: Path, emu: Path
) -> None:
    # Jobs stay pending for a minute, so only a cancellation ends the run soon.
    lsfemu.set_control(emu, pend_s=60)
    files = [str(five_files[0]), str(five_files[2])]
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED, str(PROJECT), str(tmp_path / "w"), *files],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while lsfemu.count_calls(emu, "bsub") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lsfemu.count_calls(emu, "bsub") == 2, "the jobs were not submitted"
        time.sleep(1.0)
        start = time.monotonic()
        child.send_signal(signal.SIGINT)
        code = child.wait(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert code == 130
    # Both samples' loops notice the stop at once, not after their jobs end.
    assert elapsed < 10
    assert lsfemu.count_calls(emu, "bkill") == 2


def test_relative_work_dir(
    five_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = _batch(Path("runs") / "batch", "local")
    table, _ = select_sample(_spec(five_files, settings))
    reference, _ = select_sample(_spec(five_files))

    assert table.equals(reference)
    (work,) = (tmp_path / "runs" / "batch").glob("sample-*")
    assert (work / "ledger.sqlite").is_file()


def test_work_dir_that_is_a_file(five_files: list[Path], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"reading\.batch\.work_dir .* is invalid"):
        select_sample(_spec(five_files, _batch(blocker, "local")))


def test_lost_job_id_finds_own_job(
    five_files: list[Path], tmp_path: Path, emu: Path
) -> None:
    files = [five_files[0], five_files[2]]
    select_sample(_spec(files, _batch(tmp_path / "work-a", "lsf")))
    tighter = _spec(files, _batch(tmp_path / "work-b", "lsf"))
    tighter.cuts = [*CUTS, ("tight", "chiProb > 0.5")]
    # The next bsub submits but prints no job id: the lookup by name must
    # find this selection's job, not the finished one of the first.
    lsfemu.add_fault(emu, "bsub", "silent")
    table, _ = select_sample(tighter)

    reference_spec = _spec(files)
    reference_spec.cuts = tighter.cuts
    reference, _ = select_sample(reference_spec)
    assert table.equals(reference)


def test_missing_results_of_a_done_group(
    five_files: list[Path], tmp_path: Path
) -> None:
    settings = _batch(tmp_path / "work", "local")
    select_sample(_spec(five_files, settings))
    (result,) = (tmp_path / "work").glob("*/results/group-00001.parquet")
    result.unlink()
    with pytest.raises(BatchError, match=r"results of group 1 .* cannot be read.*"):
        select_sample(_spec(five_files, settings))


def test_job_entry_point_names_bad_group(
    five_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _batch(tmp_path / "work", "local")
    select_sample(_spec(five_files, settings))
    (spec_path,) = (tmp_path / "work").glob("*/spec.json")
    code = main(["--spec", str(spec_path), "--group", "7", "--results", "x"])
    assert code == 2
    assert "group 7 not found in sample 'sample', which has 3 groups" in (
        capsys.readouterr().err
    )

    # A group run by hand writes the same survivors as the batch job did.
    out = tmp_path / "by-hand"
    assert main(["--spec", str(spec_path), "--group", "1", "--results", str(out)]) == 0
    by_job = next((tmp_path / "work").glob("*/results/group-00001.parquet"))
    assert pl.read_parquet(out / "group-00001.parquet").equals(pl.read_parquet(by_job))
    summary = json.loads((out / "group-00001.json").read_text())
    assert [Path(f["file"]).name for f in summary["files"]] == [
        "part-2.root",
        "part-3.root",
    ]


def _config_data(five_files: list[Path], reading: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "batch",
        "tree": TREE,
        "samples": [
            {"name": "sig", "kind": "signal", "files": [str(five_files[0])]},
            {"name": "data", "kind": "data", "files": [str(five_files[2])]},
        ],
        "bdt": {"features": ["chiProb"], "background_source": "data_sidebands"},
        "reading": reading,
    }


def test_config_selects_the_batch_executor(
    five_files: list[Path], tmp_path: Path
) -> None:
    reading = {
        "executor": "batch",
        "batch": {
            "backend": "lsf",
            "files_per_job": 50,
            "work_dir": "scratch/reading",
            "lsf": {"queue": "l", "memory_mb": 4000},
        },
    }
    config = parse_config(_config_data(five_files, reading), tmp_path)
    assert config.reading.executor == "batch"
    assert config.reading.batch.work_dir == str(tmp_path / "scratch" / "reading")
    assert config.reading.batch.lsf.queue == "l"
    assert config.reading.batch.poll.interval_s == 30.0

    with pytest.raises(ConfigError, match=r"reading\.executor"):
        parse_config(_config_data(five_files, {"executor": "dask"}), tmp_path)
    with pytest.raises(ConfigError, match=r"files_per_job"):
        parse_config(
            _config_data(five_files, {"batch": {"files_per_job": 0}}), tmp_path
        )
    with pytest.raises(ConfigError, match=r"reading\.batch\.qeue"):
        parse_config(_config_data(five_files, {"batch": {"qeue": "s"}}), tmp_path)


def test_flow_stage_reads_through_batch(small_config: Path, tmp_path: Path) -> None:
    from analysis.config import load_config
    from flows.stages import preselection, root_skims

    data = yaml.safe_load(small_config.read_text())
    local = parse_config(data, small_config.parent)
    data["reading"] = {
        "executor": "batch",
        "batch": {"backend": "local", "files_per_job": 1, "poll": {"interval_s": 0.2}},
    }
    data["skims"] = {"root": True, "root_tree": "tau3mu_skim"}
    batch_path = tmp_path / "batch.yaml"
    batch_path.write_text(yaml.safe_dump(data))
    batch = load_config(batch_path)

    in_process = preselection(local, tmp_path / "local")
    by_jobs = preselection(batch, tmp_path / "jobs")

    assert by_jobs["cutflow"] == in_process["cutflow"]
    for name, path in in_process["skims"].items():
        assert pl.read_parquet(by_jobs["skims"][name]).equals(pl.read_parquet(path))
    ledgers = list((tmp_path / "jobs" / "preselection" / "batch").glob("*/ledger*"))
    assert len(ledgers) == len(local.samples)

    # The ROOT skims, switched on in the batch config only, match the parquet.
    assert root_skims(local, tmp_path / "local") == {}
    written = root_skims(batch, tmp_path / "jobs")
    assert sorted(written) == sorted(by_jobs["skims"])
    before = {name: Path(path).stat().st_mtime_ns for name, path in written.items()}
    assert root_skims(batch, tmp_path / "jobs") == written
    assert {n: Path(p).stat().st_mtime_ns for n, p in written.items()} == before
    for name, path in written.items():
        skim = pl.read_parquet(by_jobs["skims"][name])
        with uproot.open(path) as handle:
            arrays = handle["tau3mu_skim"].arrays(library="np")
        assert set(arrays) == set(skim.columns) - {"sample", "kind"}
        # The event keys find a candidate again in the ntuple.
        assert {"__experiment__", "__run__", "__event__"} <= set(arrays)
        for column, values in arrays.items():
            np.testing.assert_array_equal(values, skim[column].to_numpy())


@pytest.mark.integration
@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux /proc")
def test_sigterm_kills_jobs_and_stops_server(
    small_config: Path, tmp_path: Path, emu: Path
) -> None:
    data = yaml.safe_load(small_config.read_text())
    data["reading"] = {
        "executor": "batch",
        "batch": {"backend": "lsf", "poll": {"interval_s": 1}},
    }
    config = tmp_path / "batch.yaml"
    config.write_text(yaml.safe_dump(data))
    lsfemu.set_control(emu, pend_s=120)
    # No PREFECT_API_URL: the flow starts its own temporary server.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    command = [sys.executable, "-m", "flows.cli", "run", "--config", str(config)]
    # A file, not a pipe: a server left behind would hold a pipe open.
    log_path = tmp_path / "stderr.log"
    with log_path.open("w") as log_file:
        child = subprocess.Popen(
            [*command, "--runs-dir", str(tmp_path / "runs")],
            env=env,
            cwd=PROJECT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    servers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        n_samples = len(data["samples"])
        while lsfemu.count_calls(emu, "bsub") < n_samples:
            assert child.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "the jobs were not submitted"
            time.sleep(0.3)
        servers = children(child.pid, b"uvicorn")
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        stderr = log_path.read_text()

    try:
        assert child.returncode == 143, stderr[-2000:]
        assert "cancelled: the flow stopped" in stderr
        assert lsfemu.count_calls(emu, "bkill") == n_samples
        assert servers, "no temporary Prefect server was found"
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() for pid in servers):
            assert time.monotonic() < deadline, f"temporary server {servers} runs on"
            time.sleep(0.2)
    finally:
        # Whatever the outcome, leave no server behind.
        for pid in servers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
