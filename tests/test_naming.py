"""Tests of the basf2 variable-name escaping in analysis.naming."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import uproot
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from analysis.naming import (
    BOOKKEEPING_BRANCHES,
    ESCAPES,
    find_branch,
    normalize_variable_name,
    to_branch_name,
    to_variable_name,
)

# The escapes of the characters found in common basf2 variable names, typed in
# here independently of analysis.naming.ESCAPES.
DOCUMENTED_ESCAPES = {
    "(": "__bo",
    ",": "__cm",
    " ": "__sp",
    ")": "__bc",
    ".": "__pt",
    "-": "__mi",
    "+": "__pl",
    ":": "__cl",
    "*": "__mu",
    "/": "__sl",
    "[": "__so",
    "]": "__sc",
    "=": "__eq",
    "<": "__st",
    ">": "__gt",
}


@pytest.mark.parametrize(("char", "code"), sorted(DOCUMENTED_ESCAPES.items()))
def test_escape_table_single_character(char: str, code: str) -> None:
    assert to_branch_name(f"a{char}b") == f"a{code}b"
    assert to_variable_name(f"a{code}b") == f"a{char}b"


@pytest.mark.parametrize(
    ("variable", "branch"),
    [
        ("daughter(0, p)", "daughter__bo0__cm__spp__bc"),
        ("extraInfo(BDT)", "extraInfo__boBDT__bc"),
        ("decayAngle(0)", "decayAngle__bo0__bc"),
        ("useCMSFrame(p)", "useCMSFrame__bop__bc"),
        (
            "daughter(1, daughter(0, M))",
            "daughter__bo1__cm__spdaughter__bo0__cm__spM__bc__bc",
        ),
        ("varFor(-11, p)", "varFor__bo__mi11__cm__spp__bc"),
        ("isInRestOfEvent(B0:sig)", "isInRestOfEvent__boB0__clsig__bc"),
        ("formula(p*2/E+1.5)", "formula__bop__mu2__slE__pl1__pt5__bc"),
        ("passesCut(M >= 1.3)", "passesCut__boM__sp__gt__eq__sp1__pt3__bc"),
        ("Mbc", "Mbc"),
        ("__experiment__", "__experiment__"),
    ],
)
def test_variable_and_branch_both_ways(variable: str, branch: str) -> None:
    assert to_branch_name(variable) == branch
    assert to_variable_name(branch) == variable


@pytest.mark.parametrize("branch", sorted(BOOKKEEPING_BRANCHES))
def test_bookkeeping_branches_unchanged(branch: str) -> None:
    assert to_branch_name(branch) == branch
    assert to_variable_name(branch) == branch


def test_production_not_decoded_as_percent() -> None:
    # "__pr" is basf2's code for "%", which must not hit the bookkeeping name.
    assert to_variable_name("__production__") == "__production__"
    assert to_variable_name("a__prb") == "a%b"


def test_minus_is_mi_never_da() -> None:
    assert to_branch_name("-") == "__mi"
    assert to_variable_name("x__day") == "x__day"


def test_branch_name_is_fixed_point() -> None:
    branch = "daughter__bo0__cm__spp__bc"
    assert to_branch_name(branch) == branch


def test_deleted_characters_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="analysis.naming"):
        branch = to_branch_name("M\u00b2")
    assert branch == "M"
    assert "deletes" in caplog.text


_VARIABLE_ALPHABET = st.sampled_from(sorted(set(ESCAPES) | set("abcXYZ019_")))


@settings(max_examples=300, derandomize=True, database=None)
@given(st.lists(_VARIABLE_ALPHABET, min_size=1, max_size=30).map("".join))
def test_round_trip_from_variable(variable: str) -> None:
    # A variable that already contains "__" is ambiguous for basf2 too: it
    # warns and decodes such names differently.
    assume("__" not in variable and variable not in BOOKKEEPING_BRANCHES)
    branch = to_branch_name(variable)
    assert set(branch) <= set("abcdefghijklmnopqrstuvwxyzXYZ0123456789_")
    assert to_variable_name(branch) == variable


@pytest.mark.parametrize(
    ("spelled", "normalized"),
    [
        ("daughter(0,p)", "daughter(0, p)"),
        ("daughter( 0 ,  p )", "daughter(0, p)"),
        ("daughter (0, p)", "daughter(0, p)"),
        ("daughter(1,daughter(0,p))", "daughter(1, daughter(0, p))"),
        ("formula(a  +  b)", "formula(a + b)"),
        ("  Mbc  ", "Mbc"),
    ],
)
def test_normalize_variable_name(spelled: str, normalized: str) -> None:
    assert normalize_variable_name(spelled) == normalized


def test_find_branch_exact_and_spacing() -> None:
    available = {"Mbc", "daughter__bo0__cmp__bc", "extraInfo__boBDT__bc"}
    assert find_branch("Mbc", available) == "Mbc"
    assert find_branch("extraInfo(BDT)", available) == "extraInfo__boBDT__bc"
    # The steering file wrote daughter(0,p) without a space.
    assert find_branch("daughter(0, p)", available) == "daughter__bo0__cmp__bc"
    assert find_branch("daughter(1, p)", available) is None
    assert find_branch("mbc", available) is None


def _belle2_branches(folder: Path) -> list[str]:
    branches: list[str] = []
    for path in sorted(folder.glob("*.root")):
        with uproot.open(path) as file:
            for key, classname in file.classnames().items():
                if classname == "TTree":
                    branches.extend(file[key].keys())
    return sorted(set(branches))


def test_round_trip_on_real_branches(shared_data: Path) -> None:
    branches = _belle2_branches(shared_data / "belle2")
    assert len(branches) > 200
    for branch in branches:
        assert to_branch_name(to_variable_name(branch)) == branch


def test_real_metavariable_branches(shared_data: Path) -> None:
    branches = set(_belle2_branches(shared_data / "belle2"))
    assert {"extraInfo__boBDT__bc", "decayAngle__bo0__bc"} <= branches
    assert to_variable_name("extraInfo__boBDT__bc") == "extraInfo(BDT)"
    assert to_variable_name("decayAngle__bo0__bc") == "decayAngle(0)"
    assert find_branch("extraInfo(BDT)", branches) == "extraInfo__boBDT__bc"
    for branch in BOOKKEEPING_BRANCHES & branches:
        assert to_variable_name(branch) == branch
