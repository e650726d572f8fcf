"""Parse cut strings in C++/ROOT or basf2 syntax into polars expressions.

A cut such as ``1.3 < M < 2.2 and abs(dM) < 0.1`` or
``Mbc > 5.27 && !(isSignal == 0)`` is read by a hand-written tokenizer and
recursive-descent parser into a small syntax tree, which is then translated to
a polars expression. The user's text is never handed to ``eval``, ``exec``,
``compile`` or ``ast``, so a cut string cannot run code.

Semantics (docs/cuts.md has the grammar and examples):

* All arithmetic is in float64, as basf2 and ROOT evaluate cuts. Integer and
  boolean branches are cast, so ``__event__ / 2`` is a true division.
* NaN policy: ``<``, ``<=``, ``>``, ``>=`` and ``==`` with a NaN operand are
  false and ``!=`` is true, as in C++ (IEEE 754). polars alone would order NaN
  above every number and call NaN equal to NaN, so every comparison is guarded.
  ``not``/``!`` negate the guarded result: ``!(x > 1)`` is true for NaN ``x``.
* A missing value (null) is read as NaN, so it follows the same rules.
* A number used as a condition is true when it is non-zero and not NaN. C++
  would call NaN true; the cut calls it false so that a NaN ``isSignal`` never
  passes as signal.
* ``min`` and ``max`` return NaN when any argument is NaN.
* ``a < b < c`` means ``a < b and b < c`` (in C++ it would compare the
  boolean ``a < b`` with ``c``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import polars as pl

from analysis.errors import CutError, did_you_mean
from analysis.naming import (
    BOOKKEEPING_BRANCHES,
    find_branch,
    normalize_variable_name,
    to_branch_name,
    to_variable_name,
)

log = logging.getLogger(__name__)

MAX_CUT_LENGTH = 10_000
"""Maximum length of a cut string, in characters."""

MAX_NESTING = 32
"""Maximum nesting depth of brackets and prefix operators (``-``, ``!``, ``not``)."""

MAX_TREE_DEPTH = 100
"""Maximum depth of the syntax tree. polars plans a deep expression in a time that
grows faster than linearly: 0.2 s for a chain of 500 additions with polars 2.1
on a shared 2-core machine."""

# Python builtins that code-injection strings call. They are not basf2
# variables, so a call to one of them is rejected outright.
_FORBIDDEN_CALLS = frozenset(
    {
        "breakpoint",
        "compile",
        "delattr",
        "eval",
        "exec",
        "exit",
        "getattr",
        "globals",
        "help",
        "input",
        "locals",
        "open",
        "quit",
        "setattr",
        "vars",
    }
)

# Characters allowed inside the brackets of a basf2 metavariable such as
# daughter(0, p) or passesCut(M < 2 and p > 1). The text is only escaped into
# a branch name, never evaluated.
_METAVARIABLE_ARGUMENT = re.compile(r"[A-Za-z0-9_ \t\r\n,.:+\-*/^<>=!?\[\]()]")

_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*")
_OPERATORS = {
    "&&": "and",
    "||": "or",
    "<=": "<=",
    ">=": ">=",
    "==": "==",
    "!=": "!=",
    "<": "<",
    ">": ">",
    "!": "!",
    "+": "+",
    "-": "-",
    "*": "*",
    "/": "/",
    "(": "(",
    ")": ")",
    "[": "[",
    "]": "]",
    ",": ",",
}
_KEYWORDS = frozenset({"and", "or", "not"})
_COMPARISONS = frozenset({"<", "<=", ">", ">=", "==", "!="})
_REJECTED_OPERATORS = {
    "**": "'**' is not an operator in cuts; write pow(x, y) for a power",
    "^": "'^' is not an operator in cuts; write pow(x, y) for a power",
    "%": "The modulo operator '%' is not supported in cuts",
    "=": "A single '=' is not a comparison; write '==' for equality",
    "&": "A single '&' is not an operator in cuts; write '&&' or 'and'",
    "|": "A single '|' is not an operator in cuts; write '||' or 'or'",
    ".": "'.' is only allowed inside a number; cuts have no attribute access",
    ":": "':' is only allowed inside the brackets of a basf2 metavariable",
    "'": "String literals are not part of the cut language",
    '"': "String literals are not part of the cut language",
}

_NOT_OPERATORS = frozenset({".", ":", "'", '"'})

# --- error messages ----------------------------------------------------------


def _cut_error(
    text: str, start: int, end: int, message: str, hint: str = ""
) -> CutError:
    """Build a CutError that quotes the cut with a caret under ``text[start:end]``."""
    window = 70
    left = max(0, start - window)
    right = min(len(text), max(end, start + 1) + window)
    quoted = re.sub(r"[\t\r\n]", " ", text[left:right])
    prefix = "..." if left > 0 else ""
    suffix = "..." if right < len(text) else ""
    carets = "^" * max(1, min(end, right) - start)
    pointer = " " * (len(prefix) + start - left) + carets
    return CutError(
        f"{message} at column {start + 1} of the cut:\n"
        f"    {prefix}{quoted}{suffix}\n"
        f"    {pointer}" + (f"\n{hint.strip()}" if hint.strip() else "")
    )


# --- functions ---------------------------------------------------------------


def _nan_propagating(
    reduce: Callable[[list[pl.Expr]], pl.Expr],
) -> Callable[[list[pl.Expr]], pl.Expr]:
    def build(args: list[pl.Expr]) -> pl.Expr:
        any_nan = pl.any_horizontal([arg.is_nan() for arg in args])
        return pl.when(any_nan).then(pl.lit(math.nan)).otherwise(reduce(args))

    return build


@dataclass(frozen=True)
class _Function:
    min_args: int
    max_args: int | None
    build: Callable[[list[pl.Expr]], pl.Expr]


_BASE_FUNCTIONS: dict[str, _Function] = {
    "abs": _Function(1, 1, lambda a: a[0].abs()),
    "sqrt": _Function(1, 1, lambda a: a[0].sqrt()),
    "pow": _Function(2, 2, lambda a: a[0].pow(a[1])),
    "exp": _Function(1, 1, lambda a: a[0].exp()),
    "log": _Function(1, 1, lambda a: a[0].log()),
    "log10": _Function(1, 1, lambda a: a[0].log10()),
    "sin": _Function(1, 1, lambda a: a[0].sin()),
    "cos": _Function(1, 1, lambda a: a[0].cos()),
    "tan": _Function(1, 1, lambda a: a[0].tan()),
    "asin": _Function(1, 1, lambda a: a[0].arcsin()),
    "acos": _Function(1, 1, lambda a: a[0].arccos()),
    "atan": _Function(1, 1, lambda a: a[0].arctan()),
    "atan2": _Function(2, 2, lambda a: pl.arctan2(a[0], a[1])),
    "sinh": _Function(1, 1, lambda a: a[0].sinh()),
    "cosh": _Function(1, 1, lambda a: a[0].cosh()),
    "tanh": _Function(1, 1, lambda a: a[0].tanh()),
    "floor": _Function(1, 1, lambda a: a[0].floor()),
    "ceil": _Function(1, 1, lambda a: a[0].ceil()),
    "min": _Function(2, None, _nan_propagating(pl.min_horizontal)),
    "max": _Function(2, None, _nan_propagating(pl.max_horizontal)),
    "pi": _Function(0, 0, lambda a: pl.lit(math.pi)),
}

# Spellings of the base functions in C, C++ (std::) and ROOT (TMath::).
_FUNCTION_ALIASES: dict[str, str] = {
    **{name: name for name in _BASE_FUNCTIONS if name != "pi"},
    **{f"std::{name}": name for name in _BASE_FUNCTIONS if name != "pi"},
    "fabs": "abs",
    "std::fabs": "abs",
    "TMath::Abs": "abs",
    "TMath::Sqrt": "sqrt",
    "TMath::Power": "pow",
    "TMath::Exp": "exp",
    "TMath::Log": "log",
    "TMath::Log10": "log10",
    "TMath::Sin": "sin",
    "TMath::Cos": "cos",
    "TMath::Tan": "tan",
    "TMath::ASin": "asin",
    "TMath::ACos": "acos",
    "TMath::ATan": "atan",
    "TMath::ATan2": "atan2",
    "TMath::SinH": "sinh",
    "TMath::CosH": "cosh",
    "TMath::TanH": "tanh",
    "TMath::Floor": "floor",
    "TMath::Ceil": "ceil",
    "TMath::Min": "min",
    "TMath::Max": "max",
    "TMath::Pi": "pi",
}

MATH_FUNCTIONS: frozenset[str] = frozenset(_FUNCTION_ALIASES)
"""Function names computed by the cut. Any other ``name(...)`` is a basf2
metavariable read from its branch."""


# --- tokenizer ---------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "number", "name", "branch", "op" or "end"
    text: str  # operator in normalized form ("&&" becomes "and")
    start: int
    end: int
    value: float = 0.0  # for numbers
    branch: str = ""  # for branch tokens: the resolved branch name


def _check_limits(text: str) -> None:
    """Reject oversized, non-ASCII or deeply nested cuts before tokenizing."""
    if len(text) > MAX_CUT_LENGTH:
        raise CutError(
            f"the cut is {len(text)} characters long; at most {MAX_CUT_LENGTH} are "
            "accepted. Split it into several cuts."
        )
    if not text.strip():
        raise CutError("the cut is empty; write a condition such as 'M > 1.7'")

    depth = 0
    for index, char in enumerate(text):
        if not (char.isascii() and (char.isprintable() or char in "\t\r\n")):
            raise _cut_error(
                text,
                index,
                index + 1,
                f"invalid character {char!r}",
                "Cuts are plain ASCII.",
            )
        if char in "([":
            depth += 1
            if depth > MAX_NESTING:
                raise _cut_error(
                    text,
                    index,
                    index + 1,
                    f"brackets are nested more than {MAX_NESTING} deep",
                )
        elif char in ")]":
            depth -= 1


def _find_closing_bracket(text: str, start: int) -> int | None:
    """Return the index of the ``)`` that closes the ``(`` at ``start``."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                return index
    return None


def _variable_error(
    text: str, start: int, end: int, name: str, available: Collection[str]
) -> CutError:
    branch = to_branch_name(normalize_variable_name(name))
    described = f"'{name}'" if branch == name else f"'{name}' (branch '{branch}')"
    pool = sorted({to_variable_name(b) for b in available})
    return _cut_error(
        text,
        start,
        end,
        f"unknown variable {described}",
        (
            did_you_mean(normalize_variable_name(name), pool).strip()
            or f"The tree has {len(pool)} branches; check the spelling."
        ),
    )


class _Tokenizer:
    def __init__(self, text: str, available: frozenset[str] | None) -> None:
        self.text = text
        self.available = available
        self.tokens: list[_Token] = []

    def run(self) -> list[_Token]:
        text = self.text
        position = 0
        while position < len(text):
            char = text[position]
            if char.isspace():
                position += 1
                continue
            number = _NUMBER.match(text, position)
            if number:
                position = self._number(number)
                continue
            name = _NAME.match(text, position)
            if name:
                position = self._name(name)
                continue
            position = self._operator(position)
        self.tokens.append(_Token("end", "", len(text), len(text)))
        return self.tokens

    def _number(self, match: re.Match[str]) -> int:
        end = match.end()
        if end < len(self.text) and (
            self.text[end].isalnum() or self.text[end] in "_."
        ):
            raise _cut_error(
                self.text,
                match.start(),
                end + 1,
                f"invalid number {self.text[match.start() : end + 1]!r}",
            )
        value = float(match.group())
        self.tokens.append(_Token("number", match.group(), match.start(), end, value))
        return end

    def _name(self, match: re.Match[str]) -> int:
        name, start, end = match.group(), match.start(), match.end()
        if name in _KEYWORDS:
            self.tokens.append(_Token("op", name, start, end))
            return end

        after = end
        while after < len(self.text) and self.text[after].isspace():
            after += 1
        if after < len(self.text) and self.text[after] == "(":
            return self._call(name, start, after)

        if "::" in name:
            raise _cut_error(
                self.text,
                start,
                end,
                f"'{name}' is not a variable",
                "A name with '::' must be a function call such as TMath::Abs(x).",
            )
        self.tokens.append(_Token("name", name, start, end))
        return end

    def _call(self, name: str, start: int, open_index: int) -> int:
        """Tokenize ``name(...)``: a math function or a basf2 metavariable."""
        close = _find_closing_bracket(self.text, open_index)
        if close is None:
            raise _cut_error(self.text, open_index, open_index + 1, "unclosed '('")
        raw = self.text[start : close + 1]

        if name in MATH_FUNCTIONS:
            # A branch that stores the whole call (basf2 has metavariables
            # abs(x), sin(x), ...) is read as it is, like any metavariable.
            stored = None
            if self.available is not None:
                stored = find_branch(raw, self.available)
            if stored is None:
                self.tokens.append(_Token("name", name, start, start + len(name)))
                return open_index
            self.tokens.append(_Token("branch", raw, start, close + 1, branch=stored))
            return close + 1

        self._check_metavariable(name, start, open_index, close)
        variable = normalize_variable_name(raw)
        if self.available is None:
            branch = to_branch_name(variable)
        else:
            found = find_branch(variable, self.available)
            if found is None:
                raise _variable_error(
                    self.text, start, close + 1, variable, self.available
                )
            branch = found
        self.tokens.append(_Token("branch", variable, start, close + 1, branch=branch))
        return close + 1

    def _check_metavariable(
        self, name: str, start: int, open_index: int, close: int
    ) -> None:
        end = start + len(name)
        if "::" in name:
            raise _cut_error(
                self.text,
                start,
                end,
                f"unknown function '{name}'",
                did_you_mean(name, MATH_FUNCTIONS),
            )
        if name.startswith("__") or name in _FORBIDDEN_CALLS:
            raise _cut_error(
                self.text,
                start,
                end,
                f"'{name}(...)' is not allowed in a cut",
                "It is neither a math function nor a basf2 variable.",
            )
        for index in range(open_index + 1, close):
            if not _METAVARIABLE_ARGUMENT.fullmatch(self.text[index]):
                raise _cut_error(
                    self.text,
                    index,
                    index + 1,
                    f"invalid character {self.text[index]!r} in the arguments of "
                    f"the basf2 metavariable '{name}'",
                )

    def _operator(self, position: int) -> int:
        text = self.text
        for length in (2, 1):
            piece = text[position : position + length]
            if piece in _REJECTED_OPERATORS:
                kind = "character" if piece in _NOT_OPERATORS else "operator"
                raise _cut_error(
                    text,
                    position,
                    position + length,
                    f"invalid {kind} {piece!r}",
                    _REJECTED_OPERATORS[piece] + ".",
                )
            if piece in _OPERATORS:
                self.tokens.append(
                    _Token("op", _OPERATORS[piece], position, position + length)
                )
                return position + length
        raise _cut_error(
            text, position, position + 1, f"invalid character {text[position]!r}"
        )


# --- syntax tree -------------------------------------------------------------


@dataclass(frozen=True)
class _Number:
    value: float


@dataclass(frozen=True)
class _Column:
    branch: str


@dataclass(frozen=True)
class _Negate:
    operand: _Node


@dataclass(frozen=True)
class _Not:
    operand: _Node


@dataclass(frozen=True)
class _Arithmetic:
    operator: str
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Comparison:
    """``a < b <= c``: ``operators`` has one entry fewer than ``operands``."""

    operators: tuple[str, ...]
    operands: tuple[_Node, ...]


@dataclass(frozen=True)
class _Logic:
    operator: str  # "and" or "or"
    operands: tuple[_Node, ...]


@dataclass(frozen=True)
class _Call:
    function: str  # key of _BASE_FUNCTIONS
    arguments: tuple[_Node, ...]


_Node = _Number | _Column | _Negate | _Not | _Arithmetic | _Comparison | _Logic | _Call


def _children(node: _Node) -> tuple[_Node, ...]:
    match node:
        case _Negate(operand) | _Not(operand):
            return (operand,)
        case _Arithmetic(_, left, right):
            return (left, right)
        case _Comparison(_, operands) | _Logic(_, operands):
            return operands
        case _Call(_, arguments):
            return arguments
    return ()


def _tree_depth(root: _Node) -> int:
    # Iterative, because a long chain such as a+a+...+a is deeper than
    # Python's recursion limit allows.
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _children(node))
    return deepest


