"""Blinding: data in the blinded box never leave the signal-region stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from analysis.config import load_config
from flows import stages


@pytest.fixture(scope="module")
def signal_as_data(
    small_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Write configs whose data sample also reads the signal MC file."""
    folder = tmp_path_factory.mktemp("blinding")
    config = yaml.safe_load(small_config.read_text())
    data = next(s for s in config["samples"] if s["kind"] == "data")
    signal = next(s for s in config["samples"] if s["kind"] == "signal")
    data["files"] = data["files"] + signal["files"]
    paths = {}
    for name, unblind in (("blinded", False), ("unblinded", True)):
        config["blinding"] = {"unblind": unblind}
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(config))
    return paths


def _run_two_stages(config_path: Path, run_dir: Path) -> dict[str, object]:
    config = load_config(config_path)
    stages.preselection(config, run_dir)
    return stages.signal_region(config, run_dir)


def test_blinded_data_hidden_in_box(
    signal_as_data: dict[str, Path], tmp_path: Path
) -> None:
    summary = _run_two_stages(signal_as_data["blinded"], tmp_path / "blind")
    data = pl.read_parquet(tmp_path / "blind" / "signal_region" / "data.parquet")
    assert summary["counts"]["data"]["in_region"] == 0  # type: ignore[index]
    assert not data["in_region"].any()
    # Nothing inside the blinded box either, only outside it.
    region = summary["region"]
    center = region["center"]  # type: ignore[index]
    near = (np.abs(data["M"].to_numpy() - center[0]) < 0.005) & (
        np.abs(data["deltaE"].to_numpy() - center[1]) < 0.005
    )
    assert not near.any()
    assert data.height > 0, "data outside the box are kept"


def test_unblinded_data_keep_signal_region(
    signal_as_data: dict[str, Path], tmp_path: Path
) -> None:
    summary = _run_two_stages(signal_as_data["unblinded"], tmp_path / "open")
    # The signal MC mixed into the data fills the region once unblinded.
    assert summary["counts"]["data"]["in_region"] > 100  # type: ignore[index]
