"""Tests of the cut-string parser in analysis.cuts.

Expected values come from hand computation, from numpy (which follows IEEE 754
like C++) and, in the property tests, from a reference evaluator written here
on numpy arrays that shares no code with the parser.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import uproot
from hypothesis import given, note, settings
from hypothesis import strategies as st

from analysis.cuts import (
    MAX_CUT_LENGTH,
    MAX_NESTING,
    MAX_TREE_DEPTH,
    Cut,
    parse_cut,
    parse_expression,
)
from analysis.errors import CutError

NAN = math.nan


def _apply(cut: str | Cut, frame: pl.DataFrame) -> list[bool]:
    parsed = parse_cut(cut, frame.columns) if isinstance(cut, str) else cut
    # with_columns broadcasts a constant cut such as "1 > 0" to every row.
    return frame.with_columns(parsed.expr().alias("pass"))["pass"].to_list()


def _evaluate(text: str, frame: pl.DataFrame) -> list[float]:
    expression, _ = parse_expression(text, frame.columns)
    return frame.with_columns(expression.alias("value"))["value"].to_list()


@pytest.fixture
def frame() -> pl.DataFrame:
    """Five candidates; row 1 has a NaN mass and row 2 a missing one."""
    return pl.DataFrame(
        {
            "M": pl.Series([1.5, NAN, None, 3.0, 2.0], dtype=pl.Float64),
            "dM": [0.05, 0.2, 0.0, -0.01, NAN],
            "daughter__bo0__cm__spp__bc": [1.0, 2.0, 3.0, 4.0, 5.0],
            "nTracks": pl.Series([2, 3, 4, 5, 6], dtype=pl.Int32),
        }
    )


# --- both syntaxes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        ("1.3 < M < 2.2", [True, False, False, False, True]),
        ("M > 1.3 && M < 2.2", [True, False, False, False, True]),
        ("M > 1.3 and M < 2.2", [True, False, False, False, True]),
        ("[M > 1.3] and [M < 2.2]", [True, False, False, False, True]),
        ("M < 1.6 || M > 2.5", [True, False, False, True, False]),
        ("M < 1.6 or M > 2.5", [True, False, False, True, False]),
        ("abs(dM) < 0.1", [True, False, True, True, False]),
        ("fabs(dM) < 0.1", [True, False, True, True, False]),
        ("TMath::Abs(dM) < 0.1", [True, False, True, True, False]),
        ("std::abs(dM) < 0.1", [True, False, True, True, False]),
        ("sqrt(nTracks) >= 2", [False, False, True, True, True]),
        ("pow(nTracks, 2) == 16", [False, False, True, False, False]),
        ("TMath::Power(nTracks, 2) == 16", [False, False, True, False, False]),
        ("daughter(0, p) > 2.5", [False, False, True, True, True]),
        ("daughter(0,p) > 2.5", [False, False, True, True, True]),
        ("daughter( 0 , p ) > 2.5", [False, False, True, True, True]),
        ("daughter__bo0__cm__spp__bc > 2.5", [False, False, True, True, True]),
        ("nTracks / 4 > 1", [False, False, False, True, True]),
        ("2 * nTracks - 1 == 5", [False, True, False, False, False]),
        ("1e1 * dM >= 5e-1", [True, True, False, False, False]),
    ],
)
def test_cut_on_small_table(
    cut: str, expected: list[bool], frame: pl.DataFrame
) -> None:
    assert _apply(cut, frame) == expected


def test_both_syntaxes_give_same_rows(frame: pl.DataFrame) -> None:
    cpp = "(M > 1.3 && M < 2.2) || !(TMath::Abs(dM) < 0.1)"
    basf2 = "1.3 < M < 2.2 or not abs(dM) < 0.1"
    assert _apply(cpp, frame) == _apply(basf2, frame)
    # Rows 0 and 4 are inside the mass window. Rows 1 and 2 (NaN and missing M)
    # are outside, and only row 1 passes the second term because |dM| = 0.2.
    assert _apply(cpp, frame) == [True, True, False, False, True]


# --- NaN and null policy ------------------------------------------------------

# C++ and IEEE 754: every ordered comparison and == with NaN is false, != is
# true. numpy implements the same rules, which this table checks first.
_NAN_RESULTS = {
    "<": False,
    "<=": False,
    ">": False,
    ">=": False,
    "==": False,
    "!=": True,
}


@pytest.mark.parametrize(("operator", "expected"), sorted(_NAN_RESULTS.items()))
def test_comparison_with_nan(operator: str, expected: bool) -> None:
    numpy_result = {
        "<": np.less,
        "<=": np.less_equal,
        ">": np.greater,
        ">=": np.greater_equal,
        "==": np.equal,
        "!=": np.not_equal,
    }[operator](np.float64(NAN), np.float64(1.0))
    assert bool(numpy_result) is expected

    table = pl.DataFrame(
        {"x": pl.Series([NAN, None, 1.0], dtype=pl.Float64), "y": [1.0, 1.0, NAN]}
    )
    # Row 0: NaN, row 1: missing value, row 2: NaN on the right-hand side.
    assert _apply(f"x {operator} 1", table)[:2] == [expected, expected]
    assert _apply(f"x {operator} y", table) == [expected] * 3
    assert _apply(f"!(x {operator} 1)", table)[:2] == [not expected] * 2
    assert _apply(f"not x {operator} 1", table)[:2] == [not expected] * 2


def test_nan_equals_nan_is_false() -> None:
    # polars calls NaN == NaN true; C++ calls it false.
    table = pl.DataFrame({"x": [NAN, 1.0]})
    assert _apply("x == x", table) == [False, True]
    assert _apply("x != x", table) == [True, False]


def test_nan_above_every_number_guarded() -> None:
    # polars orders NaN above +inf; unguarded, x > 1e308 would keep NaN.
    table = pl.DataFrame({"x": [NAN, math.inf, 1.0]})
    assert _apply("x > 1e308", table) == [False, True, False]
    assert _apply("x >= x", table) == [False, True, True]


def test_number_as_condition() -> None:
    table = pl.DataFrame({"isSignal": pl.Series([1.0, 0.0, NAN, None, -2.0])})
    assert _apply("isSignal", table) == [True, False, False, False, True]
    assert _apply("!isSignal", table) == [False, True, True, True, False]
    assert _apply("not isSignal", table) == [False, True, True, True, False]


def test_arithmetic_propagates_nan() -> None:
    table = pl.DataFrame({"x": pl.Series([NAN, None, 4.0], dtype=pl.Float64)})
    values = _evaluate("sqrt(x) + 1", table)
    assert math.isnan(values[0])
    assert math.isnan(values[1])
    assert values[2] == 3.0


def test_min_max_propagate_nan() -> None:
    table = pl.DataFrame({"a": [NAN, 1.0, 2.0], "b": [1.0, NAN, 3.0]})
    low = _evaluate("min(a, b)", table)
    high = _evaluate("TMath::Max(a, b)", table)
    assert math.isnan(low[0])
    assert math.isnan(low[1])
    assert low[2] == 2.0
    assert math.isnan(high[0])
    assert math.isnan(high[1])
    assert high[2] == 3.0


def test_division_by_zero_is_ieee() -> None:
    table = pl.DataFrame({"x": [1.0, -1.0, 0.0]})
    values = _evaluate("x / 0", table)
    assert values[0] == math.inf
    assert values[1] == -math.inf
    assert math.isnan(values[2])


# --- precedence and chaining --------------------------------------------------


def test_bang_binds_tighter_than_not() -> None:
    table = pl.DataFrame({"x": [0.0, 2.0]})
    # C++: !x > 1 is (!x) > 1, and !x is 0 or 1, so it is never true.
    assert _apply("!x > 1", table) == [False, False]
    # basf2: not x > 1 is not (x > 1).
    assert _apply("not x > 1", table) == [True, False]


def test_and_binds_tighter_than_or() -> None:
    table = pl.DataFrame({"a": [1.0, 1.0, 0.0, 0.0], "b": [1.0, 0.0, 1.0, 0.0]})
    # a or b and 0 is a or (b and 0) = a.
    assert _apply("a or b and 0", table) == [True, True, False, False]
    assert _apply("a || b && 0", table) == [True, True, False, False]
    assert _apply("[a or b] and 1", table) == [True, True, True, False]


def test_arithmetic_precedence_and_associativity() -> None:
    table = pl.DataFrame({"x": [1.0]})
    cases = {
        "2 + 3 * 4": 14.0,
        "(2 + 3) * 4": 20.0,
        "[2 + 3] * 4": 20.0,
        "10 - 4 - 3": 3.0,
        "24 / 4 / 2": 3.0,
        "-2 * -3": 6.0,
        "-x - -x": 0.0,
        "2 * (x > 0) + 1": 3.0,
        "TMath::Pi()": math.pi,
    }
    for text, expected in cases.items():
        assert _evaluate(text, table) == [expected], text


def test_chained_comparison_is_conjunction() -> None:
    table = pl.DataFrame({"a": [1.0, 3.0, 2.0], "b": [2.0, 2.0, 2.0]})
    assert _apply("a < b < 3", table) == _apply("a < b and b < 3", table)
    assert _apply("a < b < 3", table) == [True, False, False]
    assert _apply("0 < a <= b != 5", table) == [True, False, True]


def test_integer_and_boolean_branches_as_double() -> None:
    table = pl.DataFrame(
        {"__event__": pl.Series([3, 4], dtype=pl.Int32), "flag": [True, False]}
    )
    assert _evaluate("__event__ / 2", table) == [1.5, 2.0]
    assert _apply("flag", table) == [True, False]
    assert _apply("flag == 1 && __event__ > 2", table) == [True, False]


# --- math functions against numpy ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "reference"),
    [
        ("exp(x)", np.exp),
        ("TMath::Exp(x)", np.exp),
        ("log(x)", np.log),
        ("log10(x)", np.log10),
        ("sin(x)", np.sin),
        ("cos(x)", np.cos),
        ("tan(x)", np.tan),
        ("asin(x)", np.arcsin),
        ("acos(x)", np.arccos),
        ("atan(x)", np.arctan),
        ("sinh(x)", np.sinh),
        ("cosh(x)", np.cosh),
        ("tanh(x)", np.tanh),
        ("floor(x)", np.floor),
        ("ceil(x)", np.ceil),
        ("atan2(x, 0.5)", lambda x: np.arctan2(x, 0.5)),
        ("max(x, 0.25, -x)", lambda x: np.maximum(np.maximum(x, 0.25), -x)),
    ],
)
def test_function_matches_numpy(text: str, reference: Callable[[Any], Any]) -> None:
    values = np.array([-2.5, -1.0, -0.3, 0.0, 0.3, 0.999, 1.0, 2.5, 40.0])
    table = pl.DataFrame({"x": values})
    with np.errstate(all="ignore"):
        expected = reference(values)
    # polars and numpy may use different libm implementations, so a relative
    # tolerance of 1e-12 allows a few ulp of difference.
    np.testing.assert_allclose(
        np.array(_evaluate(text, table)), expected, rtol=1e-12, equal_nan=True
    )


# --- basf2 variable names -----------------------------------------------------


def test_cut_variables_are_branch_names(frame: pl.DataFrame) -> None:
    cut = parse_cut("daughter(0, p) > 1 and abs(dM) < 0.1 and M", frame.columns)
    assert cut.variables == frozenset({"daughter__bo0__cm__spp__bc", "dM", "M"})


def test_variables_without_available_branches() -> None:
    cut = parse_cut("extraInfo(BDT) > 0.5 && daughter(0,p) > 1 && __weight__ > 0")
    assert cut.variables == frozenset(
        {"extraInfo__boBDT__bc", "daughter__bo0__cm__spp__bc", "__weight__"}
    )


def test_branch_written_without_space() -> None:
    # A steering file that wrote daughter(0,p) produces daughter__bo0__cmp__bc.
    table = pl.DataFrame({"daughter__bo0__cmp__bc": [1.0, 3.0]})
    cut = parse_cut("daughter(0, p) > 2", table.columns)
    assert cut.variables == frozenset({"daughter__bo0__cmp__bc"})
    assert _apply(cut, table) == [False, True]


def test_stored_function_branch_preferred() -> None:
    # basf2 has an abs(x) metavariable; its branch is read when dM is absent.
    table = pl.DataFrame({"abs__bodM__bc": [0.05, 0.5]})
    cut = parse_cut("abs(dM) < 0.1", table.columns)
    assert cut.variables == frozenset({"abs__bodM__bc"})
    assert _apply(cut, table) == [True, False]


def test_nested_metavariable() -> None:
    table = pl.DataFrame({"daughter__bo1__cm__spdaughter__bo0__cm__spM__bc__bc": [0.5]})
    cut = parse_cut("daughter(1,daughter(0,M)) < 1", table.columns)
    assert _apply(cut, table) == [True]


# --- error messages -----------------------------------------------------------


def test_unknown_variable_position_and_hint(frame: pl.DataFrame) -> None:
    with pytest.raises(CutError) as caught:
        parse_cut("M > 1.3 and dMM < 0.1", frame.columns)
    message = str(caught.value)
    lines = message.splitlines()
    assert "unknown variable 'dMM'" in lines[0]
    assert "column 13" in lines[0]
    assert lines[1] == "    M > 1.3 and dMM < 0.1"
    assert lines[2] == "    " + " " * 12 + "^^^"
    assert "Did you mean: 'dM'" in lines[3]


def test_unknown_metavariable_suggests_variable_names(frame: pl.DataFrame) -> None:
    with pytest.raises(CutError) as caught:
        parse_cut("daughter(0, q) > 1", frame.columns)
    message = str(caught.value)
    assert "branch 'daughter__bo0__cm__spq__bc'" in message
    assert "'daughter(0, p)'" in message
    assert message.splitlines()[2] == "    " + "^" * len("daughter(0, q)")


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("M > ", 5, "found end of the cut"),
        ("M > 1 &", 7, "single '&'"),
        ("M > 1 | M < 0", 7, "single '|'"),
        ("M = 1", 3, "write '=='"),
        ("M ^ 2 > 1", 3, "pow(x, y)"),
        ("M ** 2 > 1", 3, "pow(x, y)"),
        ("M % 2 > 1", 3, "modulo"),
        ("(M > 1", 7, "expected ')'"),
        ("[M > 1)", 7, "expected ']'"),
        ("M > 1)", 6, "unexpected ')'"),
        ("M M", 3, "unexpected 'M'"),
        ("pow(M) > 1", 1, "takes 2 argument(s), found 1"),
        ("min(M) > 1", 1, "at least 2"),
        ("1.5.2 > M", 1, "invalid number"),
        ("2M > 1", 1, "invalid number"),
        ("M > 1 ; M < 2", 7, "invalid character ';'"),
        ("M > 1 and", 10, "found end of the cut"),
        ("TMath::Foo(M) > 1", 1, "unknown function 'TMath::Foo'"),
        ("TMath::Abs > 1", 1, "function call"),
        ("M \u2264 1", 3, "plain ASCII"),
        ("", None, "empty"),
        ("   ", None, "empty"),
    ],
)
def test_syntax_error_column(text: str, column: int | None, words: str) -> None:
    with pytest.raises(CutError) as caught:
        parse_cut(text)
    message = str(caught.value)
    assert words in message
    if column is not None:
        assert f"at column {column} of the cut" in message
        caret_line = message.splitlines()[2]
        assert caret_line.index("^") == 4 + column - 1


def test_error_window_on_long_cut() -> None:
    text = " and ".join(f"x{i} > {i}" for i in range(200)) + " and 1 +"
    with pytest.raises(CutError) as caught:
        parse_cut(text)
    quoted, carets = str(caught.value).splitlines()[1:3]
    assert quoted.startswith("    ...")
    assert len(quoted) < 200
    assert quoted.endswith("and 1 +")
    assert carets.index("^") == len(quoted)  # one past the final '+'


# --- hostile input ------------------------------------------------------------

_HOSTILE = [
    "__import__('os').system('touch {sentinel}')",
    "__import__(os)",
    "open('{sentinel}', 'w')",
    "eval(M)",
    "exec(M)",
    "getattr(M, x)",
    "compile(M)",
    "M.__class__",
    "(M).real > 1",
    "M.__class__.__bases__[0].__subclasses__()",
    "M[0] > 1",
    "M[0:1]",
    "lambda: 1",
    "lambda x: x > 1",
    "[x for x in M]",
    "{{M for M in M}}",
    "f'{{M}}' > 1",
    "f\"{{__import__('os')}}\"",
    "b'\\x00'",
    "M if M else M",
    "M; import os",
    "__builtins__ > 1",
    "__class__",
    "@decorator",
    "M `ls`",
    "$(ls) > 1",
    "M > 1 # comment",
    "M > 1\x00",
    "daughter(0, p'; rm -rf /')",
]


@pytest.mark.parametrize("template", _HOSTILE)
def test_hostile_cut_rejected_without_running(
    template: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = tmp_path / "ran"
    text = template.format(sentinel=sentinel)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cut parser called a Python code runner")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    monkeypatch.setattr(ast, "parse", forbidden)

    with pytest.raises(CutError):
        parse_cut(text)
    with pytest.raises(CutError):
        parse_cut(text, ["M", "x"])
    assert not sentinel.exists()


def test_valid_cut_needs_no_code_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cut parser called a Python code runner")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    monkeypatch.setattr(ast, "parse", forbidden)
    cut = parse_cut("1.3 < M < 2.2 && !(TMath::Abs(dM) > 0.1) or extraInfo(BDT) > 0.5")
    assert cut.variables == frozenset({"M", "dM", "extraInfo__boBDT__bc"})


def test_too_long_cut_rejected() -> None:
    text = "M > 1 and " * (MAX_CUT_LENGTH // 10) + "M > 1"
    assert len(text) > MAX_CUT_LENGTH
    with pytest.raises(CutError, match="characters long"):
        parse_cut(text)


def test_long_cut_within_limit_accepted() -> None:
    # Several hundred conditions joined by 'and' form a flat node, not a chain.
    terms = [f"x > {i}" for i in range(800)]
    text = " and ".join(terms)
    assert len(text) <= MAX_CUT_LENGTH
    table = pl.DataFrame({"x": [500.0, 1000.0]})
    assert _apply(text, table) == [False, True]


@pytest.mark.parametrize(
    "text",
    [
        "(" * (MAX_NESTING + 1) + "M" + ")" * (MAX_NESTING + 1),
        "[" * (MAX_NESTING + 1) + "M" + "]" * (MAX_NESTING + 1),
        "(" * 5000,
        "-" * (MAX_NESTING + 1) + "M",
        "!" * (MAX_NESTING + 1) + "M",
        "not " * (MAX_NESTING + 1) + "M",
        "abs(" * (MAX_NESTING + 1) + "M" + ")" * (MAX_NESTING + 1),
    ],
)
def test_deep_nesting_rejected(text: str) -> None:
    with pytest.raises(CutError, match=f"nested more than {MAX_NESTING} deep"):
        parse_cut(text)


def test_nesting_at_limit_accepted() -> None:
    text = "(" * MAX_NESTING + "M > 1" + ")" * MAX_NESTING
    assert _apply(text, pl.DataFrame({"M": [2.0]})) == [True]


def test_deep_arithmetic_chain_rejected() -> None:
    text = " + ".join(["M"] * (MAX_TREE_DEPTH + 1)) + " > 1"
    with pytest.raises(CutError, match="levels deep"):
        parse_cut(text)


def test_non_string_rejected() -> None:
    with pytest.raises(CutError, match="must be a string"):
        parse_cut(1.5)  # type: ignore[arg-type]


# --- interface ----------------------------------------------------------------


def test_cut_is_immutable() -> None:
    cut = parse_cut("M > 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cut.text = "M > 2"  # type: ignore[misc]
    assert cut == parse_cut("M > 1")
    assert hash(cut) == hash(parse_cut("M > 1"))
    assert cut != parse_cut("M > 2")


def test_parse_expression_numeric(frame: pl.DataFrame) -> None:
    expression, variables = parse_expression("abs(dM) * 2", frame.columns)
    assert variables == frozenset({"dM"})
    values = frame.select(expression.alias("v"))["v"].to_list()
    assert values[:4] == [0.1, 0.4, 0.0, 0.02]
    assert math.isnan(values[4])


@pytest.mark.parametrize("text", ["abs(dM) < 0.1", "M and dM", "!M", "not M"])
def test_parse_expression_rejects_condition(text: str) -> None:
    with pytest.raises(CutError, match="numeric expression"):
        parse_expression(text)


def test_empty_available_rejects_every_variable() -> None:
    with pytest.raises(CutError, match="unknown variable 'M'"):
        parse_cut("M > 1", [])


# --- property tests against a reference evaluator -----------------------------

_GRID = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, NAN, math.inf, -math.inf]
_CONSTANTS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 10.0, 0.001]
# Each branch and the spellings a user may write for it.
_SPELLINGS = {
    "x": ["x"],
    "y": ["y"],
    "daughter__bo0__cm__spp__bc": [
        "daughter(0, p)",
        "daughter(0,p)",
        "daughter__bo0__cm__spp__bc",
    ],
}
_FUNCTION_SPELLINGS = {
    "abs": ["abs", "fabs", "TMath::Abs", "std::abs"],
    "sqrt": ["sqrt", "TMath::Sqrt"],
    "exp": ["exp", "TMath::Exp"],
    "log": ["log", "TMath::Log"],
    "sin": ["sin", "TMath::Sin"],
    "floor": ["floor", "TMath::Floor"],
    "pow": ["pow", "TMath::Power", "std::pow"],
    "min": ["min", "TMath::Min", "std::min"],
    "max": ["max", "TMath::Max"],
    "atan2": ["atan2", "TMath::ATan2"],
}
_ARITY = {"pow": 2, "min": 2, "max": 2, "atan2": 2}
_COMPARISON_OPERATORS = ["<", "<=", ">", ">=", "==", "!="]
_BOOLEAN_KINDS = {"compare", "logic", "not"}

# Precedence levels of the rendered text, loosest first.
_OR, _AND, _NOT, _COMPARE, _ADD, _MULTIPLY, _UNARY, _ATOM = range(1, 9)

Tree = tuple[Any, ...]


@st.composite
def _numeric_trees(draw: st.DrawFn, depth: int) -> Tree:
    leaves = ["number", "variable", "variable"]
    kinds = (
        leaves
        if depth == 0
        else [*leaves, "negate", "arith", "arith", "call", "to_number"]
    )
    kind = draw(st.sampled_from(kinds))
    if kind == "number":
        return ("number", draw(st.sampled_from(_CONSTANTS)))
    if kind == "variable":
        return ("variable", draw(st.sampled_from(sorted(_SPELLINGS))))
    if kind == "negate":
        return ("negate", draw(_numeric_trees(depth - 1)))
    if kind == "arith":
        operator = draw(st.sampled_from("+-*/"))
        return (
            "arith",
            operator,
            draw(_numeric_trees(depth - 1)),
            draw(_numeric_trees(depth - 1)),
        )
    if kind == "call":
        function = draw(st.sampled_from(sorted(_FUNCTION_SPELLINGS)))
        count = _ARITY.get(function, 1)
        arguments = tuple(draw(_numeric_trees(depth - 1)) for _ in range(count))
        return ("call", function, arguments)
    return ("to_number", draw(_boolean_trees(depth - 1)))


@st.composite
def _boolean_trees(draw: st.DrawFn, depth: int) -> Tree:
    kinds = (
        ["compare"] if depth == 0 else ["compare", "compare", "logic", "not", "truth"]
    )
    kind = draw(st.sampled_from(kinds))
    below = max(depth - 1, 0)
    if kind == "compare":
        operators = tuple(
            draw(
                st.lists(st.sampled_from(_COMPARISON_OPERATORS), min_size=1, max_size=2)
            )
        )
        operands = tuple(draw(_numeric_trees(below)) for _ in range(len(operators) + 1))
        return ("compare", operators, operands)
    if kind == "logic":
        operator = draw(st.sampled_from(["and", "or"]))
        count = draw(st.integers(2, 3))
        return (
            "logic",
            operator,
            tuple(draw(_boolean_trees(below)) for _ in range(count)),
        )
    if kind == "not":
        operand = draw(st.one_of(_boolean_trees(below), _numeric_trees(below)))
        return ("not", operand)
    return draw(_numeric_trees(below))  # a number used as a condition


def _render(tree: Tree, syntax: str, draw: st.DrawFn) -> tuple[str, int]:
    """Write ``tree`` as cut text with the fewest brackets; return text and level."""

    def group(text: str) -> str:
        if syntax == "basf2" and draw(st.booleans()):
            return f"[{text}]"
        return f"({text})"

    def operand(child: Tree, lowest: int) -> str:
        text, level = _render(child, syntax, draw)
        return group(text) if level < lowest or draw(st.integers(0, 9)) == 0 else text

    space = " " if syntax == "basf2" or draw(st.booleans()) else ""
    kind = tree[0]
    if kind == "number":
        value = tree[1]
        return (draw(st.sampled_from([repr(value), f"{value:.3e}"])), _ATOM)
    if kind == "variable":
        return (draw(st.sampled_from(_SPELLINGS[tree[1]])), _ATOM)
    if kind == "negate":
        return ("-" + operand(tree[1], _UNARY), _UNARY)
    if kind == "arith":
        level = _ADD if tree[1] in "+-" else _MULTIPLY
        left = operand(tree[2], level)
        right = operand(tree[3], level + 1)  # left-associative
        return (f"{left}{space}{tree[1]}{space}{right}", level)
    if kind == "call":
        name = draw(st.sampled_from(_FUNCTION_SPELLINGS[tree[1]]))
        arguments = ", ".join(_render(a, syntax, draw)[0] for a in tree[2])
        return (f"{name}({arguments})", _ATOM)
    if kind == "to_number":
        return (group(_render(tree[1], syntax, draw)[0]), _ATOM)
    if kind == "compare":
        # An operand that is itself a comparison needs brackets, or it chains.
        pieces = [operand(tree[2][0], _COMPARE + 1)]
        for operator, child in zip(tree[1], tree[2][1:], strict=True):
            pieces += [operator, operand(child, _COMPARE + 1)]
        return (space.join(pieces), _COMPARE)
    if kind == "logic":
        level = _AND if tree[1] == "and" else _OR
        word = tree[1] if syntax == "basf2" else {"and": "&&", "or": "||"}[tree[1]]
        parts = [operand(child, level) for child in tree[2]]
        return (f" {word} ".join(parts), level)
    # kind == "not"
    if syntax == "basf2":
        return ("not " + operand(tree[1], _NOT), _NOT)
    return ("!" + operand(tree[1], _UNARY), _UNARY)


def _near(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Values within a few ulp but not equal: polars and numpy may order them
    # differently because their libm calls can differ in the last bit.
    with np.errstate(all="ignore"):
        finite = np.isfinite(a) & np.isfinite(b)
        return finite & (a != b) & np.isclose(a, b, rtol=1e-9, atol=1e-12)


def _reference_number(
    tree: Tree, data: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate a numeric tree with numpy; return values and unreliable rows."""
    size = len(data["x"])
    kind = tree[0]
    if kind == "number":
        return np.full(size, tree[1]), np.zeros(size, bool)
    if kind == "variable":
        return data[tree[1]], np.zeros(size, bool)
    if kind == "to_number" and tree[1][0] not in _BOOLEAN_KINDS:
        return _reference_number(tree[1], data)
    if kind == "to_number":
        truth, unsure = _reference_truth(tree[1], data)
        return truth.astype(float), unsure
    if kind == "negate":
        value, unsure = _reference_number(tree[1], data)
        return -value, unsure

    with np.errstate(all="ignore"):
        if kind == "arith":
            (a, unsure_a), (b, unsure_b) = (
                _reference_number(t, data) for t in tree[2:]
            )
            operation = {
                "+": np.add,
                "-": np.subtract,
                "*": np.multiply,
                "/": np.divide,
            }
            return operation[tree[1]](a, b), unsure_a | unsure_b

        results = [_reference_number(t, data) for t in tree[2]]
        values = [value for value, _ in results]
        unsure = np.logical_or.reduce([flag for _, flag in results])
        functions = {
            "abs": np.abs,
            "sqrt": np.sqrt,
            "exp": np.exp,
            "log": np.log,
            "sin": np.sin,
            "floor": np.floor,
            "pow": np.power,
            "min": np.minimum,
            "max": np.maximum,
            "atan2": np.arctan2,
        }
        result = functions[tree[1]](*values)
        if tree[1] == "floor":
            unsure = unsure | _near(values[0], np.round(values[0]))
        return result, unsure