# --- parser ------------------------------------------------------------------


class _Parser:
    """Recursive-descent parser with one method per precedence level, loosest first."""

    def __init__(
        self, text: str, tokens: list[_Token], available: frozenset[str] | None
    ) -> None:
        self.text = text
        self.tokens = tokens
        self.available = available
        self.index = 0
        self.nesting = 0
        self.branches: set[str] = set()

    def parse(self) -> _Node:
        node = self._or()
        token = self._peek()
        if token.kind != "end":
            raise self._error(
                token,
                f"unexpected {self._describe(token)}",
                "Expected an operator such as 'and', '<' or '+', or the end of "
                "the cut.",
            )
        return node

    # Helpers.

    def _peek(self) -> _Token:
        return self.tokens[self.index]

    def _advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _at(self, *operators: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == "op" and token.text in operators

    def _describe(self, token: _Token) -> str:
        if token.kind == "end":
            return "end of the cut"
        return repr(self.text[token.start : token.end])

    def _error(self, token: _Token, message: str, hint: str = "") -> CutError:
        return _cut_error(
            self.text, token.start, max(token.end, token.start + 1), message, hint
        )

    def _enter(self, token: _Token) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise self._error(
                token,
                f"brackets and prefix operators are nested more than {MAX_NESTING} "
                "deep",
            )

    def _expect_closing(self, opener: _Token) -> None:
        closer = ")" if opener.text == "(" else "]"
        if not self._at(closer):
            token = self._peek()
            raise self._error(
                token,
                f"expected '{closer}' to close the '{opener.text}' at column "
                f"{opener.start + 1}, found {self._describe(token)}",
            )
        self._advance()

    # Precedence levels.

    def _or(self) -> _Node:
        operands = [self._and()]
        while self._at("or"):
            self._advance()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else _Logic("or", tuple(operands))

    def _and(self) -> _Node:
        operands = [self._not()]
        while self._at("and"):
            self._advance()
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else _Logic("and", tuple(operands))

    def _not(self) -> _Node:
        # basf2's (and Python's) "not" binds looser than comparisons:
        # "not x > 1" is "not (x > 1)".
        if not self._at("not"):
            return self._comparison()
        self._enter(self._advance())
        node = _Not(self._not())
        self.nesting -= 1
        return node

    def _comparison(self) -> _Node:
        operands = [self._additive()]
        operators: list[str] = []
        while self._peek().kind == "op" and self._peek().text in _COMPARISONS:
            operators.append(self._advance().text)
            operands.append(self._additive())
        if not operators:
            return operands[0]
        return _Comparison(tuple(operators), tuple(operands))

    def _additive(self) -> _Node:
        node = self._term()
        while self._at("+", "-"):
            operator = self._advance().text
            node = _Arithmetic(operator, node, self._term())
        return node

    def _term(self) -> _Node:
        node = self._unary()
        while self._at("*", "/"):
            operator = self._advance().text
            node = _Arithmetic(operator, node, self._unary())
        return node

    def _unary(self) -> _Node:
        # C++'s "!" binds as tightly as unary minus: "!x > 1" is "(!x) > 1".
        if not self._at("-", "+", "!"):
            return self._primary()
        token = self._advance()
        self._enter(token)
        operand = self._unary()
        self.nesting -= 1
        if token.text == "-":
            return _Negate(operand)
        if token.text == "!":
            return _Not(operand)
        return operand

    def _primary(self) -> _Node:
        token = self._advance()
        if token.kind == "number":
            return _Number(token.value)
        if token.kind == "branch":
            self.branches.add(token.branch)
            return _Column(token.branch)
        if token.kind == "name":
            if self._at("("):
                return self._call(token)
            return self._variable(token)
        if token.kind == "op" and token.text in ("(", "["):
            self._enter(token)
            node = self._or()
            self._expect_closing(token)
            self.nesting -= 1
            return node
        raise self._error(
            token,
            f"expected a number, a variable or '(', found {self._describe(token)}",
        )

    def _variable(self, token: _Token) -> _Node:
        name = token.text
        if self.available is not None:
            branch = find_branch(name, self.available)
            if branch is None:
                raise _variable_error(
                    self.text, token.start, token.end, name, self.available
                )
        elif name.startswith("__") and name not in BOOKKEEPING_BRANCHES:
            raise self._error(
                token,
                f"invalid variable name '{name}'",
                "Names starting with '__' are reserved for basf2 bookkeeping "
                "branches such as __event__.",
            )
        else:
            branch = name
        self.branches.add(branch)
        return _Column(branch)

    def _call(self, name: _Token) -> _Node:
        opener = self._advance()
        self._enter(opener)
        arguments: list[_Node] = []
        if not self._at(")"):
            arguments.append(self._or())
            while self._at(","):
                self._advance()
                arguments.append(self._or())
        self._expect_closing(opener)
        self.nesting -= 1

        base = _FUNCTION_ALIASES[name.text]
        function = _BASE_FUNCTIONS[base]
        count = len(arguments)
        too_many = function.max_args is not None and count > function.max_args
        if count < function.min_args or too_many:
            if function.max_args is None:
                expected = f"at least {function.min_args}"
            else:
                expected = str(function.max_args)
            raise self._error(
                name, f"'{name.text}' takes {expected} argument(s), found {count}"
            )
        return _Call(base, tuple(arguments))


# --- translation to polars -----------------------------------------------------

_ARITHMETIC: dict[str, Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}
_COMPARE: dict[str, Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _numeric(node: _Node) -> pl.Expr:
    match node:
        case _Number(value):
            return pl.lit(value, dtype=pl.Float64)
        case _Column(branch):
            return pl.col(branch).cast(pl.Float64).fill_null(math.nan)
        case _Negate(operand):
            return -_numeric(operand)
        case _Arithmetic(operator, left, right):
            return _ARITHMETIC[operator](_numeric(left), _numeric(right))
        case _Call(function, arguments):
            return _BASE_FUNCTIONS[function].build([_numeric(a) for a in arguments])
    # A condition used as a number is 1.0 or 0.0, as a C++ bool converts.
    return _boolean(node).cast(pl.Float64)


def _compare(operator: str, left: _Node, right: _Node) -> pl.Expr:
    left_value, right_value = _numeric(left), _numeric(right)
    result = _COMPARE[operator](left_value, right_value)

    # Literals are never NaN, so only the other operands need a guard.
    may_be_nan = [
        value
        for value, node in ((left_value, left), (right_value, right))
        if not isinstance(node, _Number)
    ]
    for value in may_be_nan:
        if operator == "!=":
            result = result | value.is_nan()
        else:
            result = result & value.is_not_nan()
    return result


def _boolean(node: _Node) -> pl.Expr:
    match node:
        case _Not(operand):
            return ~_boolean(operand)
        case _Logic("and", operands):
            return pl.all_horizontal([_boolean(o) for o in operands])
        case _Logic(_, operands):
            return pl.any_horizontal([_boolean(o) for o in operands])
        case _Comparison(operators, operands):
            checks = [
                _compare(operator, operands[i], operands[i + 1])
                for i, operator in enumerate(operators)
            ]
            return checks[0] if len(checks) == 1 else pl.all_horizontal(checks)
    value = _numeric(node)
    return (value != 0) & value.is_not_nan()


# --- public interface ------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """A parsed cut: its text, the branches it reads and its syntax tree.

    Attributes:
        text: the cut string as written.
        variables: branch names the cut reads, after escaping basf2
            metavariables (``daughter(0, p)`` is ``daughter__bo0__cm__spp__bc``).
    """

    text: str
    variables: frozenset[str]
    _tree: _Node = field(repr=False)

    def expr(self) -> pl.Expr:
        """Build the boolean polars expression of the cut.

        The expression follows the NaN policy of this module: a comparison
        with NaN or a missing value is false (``!=`` is true), and negation
        is applied after that.
        """
        return _boolean(self._tree).fill_null(False)


def _parse(
    text: str, available: Collection[str] | None
) -> tuple[_Node, frozenset[str]]:
    if not isinstance(text, str):
        raise CutError(f"a cut must be a string, found {type(text).__name__}: {text!r}")
    _check_limits(text)

    names = frozenset(available) if available is not None else None
    tokens = _Tokenizer(text, names).run()
    parser = _Parser(text, tokens, names)
    tree = parser.parse()

    depth = _tree_depth(tree)
    if depth > MAX_TREE_DEPTH:
        raise CutError(
            f"the cut {text[:80]!r}{'...' if len(text) > 80 else ''} has a syntax "
            f"tree {depth} levels deep; at most {MAX_TREE_DEPTH} are accepted. "
            "Split long chains of '+' or '*' with brackets or into several cuts."
        )
    return tree, frozenset(parser.branches)


def parse_cut(text: str, available: Collection[str] | None = None) -> Cut:
    """Parse a cut string in C++/ROOT or basf2 syntax.

    Args:
        text: the cut, for example ``"1.3 < M < 2.2 and abs(dM) < 0.1"``.
        available: branch names of the tree the cut will be applied to. When
            given, every variable must resolve to one of them; when ``None``,
            variables are only escaped into branch names.

    Returns:
        The parsed cut.

    Raises:
        CutError: the cut is too long or too deeply nested, has a syntax error,
            uses a forbidden form (string literal, attribute access, a call to
            a Python builtin), or reads an unknown variable. The message
            quotes the cut with a caret under the bad position and, for an
            unknown variable, lists the nearest branch names.
    """
    tree, variables = _parse(text, available)
    log.debug("parsed cut %r reading branches %s", text, sorted(variables))
    return Cut(text=text, variables=variables, _tree=tree)


def parse_expression(
    text: str, available: Collection[str] | None = None
) -> tuple[pl.Expr, frozenset[str]]:
    """Parse a numeric expression such as ``"abs(dM)"`` or ``"pow(p, 2) / E"``.

    Variables, functions and the NaN policy are those of :func:`parse_cut`.

    Args:
        text: the expression.
        available: branch names to resolve variables against, or ``None``.

    Returns:
        The float64 polars expression and the branch names it reads.

    Raises:
        CutError: as for :func:`parse_cut`, and when the text is a condition
            (a comparison or a logical operator) instead of a number.
    """
    tree, variables = _parse(text, available)
    if isinstance(tree, _Not | _Comparison | _Logic):
        raise CutError(
            f"expected a numeric expression such as 'abs(dM)', but {text!r} is a "
            "condition; remove the comparison or logical operator, or use "
            "parse_cut for a cut"
        )
    return _numeric(tree), variables
