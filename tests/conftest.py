"""Shared fixtures: the real ROOT files beside the project and one Prefect server.

The Prefect server is a real ``prefect server start`` on a free loopback port
with a temporary PREFECT_HOME, started once per test session because it takes
10-20 s to become healthy.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
# The small generated sample of the flow tests: tens of seconds per flow run.
SMALL_LUMINOSITY_FB = 424.0
SMALL_EVENTS = {
    "signal_events": 5_000,
    "taupair_events": 300_000,
    "qqbar_events": 600_000,
    "data_events": 225_000,
}
SHARED_DATA = Path(
    os.environ.get("TAU3MU_SHARED_DATA", PROJECT.parent / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real ROOT files written by others; skip when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(
            f"real ROOT files not found at {SHARED_DATA}: put the shared data "
            "folder beside the project or set TAU3MU_SHARED_DATA"
        )
    return SHARED_DATA


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout_s} s")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start one real Prefect server on 127.0.0.1 and yield its API URL.

    Every test that runs a flow uses this server (through ``prefect_api``), so
    flow runs, task runs and artifacts are recorded for real and can be read
    back through the API.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": "",
    }
    log_file = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_healthy(url, proc, timeout_s=90)
        yield url
    finally:
        # Send the logs still queued for the API before the server goes away.
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


@pytest.fixture
def prefect_api(prefect_server: str, tmp_path: Path) -> Iterator[str]:
    """Point Prefect in this process (and its children) at the session server."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )

    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = prefect_server
    updates = {
        PREFECT_API_URL: prefect_server,
        PREFECT_HOME: str(tmp_path / "prefect-client"),
        PREFECT_LOCAL_STORAGE_PATH: str(tmp_path / "prefect-client" / "storage"),
    }
    try:
        with temporary_settings(updates=updates):
            yield prefect_server
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old


@pytest.fixture(scope="session")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a small generated sample and a config normalised to it."""
    from analysis.generate import generate_dataset

    folder = tmp_path_factory.mktemp("one-touch")
    generate_dataset(folder / "data", seed=77, **SMALL_EVENTS)
    config = yaml.safe_load((PROJECT / "configs" / "demo.yaml").read_text())
    data_events = SMALL_EVENTS["data_events"]
    # The data hold one third tau-pair and two thirds continuum events.
    per_fb = {
        "taupair": data_events / 3 / SMALL_LUMINOSITY_FB / 1e6,
        "qqbar": 2 * data_events / 3 / SMALL_LUMINOSITY_FB / 1e6,
    }
    for sample in config["samples"]:
        sample["files"] = [str(folder / "data" / f"{sample['name']}.root")]
        if sample["name"] == "signal":
            sample["generated_events"] = SMALL_EVENTS["signal_events"]
        if sample["name"] in per_fb:
            sample["cross_section_nb"] = per_fb[sample["name"]]
            sample["generated_events"] = SMALL_EVENTS[f"{sample['name']}_events"]
    config["name"] = "small"
    toys = config["limit"].get("toy_variation_files", {})
    for name, path in toys.items():
        toys[name] = str(PROJECT / "configs" / path)
    config["bdt"]["n_trials"] = 3
    config["limit"]["n_toys"] = 300
    config["figure_of_merit"]["n_cuts"] = 41
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def first_run(
    small_config: Path, prefect_server: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Run the flow once; several tests read what it left behind."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.one_touch import one_touch

    runs_dir = tmp_path_factory.mktemp("runs")
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        state = one_touch(
            config=str(small_config), runs_dir=str(runs_dir), return_state=True
        )
        result = state.result() if state.is_completed() else None
    return {
        "state": state,
        "result": result,
        "runs_dir": runs_dir,
        "run_dir": runs_dir / "small",
    }
