"""Map basf2 variable names to ntuple branch names and back.

basf2's ``VariablesToNtuple`` module names each branch after the variable string
from the steering file, escaped by ``makeROOTCompatible`` so that ROOT accepts
it: ``daughter(0, p)`` is stored as ``daughter__bo0__cm__spp__bc``. The table
below is the substitution map of basf2's
``framework/utilities/src/MakeROOTCompatible.cc``. Characters that are neither
in the table nor in ``[A-Za-z0-9_]`` are deleted, as basf2 deletes them.

basf2 stores the variable string exactly as the steering file spells it, so
``daughter(0,p)`` and ``daughter(0, p)`` give different branches.
:func:`normalize_variable_name` writes the spelling used in the basf2
documentation (one space after each comma, none inside the brackets), and
:func:`find_branch` also accepts a branch that differs from that spelling only
in spaces.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Collection

log = logging.getLogger(__name__)

# basf2's map also lists "-" -> "__da", but a std::map built from an
# initializer list keeps the first of two equal keys, so "-" is always "__mi"
# and basf2 never writes or decodes "__da".
ESCAPES: dict[str, str] = {
    " ": "__sp",
    ",": "__cm",
    ":": "__cl",
    "=": "__eq",
    "<": "__st",
    ">": "__gt",
    ".": "__pt",
    "+": "__pl",
    "-": "__mi",
    "(": "__bo",
    ")": "__bc",
    "{": "__co",
    "}": "__cc",
    "[": "__so",
    "]": "__sc",
    "`": "__to",
    "´": "__tc",
    "^": "__ha",
    "°": "__ci",
    "$": "__do",
    "§": "__pa",
    "%": "__pr",
    "!": "__em",
    "?": "__qm",
    ";": "__sm",
    "#": "__hs",
    "*": "__mu",
    "/": "__sl",
    "\\": "__bl",
    "'": "__sq",
    '"': "__dq",
    "~": "__ti",
    "|": "__pi",
    "&": "__am",
    "@": "__at",
}

# Bookkeeping branches that VariablesToNtuple writes itself. They are not
# escaped variable names: decoding "__production__" would read "__pr" as "%".
BOOKKEEPING_BRANCHES: frozenset[str] = frozenset(
    {
        "__experiment__",
        "__run__",
        "__event__",
        "__production__",
        "__candidate__",
        "__ncandidates__",
        "__weight__",
    }
)

_UNESCAPES = {code: char for char, code in ESCAPES.items()}
_CODE_PATTERN = re.compile("__(" + "|".join(code[2:] for code in _UNESCAPES) + ")")
_ROOT_CHARACTERS = re.compile(r"[A-Za-z0-9_]")


@functools.lru_cache(maxsize=4096)
def to_branch_name(variable: str) -> str:
    """Escape a basf2 variable name into the branch name basf2 writes for it.

    The name is used as given, so normalize it first with
    :func:`normalize_variable_name` when it was typed by a person. Branch
    names pass through unchanged because an escaped name contains only
    ``[A-Za-z0-9_]``.

    Args:
        variable: basf2 variable name, for example ``daughter(0, p)``.

    Returns:
        The branch name, for example ``daughter__bo0__cm__spp__bc``.
    """
    pieces = []
    dropped = []
    for char in variable:
        if char in ESCAPES:
            pieces.append(ESCAPES[char])
        elif _ROOT_CHARACTERS.fullmatch(char):
            pieces.append(char)
        else:
            dropped.append(char)

    # The cache makes this warning appear once per distinct name.
    if dropped:
        log.warning(
            "variable name %r contains characters that basf2 deletes from "
            "branch names: %s",
            variable,
            " ".join(repr(char) for char in dropped),
        )
    return "".join(pieces)


def to_variable_name(branch: str) -> str:
    """Decode a branch name into the basf2 variable name it was written from.

    This inverts :func:`to_branch_name` for every branch that basf2 can write:
    ``to_branch_name(to_variable_name(b)) == b``. Bookkeeping branches such as
    ``__event__`` are returned unchanged.

    Args:
        branch: branch name, for example ``extraInfo__boBDT__bc``.

    Returns:
        The basf2 variable name, for example ``extraInfo(BDT)``.
    """
    if branch in BOOKKEEPING_BRANCHES:
        return branch
    return _CODE_PATTERN.sub(lambda match: _UNESCAPES[match.group(0)], branch)


def normalize_variable_name(variable: str) -> str:
    """Write a basf2 variable name with spaces as the basf2 documentation does.

    Whitespace runs become one space, brackets lose inner padding, and each
    comma is followed by exactly one space: ``daughter( 0,p )`` becomes
    ``daughter(0, p)``.
    """
    text = re.sub(r"\s+", " ", variable).strip()
    text = re.sub(r"\s*\(\s*", "(", text, count=1)
    text = re.sub(r"\(\s+", "(", text)
    text = re.sub(r"\s+\)", ")", text)
    return re.sub(r"\s*,\s*", ", ", text)


def find_branch(variable: str, available: Collection[str]) -> str | None:
    """Find the branch in ``available`` that stores a basf2 variable.

    The exact escaped name wins. Otherwise a branch that differs only in
    spaces (``__sp``) is accepted, because basf2 names the branch after the
    steering file's spelling and ``daughter(0,p)`` is the same variable as
    ``daughter(0, p)``.

    Args:
        variable: basf2 variable name or branch name.
        available: branch names of the tree.

    Returns:
        The branch name, or ``None`` when no branch stores the variable.
    """
    branch = to_branch_name(normalize_variable_name(variable))
    if branch in available:
        return branch
    if "(" not in variable:
        return None

    key = branch.replace("__sp", "")
    matches = sorted(name for name in available if name.replace("__sp", "") == key)
    if len(matches) > 1:
        log.warning(
            "variable %r matches several branches that differ only in spaces: "
            "%s; using %s",
            variable,
            ", ".join(matches),
            matches[0],
        )
    return matches[0] if matches else None
