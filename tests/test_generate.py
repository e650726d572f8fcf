"""The ntuple generator: layout, bookkeeping, physics, reproducibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import uproot

from analysis.errors import ConfigError
from analysis.generate import (
    DELTA_E_WINDOW,
    M_TAU,
    MASS_WINDOW,
    generate_sample,
    main,
    write_ntuple,
)


@pytest.fixture(scope="module")
def signal() -> dict[str, np.ndarray]:
    return generate_sample("signal", 40_000, seed=3)


def test_same_seed_same_output() -> None:
    first = generate_sample("taupair", 20_000, seed=9)
    second = generate_sample("taupair", 20_000, seed=9)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_bookkeeping_is_consistent(signal: dict[str, np.ndarray]) -> None:
    event = signal["__event__"]
    assert np.all(np.diff(event.astype(np.int64)) >= 0), "rows sorted by event"
    _, starts, counts = np.unique(event, return_index=True, return_counts=True)
    np.testing.assert_array_equal(signal["__ncandidates__"][starts], counts)
    np.testing.assert_array_equal(signal["__candidate__"][starts], 0)
    assert signal["__candidate__"].max() == counts.max() - 1


def test_branch_types_follow_basf2(signal: dict[str, np.ndarray]) -> None:
    assert signal["__event__"].dtype == np.uint32
    assert signal["__run__"].dtype == np.int32
    assert signal["__weight__"].dtype == np.float64
    assert signal["daughter__bo0__cm__spmuonID__bc"].dtype == np.float64


def test_production_window_applied(signal: dict[str, np.ndarray]) -> None:
    assert signal["M"].min() > MASS_WINDOW[0]
    assert signal["M"].max() < MASS_WINDOW[1]
    assert signal["deltaE"].min() > DELTA_E_WINDOW[0]
    assert signal["deltaE"].max() < DELTA_E_WINDOW[1]


def test_signal_peaks_at_tau_mass(signal: dict[str, np.ndarray]) -> None:
    true = signal["isSignal"] == 1
    # The median of the reconstructed mass sits within 2 MeV of m_tau: the
    # radiative tail pulls it down by about 1 MeV.
    assert abs(np.median(signal["M"][true]) - M_TAU) < 0.002
    # Delta E peaks at 0; ISR and FSR give a low tail only.
    assert abs(np.median(signal["deltaE"][true])) < 0.03
    assert np.percentile(signal["deltaE"][true], 5) < -0.1


def test_tau_background_lies_below_tau_mass() -> None:
    background = generate_sample("taupair", 200_000, seed=4)
    # Three pions from tau -> 3 pi nu carry less than m_tau (muon mass
    # hypothesis lowers it further); resolution adds a few MeV.
    assert np.percentile(background["M"], 99) < M_TAU + 0.01
    assert np.median(background["deltaE"]) < -0.1


def test_data_has_no_truth_and_injected_signal() -> None:
    data = generate_sample("data", 30_000, seed=5, inject_signal=500)
    assert np.all(np.isnan(data["isSignal"]))
    near_peak = np.abs(data["M"] - M_TAU) < 0.01
    assert near_peak.sum() > 200


def test_unknown_sample_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown sample kind 'signl'"):
        generate_sample("signl", 10, seed=1)


def test_written_file_reads_back_with_uproot(tmp_path: Path) -> None:
    columns = generate_sample("qqbar", 50_000, seed=6)
    path = write_ntuple(tmp_path / "qq.root", columns, tree="tau3mu", chunk_rows=500)
    with uproot.open(path) as handle:
        tree = handle["tau3mu"]
        assert tree.num_entries == columns["M"].size
        arrays = tree.arrays(["__event__", "M"], library="np")
    assert arrays["__event__"].dtype == np.uint32
    np.testing.assert_array_equal(arrays["M"], columns["M"])
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def test_command_line_writes_file(tmp_path: Path) -> None:
    out = tmp_path / "sig.root"
    argv = ["--sample", "signal", "--events", "2000", "--seed", "1", "--output"]
    assert main([*argv, str(out), "--tree", "t"]) == 0
    with uproot.open(out) as handle:
        assert handle["t"].num_entries > 0


@pytest.mark.parametrize("sample", ["signal", "taupair", "qqbar", "data"])
def test_zero_events_give_empty_sample(sample: str) -> None:
    columns = generate_sample(sample, 0, seed=1)
    reference = generate_sample(sample, 200, seed=1)

    assert sorted(columns) == sorted(reference)
    assert all(values.size == 0 for values in columns.values())
    assert {k: v.dtype for k, v in columns.items()} == {
        k: v.dtype for k, v in reference.items()
    }
