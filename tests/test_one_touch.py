"""The one-touch flow end to end, recorded on a real Prefect server.

The flow runs on a small generated sample: a few thousand signal and a few
hundred thousand background events, three optuna trials and a few hundred toys,
so one run takes tens of seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.one_touch import one_touch
from flows.runstate import FAULT_VARIABLE
from tests.conftest import SMALL_LUMINOSITY_FB as LUMINOSITY_FB

PROJECT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def _task_runs(flow_run_id: UUID) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return {run.name: run for run in runs}

    return asyncio.run(read())


def _artifact_keys(flow_run_id: UUID) -> set[str]:
    async def read() -> set[str]:
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
        )

        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
            return {a.key for a in artifacts if a.key}

    return asyncio.run(read())


def _flow_state(flow_run_id: UUID) -> str:
    async def read() -> str:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            assert run.state is not None
            return str(run.state.type.value)

    return asyncio.run(read())


def _stage_names(runs: dict[str, Any]) -> set[str]:
    return {name.rsplit("-", 1)[0] for name in runs}


def test_flow_completes_with_a_limit(first_run: dict[str, Any]) -> None:
    assert first_run["state"].is_completed(), first_run["state"].message
    limit = first_run["result"]["limit"]
    expected = limit["br_upper_expected"]
    assert all(math.isfinite(v) and v > 0 for v in expected)
    assert expected[0] <= expected[2] <= expected[4]
    assert limit["br_upper_observed"] is None, "blinded run has no observed limit"
    # BF_UL = N_UL / (2 L sigma eps), with L in fb^-1 and sigma in nb (x 1e6).
    eff = first_run["result"]["working_point"]["signal_efficiency"]
    n_ul = limit["n_upper_expected"][2]
    by_hand = n_ul / (2 * LUMINOSITY_FB * 0.919e6 * eff)
    assert expected[2] == pytest.approx(by_hand, rel=1e-9)


def test_flow_and_tasks_recorded_completed(
    first_run: dict[str, Any], prefect_api: str
) -> None:
    flow_run_id = first_run["state"].state_details.flow_run_id
    assert _flow_state(flow_run_id) == "COMPLETED"
    runs = _task_runs(flow_run_id)
    assert _stage_names(runs) == {
        "preselection",
        "signal-region",
        "bdt",
        "working-point",
        "limit",
    }
    assert {run.state_type.value for run in runs.values()} == {"COMPLETED"}
    assert {"report", "cutflow", "bdt", "limit", "plots"} <= _artifact_keys(flow_run_id)


def test_run_directory_contents(first_run: dict[str, Any], small_config: Path) -> None:
    run_dir = first_run["run_dir"]
    results = json.loads((run_dir / "results.json").read_text())
    for name, digest in results["input_files_sha256"].items():
        assert hashlib.sha256(Path(name).read_bytes()).hexdigest() == digest
    assert len(results["input_files_sha256"]) == 4
    assert results["package_version"]
    assert results["units"]["mass"] == "GeV"
    for plot in (
        "preselection/inputs.png",
        "signal_region/signal_fit.png",
        "signal_region/signal_region.png",
        "evaluation/roc.png",
        "evaluation/bdt_score.png",
        "evaluation/punzi_scan.png",
        "limit/cls_scan.png",
    ):
        assert (run_dir / plot).stat().st_size > 5_000, plot
    for table in ("preselection/cutflow.csv", "preselection/cutflow.md"):
        assert (run_dir / table).is_file()
    workspace = json.loads((run_dir / "limit" / "workspace.json").read_text())
    modifiers = {
        m["name"]: m["type"]
        for m in workspace["channels"][0]["samples"][0]["modifiers"]
    }
    # The muon-ID toys of the config enter as PCA components (histosys).
    assert modifiers["muon_id_pc0"] == "histosys"
    assert modifiers["tracking"] == "normsys"
    model = json.loads((run_dir / "bdt" / "model.json").read_text())
    assert "learner" in model, "model saved as xgboost JSON"
    report = (run_dir / "report.md").read_text()
    assert "upper limit" in report
    assert "| model | refitted on the training side of the validation split |" in (
        report
    )
    assert not list(run_dir.rglob("*.pkl")), "no pickles in the run directory"
    assert not list(run_dir.rglob(".*.tmp")), "no temporary files left behind"


def test_rerun_reuses_completed_stages(
    first_run: dict[str, Any], small_config: Path, prefect_api: str
) -> None:
    run_dir = first_run["run_dir"]
    model = run_dir / "bdt" / "model.json"
    before = model.stat().st_mtime_ns
    state = one_touch(
        config=str(small_config),
        runs_dir=str(first_run["runs_dir"]),
        return_state=True,
    )
    assert state.is_completed()
    assert model.stat().st_mtime_ns == before, "the BDT was not retrained"
    assert state.result()["limit"] == first_run["result"]["limit"]


def test_transient_failure_is_retried(
    small_config: Path,
    first_run: dict[str, Any],
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FAULT_VARIABLE, "signal_region:once")
    state = one_touch(
        config=str(small_config),
        runs_dir=str(first_run["runs_dir"]),
        run_name="retry",
        return_state=True,
    )
    assert state.is_completed()
    runs = _task_runs(state.state_details.flow_run_id)
    retried = next(r for n, r in runs.items() if n.startswith("signal-region"))
    assert retried.run_count == 2
    first = next(r for n, r in runs.items() if n.startswith("preselection"))
    assert first.run_count == 1


def test_permanent_failure_stops_flow_and_cli(
    small_config: Path,
    first_run: dict[str, Any],
    prefect_server: str,
    prefect_api: str,
) -> None:
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        FAULT_VARIABLE: "bdt:always",
    }
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--config",
        str(small_config),
        "--runs-dir",
        str(first_run["runs_dir"]),
        "--run-name",
        "broken",
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, cwd=PROJECT
    )
    assert done.returncode == 1
    assert "stage 'bdt'" in done.stderr
    assert "permanent failure injected" in done.stderr
    run_dir = Path(first_run["runs_dir"]) / "broken"
    assert (run_dir / ".stages" / "signal_region.json").is_file()
    assert not (run_dir / ".stages" / "bdt.json").exists()
    assert not (run_dir / "limit").exists(), "no stage after the failure ran"
    assert not (run_dir / "results.json").exists()


def test_config_error_fails_without_retry(
    small_config: Path,
    first_run: dict[str, Any],
    prefect_api: str,
    tmp_path: Path,
) -> None:
    config = yaml.safe_load(small_config.read_text())
    config["preselection"][0]["cut"] = "muonIDD > 0.5"
    bad = tmp_path / "bad.yaml"
    # Keep sample paths valid: they are absolute already.
    bad.write_text(yaml.safe_dump(config))
    state = one_touch(
        config=str(bad),
        runs_dir=str(first_run["runs_dir"]),
        run_name="bad-cut",
        return_state=True,
    )
    assert state.is_failed()
    runs = _task_runs(state.state_details.flow_run_id)
    assert _stage_names(runs) == {"preselection"}
    only = next(iter(runs.values()))
    assert only.run_count == 1, "a cut error is not retried"
    with pytest.raises(
        Exception, match=r"(?s)stage 'preselection'.*sample 'signal'.*muonIDD"
    ):
        state.result()


def test_report_names_averaged_fold_models() -> None:
    from flows.report import _model_description

    averaged = {
        "final_model": "fold_average",
        "n_folds": 3,
        "n_trees_per_fold": [5, 7, 6],
    }
    refit = {"final_model": "refit", "n_folds": 3}
    assert (
        _model_description(averaged) == "average of the 3 fold models (5, 7, 6 trees)"
    )
    assert _model_description(refit) == (
        "refitted on all training events after 3-fold cross-validation"
    )
