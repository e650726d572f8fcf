"""Reading flat ntuples: real files written by others, and every broken input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from analysis.errors import InputFileError, MissingBranchError
from analysis.generate import generate_sample, write_ntuple
from analysis.ntuple import iterate_tree, read_tree, tree_branches

BELLE2_TREES = [
    ("Bd2JpsiKS.root", "tree", 67082),
    ("ContinuumSuppression.root", "tree", 5209),
    ("FEI_B_charged_hadronic_0.root", "tree", 61309),
    ("Upsilon4S.root", "variables", 833),
    ("B2A202-LoadReconstructedParticles.root", "kshort", 3),
    ("B2A202-LoadReconstructedParticles.root", "pi0", 18),
    ("B2A202-LoadReconstructedParticles.root", "phot", 309),
    ("B2A202-LoadReconstructedParticles.root", "muon", 465),
    ("B2A202-LoadReconstructedParticles.root", "elec", 465),
    ("B2A202-LoadReconstructedParticles.root", "kaon", 465),
    ("B2A202-LoadReconstructedParticles.root", "pion", 465),
]


@pytest.mark.parametrize(("name", "tree", "entries"), BELLE2_TREES)
def test_every_belle2_tree_loads(
    shared_data: Path, name: str, tree: str, entries: int
) -> None:
    path = shared_data / "belle2" / name
    branches = tree_branches(path, tree)
    table = read_tree(path, tree, branches)
    # Entry counts from the data folder's README, written by ROOT.
    assert table.height == entries
    assert "__event__" in table.columns


def test_basf2_types_and_nan_survive(shared_data: Path) -> None:
    path = shared_data / "belle2" / "FEI_B_charged_hadronic_0.root"
    table = read_tree(path, "tree", ["__event__", "__weight__", "isSignal"])
    assert str(table["__event__"].dtype) == "Int32"
    # The data README counts 7844 NaN isSignal in this file.
    assert int(np.isnan(table["isSignal"].to_numpy()).sum()) == 7844


def test_unclosed_file_fails_clearly(shared_data: Path) -> None:
    path = shared_data / "belle2" / "load_recon.root"
    with pytest.raises(InputFileError, match=r"contains no objects.*crashed"):
        read_tree(path, None, ["x"])


def test_zero_entry_tree_gives_zero_rows(shared_data: Path) -> None:
    path = shared_data / "uproot-testdata" / "uproot-issue335.root"
    table = read_tree(path, "empty_tree", ["var"])
    assert table.height == 0
    assert table.columns == ["var"]


def test_jagged_branches_are_named(shared_data: Path) -> None:
    path = shared_data / "uproot-testdata" / "uproot-HZZ.root"
    with pytest.raises(
        InputFileError, match=r"not a flat ntuple.*Jet_Px \(float\[\]\)"
    ):
        read_tree(path, "events", ["NJet", "Jet_Px"])


def test_flat_branches_of_event_tree_read(shared_data: Path) -> None:
    path = shared_data / "uproot-testdata" / "uproot-HZZ.root"
    assert read_tree(path, "events", ["NJet"]).height == 2421


def test_highest_cycle_is_read_and_logged(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = shared_data / "uproot-testdata" / "uproot-issue31.root"
    with caplog.at_level(logging.INFO, logger="analysis.ntuple"):
        tree_branches(path, "T")
    assert "cycles 1, 2" in caplog.text


def test_missing_tree_lists_trees(shared_data: Path) -> None:
    path = shared_data / "belle2" / "B2A202-LoadReconstructedParticles.root"
    with pytest.raises(InputFileError, match=r"'muons' not found.*Trees in this file:"):
        read_tree(path, "muons", ["M"])


def test_missing_branch_lists_nearest(shared_data: Path) -> None:
    path = shared_data / "belle2" / "Bd2JpsiKS.root"
    with pytest.raises(MissingBranchError, match=r"'Mbcc' not found.*'Mbc'"):
        read_tree(path, "tree", ["Mbcc"])


def test_compressions_read_alike(shared_data: Path) -> None:
    folder = shared_data / "uproot-testdata"
    reference = read_tree(folder / "uproot-Zmumu.root", "events", ["E1"])
    for suffix in ("lz4", "zstd", "lzma"):
        other = read_tree(folder / f"uproot-Zmumu-{suffix}.root", "events", ["E1"])
        assert other.equals(reference)


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        read_tree(tmp_path / "absent.root", None, ["x"])
    with pytest.raises(InputFileError, match="is a directory"):
        read_tree(tmp_path, None, ["x"])


def test_not_root_file(tmp_path: Path) -> None:
    path = tmp_path / "text.root"
    path.write_text("this is not ROOT\n" * 100)
    with pytest.raises(InputFileError, match=r"cannot read .* as a ROOT file"):
        read_tree(path, None, ["x"])


def test_truncated_file(tmp_path: Path) -> None:
    columns = generate_sample("signal", 20_000, seed=1)
    full = write_ntuple(tmp_path / "full.root", columns)
    cut = tmp_path / "cut.root"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match=r"cut\.root"):
        read_tree(cut, "tau3mu", ["M"])


def test_chunks_cover_every_entry(tmp_path: Path) -> None:
    columns = generate_sample("signal", 20_000, seed=2)
    path = write_ntuple(tmp_path / "s.root", columns, chunk_rows=1000)
    chunks = list(iterate_tree(path, "tau3mu", ["M"], step_size=3000))
    assert len(chunks) > 1
    joined = np.concatenate([c["M"].to_numpy() for c in chunks])
    np.testing.assert_array_equal(joined, columns["M"])
