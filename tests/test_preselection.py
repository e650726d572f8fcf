"""Preselection: cut-flow counts against hand counts, best candidate, real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import uproot

from analysis.config import load_config
from analysis.errors import CutError, OutputError
from analysis.generate import generate_sample, write_ntuple
from analysis.preselection import (
    SampleSelection,
    best_candidate,
    cutflow_markdown,
    cutflow_table,
    select_sample,
    write_root_skim,
)
from flows import stages

PROJECT = Path(__file__).resolve().parents[1]
MUON_ID = "daughter(0, muonID) > 0.5"


@pytest.fixture(scope="module")
def signal_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    columns = generate_sample("signal", 30_000, seed=21)
    return write_ntuple(tmp_path_factory.mktemp("sig") / "signal.root", columns)


def _hand_counts(path: Path) -> dict[str, np.ndarray]:
    with uproot.open(path) as handle:
        return handle["tau3mu"].arrays(library="np")


def test_cutflow_matches_hand_count(signal_file: Path) -> None:
    spec = SampleSelection(
        name="signal",
        files=[signal_file],
        tree="tau3mu",
        cuts=[("muon", MUON_ID), ("window", "1.7 < M < 1.85")],
        keep=["M"],
        scale=0.5,
        step_size=4000,  # many chunks, so events straddle chunk boundaries
    )
    table, steps = select_sample(spec)
    raw = _hand_counts(signal_file)
    first = raw["daughter__bo0__cm__spmuonID__bc"] > 0.5
    both = first & (raw["M"] > 1.7) & (raw["M"] < 1.85)
    for step, mask in zip(steps, [np.ones_like(first), first, both], strict=True):
        assert step.candidates == int(mask.sum())
        assert step.events == np.unique(raw["__event__"][mask]).size
        assert step.weighted_candidates == pytest.approx(0.5 * mask.sum())
    assert table.height == int(both.sum())
    assert set(table.columns) >= {"M", "event_id", "weight", "sample"}


def test_unknown_variable_names_cut(signal_file: Path) -> None:
    spec = SampleSelection(
        name="signal",
        files=[signal_file],
        tree="tau3mu",
        cuts=[("typo", "thrusst > 0.8")],
        keep=["M"],
    )
    with pytest.raises(
        CutError, match=r"(?s)cut 'typo'.*thrusst.*Did you mean: 'thrust'"
    ):
        select_sample(spec)


def test_cutflow_efficiencies() -> None:
    spec_rows = pl.DataFrame(
        {
            "sample": ["a", "a", "a"],
            "step": ["input", "c1", "c2"],
            "cut": ["", "x", "y"],
            "candidates": [100, 50, 10],
            "events": [80, 40, 10],
            "weighted_candidates": [1.0, 0.5, 0.1],
            "weighted_events": [0.8, 0.4, 0.1],
        }
    )
    from analysis.preselection import CutFlowStep

    steps = [CutFlowStep(**row) for row in spec_rows.to_dicts()]
    table = cutflow_table(steps)
    assert table["eff_step"].to_list() == pytest.approx([1.0, 0.5, 0.2])
    assert table["eff_total"].to_list() == pytest.approx([1.0, 0.5, 0.1])
    assert "| a | c2 | 10 | 10 |" in cutflow_markdown(table)


def _candidates() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_id": [1, 1, 1, 2, 2, 3],
            "chi": [0.2, 0.9, 0.9, float("nan"), 0.1, float("nan")],
            "tag": ["a", "b", "c", "d", "e", "f"],
        }
    )


def test_best_candidate_highest_keeps_first_of_ties() -> None:
    best = best_candidate(_candidates(), variable="chi", direction="highest")
    assert best["tag"].to_list() == ["b", "e", "f"]


def test_best_candidate_lowest_ranks_nan_last() -> None:
    best = best_candidate(_candidates(), variable="chi", direction="lowest")
    assert best["tag"].to_list() == ["a", "e", "f"]


def test_best_candidate_random_is_seeded_and_one_per_event() -> None:
    table = pl.DataFrame(
        {"event_id": np.repeat(np.arange(2000), 3), "k": np.tile([0, 1, 2], 2000)}
    )
    first = best_candidate(table, variable=None, direction="random", seed=3)
    again = best_candidate(table, variable=None, direction="random", seed=3)
    other = best_candidate(table, variable=None, direction="random", seed=4)
    assert first.height == 2000
    assert first.equals(again)
    assert not first.equals(other)
    # Each of three positions is chosen about a third of the time:
    # binomial sigma sqrt(2000 * 1/3 * 2/3) = 21; allow 5 sigma.
    counts = np.bincount(first["k"].to_numpy(), minlength=3)
    assert np.all(np.abs(counts - 2000 / 3) < 5 * 21.1)


def test_best_candidate_formula() -> None:
    table = pl.DataFrame({"event_id": [1, 1], "M": [1.70, 1.78]})
    best = best_candidate(table, variable="abs(M - 1.777)", direction="lowest")
    assert best["M"].to_list() == [1.78]


def test_real_belle2_ntuple_cutflow(shared_data: Path, tmp_path: Path) -> None:
    config = load_config(PROJECT / "configs" / "belle2-continuum.yaml")
    summary = stages.preselection(config, tmp_path)

    path = shared_data / "belle2" / "ContinuumSuppression.root"
    with uproot.open(path) as handle:
        raw = handle["tree"].arrays(library="np")
    passing = (
        (raw["Mbc"] > 5.2)
        & (raw["R2"] < 0.6)
        & (np.abs(raw["cosTBTO"]) < 0.95)
        & ((raw["thrustBm"] > 0.6) | (raw["thrustOm"] > 0.6))
    )
    rows = {(r["sample"], r["step"]): r for r in summary["cutflow"]}
    for sample, flag in (("bbbar", 0.0), ("continuum", 1.0)):
        chosen = raw["isContinuumEvent"] == flag
        assert rows[(sample, "input")]["candidates"] == raw["Mbc"].size
        assert rows[(sample, "sample selection")]["candidates"] == int(chosen.sum())
        assert rows[(sample, "thrust")]["candidates"] == int((chosen & passing).sum())
        skim = pl.read_parquet(summary["skims"][sample])
        assert skim.height == rows[(sample, "best candidate")]["candidates"]
    assert (tmp_path / "preselection" / "cutflow.csv").is_file()
    assert (tmp_path / "preselection" / "inputs.png").stat().st_size > 10_000


def test_axis_labels_state_units() -> None:
    from analysis.plots import axis_label

    assert axis_label("M") == "M [GeV]"
    assert axis_label("useCMSFrame__bop__bc") == "useCMSFrame(p) [GeV]"
    assert axis_label("missingMass2OfEvent") == "missingMass2OfEvent [GeV$^2$]"
    assert axis_label("thrust") == "thrust"


def test_root_skim_round_trip(tmp_path: Path) -> None:
    table = pl.DataFrame(
        {
            "M": [1.77, float("nan"), 1.80],
            "nTracks": pl.Series([3, 4, 5], dtype=pl.Int32),
            "__event__": pl.Series([7, 8, 9], dtype=pl.UInt32),
            "passesTrigger": [True, False, True],
            "is_signal": pl.Series([1, 0, 1], dtype=pl.Int8),
            "event_id": pl.Series([-5, 2**40, 3], dtype=pl.Int64),
            "sample": ["signal"] * 3,
        }
    )
    path = write_root_skim(table, tmp_path / "skim.root", "skim")
    with uproot.open(path) as handle:
        tree = handle["skim"]
        arrays = tree.arrays(library="np")
        names = list(tree.keys())
        types = {name: tree[name].typename for name in names}

    assert sorted(arrays) == sorted(set(table.columns) - {"sample"})
    for name, values in arrays.items():
        np.testing.assert_array_equal(values, table[name].to_numpy())
    assert types == {
        "M": "double",
        "nTracks": "int32_t",
        "__event__": "uint32_t",
        "passesTrigger": "bool",
        "is_signal": "int32_t",
        "event_id": "int64_t",
    }
    assert list(tmp_path.iterdir()) == [path]


def test_root_skim_of_empty_table(tmp_path: Path) -> None:
    empty = pl.DataFrame({"M": pl.Series([], dtype=pl.Float64)})
    path = write_root_skim(empty, tmp_path / "empty.root", "skim")
    with uproot.open(path) as handle:
        assert handle["skim"].num_entries == 0
        assert handle["skim"].keys() == ["M"]


def test_root_skim_rejects_lists(tmp_path: Path) -> None:
    jagged = pl.DataFrame({"p": [[1.0, 2.0], [3.0]]})
    with pytest.raises(OutputError, match="column 'p' of type List"):
        write_root_skim(jagged, tmp_path / "jagged.root", "skim")
    assert not list(tmp_path.iterdir())