def _reference_truth(
    tree: Tree, data: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate a condition with numpy; return truth and unreliable rows."""
    kind = tree[0]
    if kind not in _BOOLEAN_KINDS:
        value, unsure = _reference_number(tree, data)
        unsure = unsure | _near(value, np.zeros_like(value))
        return (value != 0) & ~np.isnan(value), unsure
    if kind == "not":
        truth, unsure = _reference_truth(tree[1], data)
        return ~truth, unsure
    if kind == "logic":
        results = [_reference_truth(t, data) for t in tree[2]]
        combine = np.logical_and if tree[1] == "and" else np.logical_or
        truth = combine.reduce([t for t, _ in results])
        return truth, np.logical_or.reduce([u for _, u in results])

    values = [_reference_number(t, data) for t in tree[2]]
    compare = {
        "<": np.less,
        "<=": np.less_equal,
        ">": np.greater,
        ">=": np.greater_equal,
        "==": np.equal,
        "!=": np.not_equal,
    }
    truth = np.ones(len(data["x"]), bool)
    unsure = np.logical_or.reduce([u for _, u in values])
    for index, operator in enumerate(tree[1]):
        left, right = values[index][0], values[index + 1][0]
        with np.errstate(all="ignore"):
            truth &= compare[operator](left, right)
        unsure |= _near(left, right)
    return truth, unsure


@st.composite
def _tables(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], pl.DataFrame]:
    """Random rows on a grid with NaN, infinities and missing values."""
    size = draw(st.integers(1, 12))
    data: dict[str, np.ndarray] = {}
    columns: dict[str, pl.Series] = {}
    for branch in _SPELLINGS:
        values = draw(st.lists(st.sampled_from(_GRID), min_size=size, max_size=size))
        missing = draw(st.lists(st.booleans(), min_size=size, max_size=size))
        data[branch] = np.array(
            [NAN if m else v for v, m in zip(values, missing, strict=True)]
        )
        columns[branch] = pl.Series(
            branch,
            [None if m else v for v, m in zip(values, missing, strict=True)],
            dtype=pl.Float64,
        )
    return data, pl.DataFrame(columns)


@st.composite
def _cut_cases(draw: st.DrawFn) -> tuple[Tree, str]:
    tree = draw(_boolean_trees(draw(st.integers(0, 3))))
    syntax = draw(st.sampled_from(["cpp", "basf2"]))
    return tree, _render(tree, syntax, draw)[0]


@st.composite
def _expression_cases(draw: st.DrawFn) -> tuple[Tree, str]:
    # A condition at the top would be a cut, which parse_expression rejects.
    tree = draw(
        _numeric_trees(draw(st.integers(0, 3))).filter(lambda t: t[0] != "to_number")
    )
    syntax = draw(st.sampled_from(["cpp", "basf2"]))
    return tree, _render(tree, syntax, draw)[0]


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(case=_cut_cases(), table=_tables())
def test_random_cut_matches_reference(
    case: tuple[Tree, str], table: tuple[dict[str, np.ndarray], pl.DataFrame]
) -> None:
    tree, text = case
    data, frame = table
    note(f"cut: {text}")
    expected, unsure = _reference_truth(tree, data)
    got = np.array(_apply(text, frame), dtype=bool)
    np.testing.assert_array_equal(got[~unsure], expected[~unsure], err_msg=text)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(case=_expression_cases(), table=_tables())
def test_random_expression_matches_reference(
    case: tuple[Tree, str], table: tuple[dict[str, np.ndarray], pl.DataFrame]
) -> None:
    tree, text = case
    data, frame = table
    note(f"expression: {text}")
    expected, unsure = _reference_number(tree, data)
    got = np.array(_evaluate(text, frame), dtype=float)
    # Basic operations are exact in both; libm functions may differ by an ulp,
    # which a relative tolerance of 1e-9 covers even after a few operations.
    np.testing.assert_allclose(
        got[~unsure],
        expected[~unsure],
        rtol=1e-9,
        atol=1e-12,
        equal_nan=True,
        err_msg=text,
    )


# --- real Belle II ntuples ----------------------------------------------------


def _read(path: Path, tree: str) -> pl.DataFrame:
    with uproot.open(path) as file:
        arrays = file[tree].arrays(library="np")
    return pl.DataFrame(arrays)


def test_real_nan_is_signal(shared_data: Path) -> None:
    table = _read(shared_data / "belle2" / "FEI_B_charged_hadronic_0.root", "tree")
    is_signal = table["isSignal"].to_numpy()
    nan_rows = int(np.isnan(is_signal).sum())
    assert nan_rows == 7844  # the NaN rows are what this test is about

    passed = sum(_apply("isSignal == 1", table))
    failed = sum(_apply("!(isSignal == 1)", table))
    assert passed == int((is_signal == 1).sum())
    assert passed + failed == table.height
    assert sum(_apply("isSignal != 1", table)) == int((is_signal != 1).sum())
    assert sum(_apply("isSignal", table)) == int(
        ((is_signal != 0) & ~np.isnan(is_signal)).sum()
    )


def test_real_cut_matches_numpy(shared_data: Path) -> None:
    table = _read(shared_data / "belle2" / "FEI_B_charged_hadronic_0.root", "tree")
    mbc, delta_e = table["Mbc"].to_numpy(), table["deltaE"].to_numpy()
    expected = int(((mbc > 5.27) & (np.abs(delta_e) < 0.1)).sum())
    assert expected > 0
    for text in (
        "Mbc > 5.27 && TMath::Abs(deltaE) < 0.1",
        "5.27 < Mbc and -0.1 < deltaE < 0.1",
    ):
        assert sum(_apply(text, table)) == expected, text


def test_real_metavariable_branch(shared_data: Path) -> None:
    path = shared_data / "belle2" / "B2A202-LoadReconstructedParticles.root"
    table = _read(path, "pi0")
    cut = parse_cut("extraInfo(BDT) > 0.5 and decayAngle(0) < 0.9", table.columns)
    assert cut.variables == frozenset({"extraInfo__boBDT__bc", "decayAngle__bo0__bc"})
    bdt = table["extraInfo__boBDT__bc"].to_numpy()
    angle = table["decayAngle__bo0__bc"].to_numpy()
    assert sum(_apply(cut, table)) == int(((bdt > 0.5) & (angle < 0.9)).sum())
