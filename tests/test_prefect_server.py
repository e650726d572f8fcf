"""The session Prefect server responds, and a flow run is recorded on it."""

from __future__ import annotations

import asyncio

from prefect import flow, task
from prefect.client.orchestration import get_client


@task
def _double(x: int) -> int:
    return 2 * x


@flow(name="harness-check")
def _harness_flow(x: int) -> int:
    return _double(x)


def test_flow_run_recorded(prefect_api: str) -> None:
    state = _harness_flow(21, return_state=True)
    assert state.is_completed()
    assert state.result() == 42

    async def read_back() -> list[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs()
            return [run.state_type.value for run in runs if run.name]

    states = asyncio.run(read_back())
    assert "COMPLETED" in states
