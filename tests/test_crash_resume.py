"""SIGKILL in every stage of the one-touch flow, then resume to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flows.one_touch import STAGES
from flows.runstate import FAULT_VARIABLE

PROJECT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def _run_cli(
    config: Path, runs_dir: Path, server: str, fault: str | None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": server}
    env.pop(FAULT_VARIABLE, None)
    if fault:
        env[FAULT_VARIABLE] = fault
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--config",
        str(config),
        "--runs-dir",
        str(runs_dir),
        "--run-name",
        "crash",
    ]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, cwd=PROJECT
    )


def _numbers(results: dict[str, Any]) -> dict[str, Any]:
    working = results["working_point"]
    limit = results["limit"]
    return {
        "cutflow": results["cutflow"],
        "region": results["signal_region"],
        "best_params": results["bdt"]["best_params"],
        "auc_test": results["bdt"]["auc_test"],
        "bdt_cut": working["bdt_cut"],
        "efficiency": working["signal_efficiency"],
        "background": working["background"]["value"],
        "n_upper_expected": limit["n_upper_expected"],
        "br_upper_expected": limit["br_upper_expected"],
    }


def test_kill_in_each_stage_then_resume(
    small_config: Path,
    first_run: dict[str, Any],
    prefect_server: str,
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "crash"
    records = run_dir / ".stages"
    for index, stage in enumerate(STAGES):
        done = _run_cli(small_config, tmp_path, prefect_server, f"{stage}:kill")
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        # Every stage before the killed one is recorded; the killed one is not.
        recorded = sorted(p.stem for p in records.glob("*.json"))
        assert recorded == sorted(STAGES[:index]), stage
        assert not (run_dir / "results.json").exists()

    mtimes = {
        name: (run_dir / name).stat().st_mtime_ns
        for name in ("preselection/signal.parquet", "bdt/model.json")
    }
    done = _run_cli(small_config, tmp_path, prefect_server, None)
    assert done.returncode == 0, done.stderr[-2000:]
    for name, before in mtimes.items():
        assert (run_dir / name).stat().st_mtime_ns == before, f"{name} recomputed"

    resumed = json.loads((run_dir / "results.json").read_text())
    # Seeded stages give identical numbers to the uninterrupted run.
    assert _numbers(resumed) == _numbers(first_run["result"])
