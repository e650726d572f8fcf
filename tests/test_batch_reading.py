"""Preselection of file groups as batch jobs: local processes and the LSF emulator.

The batch executor must give the same cut-flow and table as one process, bit
for bit, and survive the emulator's transient errors. It must resubmit a
failed group, never submit a finished group again, and name the broken file
when a group fails for good.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import uproot
import yaml

from analysis.batch_reading import BatchSettings, groups, main
from analysis.config import parse_config
from analysis.errors import BatchError, ConfigError
from analysis.preselection import SampleSelection, select_sample
from analysis.production import ledger as lg
from analysis.production.config import PollSettings
from tests.lsf_emulator import lsfemu
from tests.lsf_emulator.harness import emulator
from tests.test_reading_scale import CUTS, TREE, write_random_ntuple

# flows/__init__.py routes the ``analysis`` loggers to the Prefect API; outside
# a flow run Prefect warns that it drops those records.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Logger 'analysis[.a-z_]*' attempted to send logs to the API without "
    "a flow run id:UserWarning"
)

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
        poll=FAST_POLL,
        **options,
    )


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
    lsfemu.set_control(
        emu,
        fail_names={
            "preselection.sample.00000.a1": 1,
            "preselection.sample.00000.a2": 1,
        },
    )
    settings = _batch(tmp_path / "work", "lsf", max_attempts=2)
    with pytest.raises(BatchError, match=r"preselection\.sample\.00000: 2 attempts"):
        select_sample(_spec(five_files, settings))

    lsfemu.set_control(emu, fail_names={})
    table, _ = select_sample(_spec(five_files, settings))
    reference, _ = select_sample(_spec(five_files))
    assert table.equals(reference)
    assert lsfemu.submissions_by_name(emu)["preselection.sample.00000.a3"] == 1
    assert lsfemu.submissions_by_name(emu)["preselection.sample.00001.a1"] == 1


def test_failed_job_is_resubmitted(
    five_files: list[Path], tmp_path: Path, emu: Path
) -> None:
    reference, _ = select_sample(_spec(five_files))
    # The emulator fails the first attempt of group 1 with exit code 137.
    lsfemu.set_control(emu, fail_names={"preselection.sample.00001.a1": 137})
    table, _ = select_sample(_spec(five_files, _batch(tmp_path / "work", "lsf")))

    assert table.equals(reference)
    assert lsfemu.submissions_by_name(emu)["preselection.sample.00001.a2"] == 1


def test_broken_file_fails_with_its_name(
    five_files: list[Path], tmp_path: Path, emu: Path
) -> None:
    broken = tmp_path / "broken.root"
    broken.write_bytes(five_files[0].read_bytes()[:20_000])
    settings = _batch(tmp_path / "work", "lsf", max_attempts=2)
    with pytest.raises(BatchError) as caught:
        select_sample(_spec([*five_files, broken], settings))

    message = str(caught.value)
    assert "preselection.sample.00002: 2 attempts" in message
    assert "broken.root" in message
    assert "standard error of preselection.sample.00002" in message
    # The finished groups wrote their results; the failed one wrote nothing.
    results = next((tmp_path / "work").glob("*/results"))
    assert sorted(p.name for p in results.glob("*.json")) == [
        "group-00000.json",
        "group-00001.json",
    ]
    assert not list(results.glob("*.tmp*"))


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
    assert "group 7 is outside sample 'sample', which has 3 groups" in (
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
    from flows.stages import preselection

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

    # The ROOT skims, asked for in the batch config only, match the parquet.
    assert in_process["root_skims"] == {}
    assert sorted(by_jobs["root_skims"]) == sorted(by_jobs["skims"])
    for name, path in by_jobs["root_skims"].items():
        skim = pl.read_parquet(by_jobs["skims"][name])
        with uproot.open(path) as handle:
            arrays = handle["tau3mu_skim"].arrays(library="np")
        assert set(arrays) == set(skim.columns) - {"sample", "kind"}
        for column, values in arrays.items():
            np.testing.assert_array_equal(values, skim[column].to_numpy())
