"""The production flow end to end on a Prefect server, with the built-in generator."""

from __future__ import annotations

import json
from pathlib import Path

import uproot
import yaml

from analysis.production import ledger as lg
from flows.production import production


def test_production_flow_with_generator(prefect_api: str, tmp_path: Path) -> None:
    config = {
        "name": "flowtest",
        "run_dir": "run",
        "backend": "local",
        "payload": [
            "{python}", "-m", "analysis.generate", "--sample", "{generator_sample}",
            "--events", "{events}", "--seed", "{seed}", "--output", "{output}",
            "--tree", "{tree}",
        ],
        "poll": {"interval_s": 0.2, "retry_initial_s": 0.1, "not_found_grace_s": 5},
        "samples": [
            {"name": "signal", "jobs": 1, "events_per_job": 300,
             "params": {"generator_sample": "signal"}},
            {"name": "qqbar", "jobs": 1, "events_per_job": 300,
             "params": {"generator_sample": "qqbar"}},
        ],
    }  # fmt: skip
    path = tmp_path / "production.yaml"
    path.write_text(yaml.safe_dump(config))

    state = production(config=str(path), backend="local", return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result["jobs"] == 2
    assert result["submissions"] == 2

    listing = json.loads(Path(result["listing"]).read_text())
    for sample in ("signal", "qqbar"):
        (output,) = listing["samples"][sample]
        with uproot.open(output) as handle:
            entries = handle["tau3mu"].num_entries
        # the listing must report what an independent read of the file finds
        assert entries == listing["entries"][sample]
        assert entries > 0

    with lg.Ledger(tmp_path / "run" / "ledger.sqlite") as ledger:
        assert {job.state for job in ledger.jobs()} == {lg.DONE}

    # A rerun finds every job done and submits nothing.
    again = production(config=str(path), backend="local")
    assert again["submissions"] == 2


def test_production_flow_dry_run(prefect_api: str, tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / "production-demo.yaml"
    result = production(config=str(path), backend="lsf", dry_run=True)
    assert len(result["argv"]) == 8
    assert all(argv[0] == "bsub" for argv in result["argv"])
