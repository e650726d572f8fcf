"""Exceptions raised by the analysis code.

Every message states what was expected, what was found, where (file, tree,
branch, config key) and what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AnalysisError(Exception):
    """Base class of every error the analysis raises on purpose."""


class ConfigError(AnalysisError):
    """The analysis configuration is invalid; the message names key and value."""


class InputFileError(AnalysisError):
    """An input ROOT file is missing, unreadable, or not a flat ntuple."""


class MissingBranchError(InputFileError, KeyError):
    """A requested branch or variable does not exist in the tree."""

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return str(self.args[0]) if self.args else ""


class CutError(AnalysisError):
    """A cut string is invalid: bad syntax, unknown variable or forbidden form."""


class FitError(AnalysisError):
    """A fit did not converge; the message names the sample and fit status."""


class PhysicsError(AnalysisError):
    """A physics input makes the result meaningless (no signal left, for example)."""


class OutputError(AnalysisError):
    """Writing an output failed; earlier outputs are left untouched."""


class BatchError(AnalysisError):
    """A batch job failed for good or the batch system cannot be used."""


def nearest_names(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` names from ``candidates`` closest to ``name``."""
    pool = list(candidates)
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if close:
        return close
    lowered = name.lower()
    return [c for c in pool if lowered in c.lower() or c.lower() in lowered][:n]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """Format a ``did you mean`` hint for an unknown name, or an empty string."""
    close = nearest_names(name, candidates)
    if not close:
        return ""
    return " Did you mean: " + ", ".join(repr(c) for c in close) + "?"
