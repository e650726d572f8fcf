"""Read flat ntuples (basf2 VariablesToNtuple, TMVA trees) into polars tables.

Only the branches a run needs are read, in chunks sized by bytes, so memory
does not grow with the number of candidates. Every failure to read names the
file, the tree and the reason, and what to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import uproot

from analysis.errors import InputFileError, MissingBranchError, did_you_mean

log = logging.getLogger(__name__)

# basf2 bookkeeping branches that identify an event within one file.
EVENT_BRANCHES = ("__experiment__", "__run__", "__event__", "__production__")

DEFAULT_STEP_SIZE = "64 MB"

# One number per entry: plain types and ROOT's truncated Double32_t/Float16_t.
_FLAT_INTERPRETATIONS = (
    uproot.interpretation.numerical.AsDtype,
    uproot.interpretation.numerical.TruncatedNumerical,
)


def open_file(path: str | os.PathLike[str]) -> Any:
    """Open a ROOT file for reading and check that it contains objects.

    Raises:
        InputFileError: the path is missing or a folder, the file is not ROOT,
            or it has no keys (its writer never closed it).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"input file {path} not found; check the path")
    if path.is_dir():
        raise InputFileError(
            f"input path {path} is a directory, not a ROOT file; "
            "give the file or a glob such as DIR/*.root"
        )
    try:
        handle = uproot.open(path)
    except Exception as err:  # uproot raises many types for corrupt input
        raise InputFileError(
            f"cannot read {path} as a ROOT file: {type(err).__name__}: {err}. "
            "The file may be truncated or not ROOT; regenerate or re-copy it."
        ) from err
    size = path.stat().st_size
    if size < handle.file.fEND:
        handle.close()
        raise InputFileError(
            f"{path} is truncated: {size} bytes on disk, but its header says "
            f"{handle.file.fEND}. Copy or regenerate the file."
        )
    if not handle.keys():
        handle.close()
        raise InputFileError(
            f"{path} contains no objects: the writing job most likely crashed "
            "before closing the file. Rerun the job that produced it."
        )
    return handle


def list_trees(handle: Any) -> list[str]:
    """Return the names (without cycle) of every TTree in an open file."""
    names = []
    for key, classname in handle.classnames().items():
        if classname in ("TTree", "TNtuple", "TNtupleD"):
            name = key.rsplit(";", 1)[0]
            if name not in names:
                names.append(name)
    return names


def open_tree(handle: Any, tree: str | None, path: str | os.PathLike[str]) -> Any:
    """Return the TTree called ``tree`` (highest cycle) from an open file.

    With ``tree=None`` the file must hold exactly one tree.

    Raises:
        InputFileError: the tree is not in the file; the message lists the
            trees there are.
    """
    trees = list_trees(handle)
    if tree is None:
        if len(trees) != 1:
            raise InputFileError(
                f"{path} contains {len(trees)} trees ({', '.join(trees) or 'none'}); "
                "set the sample's tree to one of them"
            )
        tree = trees[0]
    if tree not in trees:
        raise InputFileError(
            f"tree {tree!r} not found in {path}. Trees in this file: "
            f"{', '.join(trees) or 'none'}." + did_you_mean(tree, trees)
        )
    cycles = [k for k in handle.keys(cycle=True) if k.rsplit(";", 1)[0] == tree]
    if len(cycles) > 1:
        log.info(
            "%s: tree %s has cycles %s; reading the highest",
            path,
            tree,
            ", ".join(sorted(c.rsplit(";", 1)[1] for c in cycles)),
        )
    return handle[tree]


def non_flat_branches(tree: Any) -> list[str]:
    """Return ``name (type)`` of every branch holding more than one number per entry."""
    found = []
    for name in tree.keys(recursive=True):
        try:
            interpretation = tree[name].interpretation
        except Exception:  # uproot cannot interpret some ROOT objects
            found.append(f"{name} (uninterpretable)")
            continue
        flat = isinstance(interpretation, _FLAT_INTERPRETATIONS)
        if not flat or bool(getattr(interpretation, "inner_shape", None)):
            found.append(f"{name} ({tree[name].typename})")
    return found


