"""Check job outputs: a readable ROOT file holding the expected tree with entries."""

from __future__ import annotations

import logging
from pathlib import Path

import uproot

from analysis.errors import InputFileError, did_you_mean

log = logging.getLogger(__name__)


def verify_root_output(path: Path, tree: str) -> int:
    """Open ``path`` and return the number of entries of ``tree``.

    Args:
        path: ROOT file written by a job.
        tree: name of the tree the job must write.

    Returns:
        The number of entries, at least 1.

    Raises:
        InputFileError: the file is missing, unreadable, lacks the tree, the
            object is not a tree, or the tree is empty.
    """
    if not path.is_file():
        raise InputFileError(f"output {path} not found: the job wrote no file there")
    try:
        with uproot.open(path) as handle:
            keys = handle.keys(cycle=False)
            if tree not in keys:
                raise InputFileError(
                    f"tree {tree!r} not found in output {path}; it contains {keys}."
                    + did_you_mean(tree, keys)
                )
            obj = handle[tree]
            if not isinstance(obj, uproot.TTree):
                raise InputFileError(
                    f"{tree!r} in output {path} is a {type(obj).__name__}, not a TTree"
                )
            entries = int(obj.num_entries)
    except InputFileError:
        raise
    # uproot raises many exception types on truncated or foreign files
    # (ValueError, OSError, DeserializationError, KeyError, ...).
    except Exception as err:
        raise InputFileError(
            f"output {path} is not a readable ROOT file: {type(err).__name__}: {err}"
        ) from err
    if entries <= 0:
        raise InputFileError(f"tree {tree!r} in output {path} has no entries")
    log.debug("verified %s: %d entries in %s", path, entries, tree)
    return entries