def describe_tree(path: str | os.PathLike[str], tree: str | None) -> str:
    """Return a hint about a tree that is not a flat ntuple, or an empty string."""
    handle = open_file(path)
    try:
        not_flat = non_flat_branches(open_tree(handle, tree, path))
    finally:
        handle.close()
    if not not_flat:
        return ""
    shown = ", ".join(not_flat[:5]) + (", ..." if len(not_flat) > 5 else "")
    return (
        f" Tree {tree!r} of {path} is not a flat ntuple: {len(not_flat)} branches "
        f"hold more than one number per entry ({shown}); it looks like an "
        "event-wise tree. Give a basf2 VariablesToNtuple file instead."
    )


def check_branches(
    tree: Any, branches: Sequence[str], path: str | os.PathLike[str]
) -> None:
    """Check that every branch exists and stores one number per entry.

    Raises:
        MissingBranchError: a branch is absent; the message lists near names.
        InputFileError: a branch is jagged or an object, which a flat ntuple
            does not have.
    """
    available = list(tree.keys(recursive=True))
    for name in branches:
        if name not in available:
            raise MissingBranchError(
                f"branch {name!r} not found in tree {tree.name!r} of {path}."
                + did_you_mean(name, available)
            )
    not_flat = []
    for name in branches:
        interpretation = tree[name].interpretation
        flat = isinstance(interpretation, _FLAT_INTERPRETATIONS)
        if not flat or interpretation.inner_shape:
            not_flat.append(f"{name} ({tree[name].typename})")
    if not_flat:
        raise InputFileError(
            f"tree {tree.name!r} of {path} is not a flat ntuple: branches "
            f"{', '.join(not_flat)} hold more than one number per entry. "
            "Use basf2 VariablesToNtuple output, or drop these branches."
        )


def iterate_tree(
    path: str | os.PathLike[str],
    tree: str | None,
    branches: Sequence[str],
    step_size: str | int = DEFAULT_STEP_SIZE,
) -> Iterator[pl.DataFrame]:
    """Yield the ``branches`` of one tree as polars tables, chunk by chunk.

    Column types follow the branches (int32, uint32, bool, float64); a tree
    with zero entries yields one empty table with those columns.

    Args:
        path: ROOT file.
        tree: tree name, or None when the file contains one tree.
        branches: branch names to read; nothing else is read from disk.
        step_size: chunk size, in bytes (``"64 MB"``) or entries (int).

    Raises:
        InputFileError: see :func:`open_file`, :func:`open_tree`,
            :func:`check_branches`; also a read error inside the file.
    """
    handle = open_file(path)
    try:
        ttree = open_tree(handle, tree, path)
        branches = list(dict.fromkeys(branches))
        check_branches(ttree, branches, path)
        if ttree.num_entries == 0:
            yield _empty_frame(ttree, branches)
            return
        try:
            for arrays in ttree.iterate(branches, step_size=step_size, library="np"):
                yield pl.DataFrame({name: arrays[name] for name in branches})
        except (
            OSError,
            ValueError,
            uproot.deserialization.DeserializationError,
        ) as err:
            raise InputFileError(
                f"failed to read tree {ttree.name!r} of {path}: {err}. "
                "The file is probably truncated or corrupt; regenerate it."
            ) from err
    finally:
        handle.close()


def read_tree(
    path: str | os.PathLike[str],
    tree: str | None,
    branches: Sequence[str],
) -> pl.DataFrame:
    """Read ``branches`` of one tree into one polars table (small files only)."""
    frames = list(iterate_tree(path, tree, branches))
    return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]


def tree_branches(path: str | os.PathLike[str], tree: str | None) -> list[str]:
    """Return the branch names of one tree."""
    handle = open_file(path)
    try:
        return list(open_tree(handle, tree, path).keys(recursive=True))
    finally:
        handle.close()


def _empty_frame(ttree: Any, branches: Sequence[str]) -> pl.DataFrame:
    columns = {}
    for name in branches:
        dtype = np.dtype(ttree[name].interpretation.to_dtype)
        columns[name] = np.zeros(0, dtype=dtype.newbyteorder("="))
    return pl.DataFrame(columns)
