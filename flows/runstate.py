"""Run directories: the lock, stage completion records and fault injection.

A stage is complete when ``<run_dir>/.stages/<stage>.json`` exists and contains
the same key as the current run. The key hashes the config sections the
stage reads, the keys of the stages before it, the SHA-256 of every input
file and the source code of the package, so a rerun with unchanged inputs
reuses finished stages and any change recomputes from the first stage it
touches. Records are written atomically after all outputs of a stage exist,
so a crash mid-stage leaves no record and the stage reruns.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from analysis import __version__
from analysis.errors import AnalysisError
from analysis.outputs import sha256_file, write_json, write_text

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

# Environment variable for fault injection, a comma-separated list of
# "<stage>[:mode]". Modes: "once" (the default) raises a transient error at the
# start of the stage once per run directory, so the retry passes. "always"
# fails the stage with a permanent error. "kill" sends SIGKILL to the process
# after the stage wrote its outputs but before its completion record, once per
# run directory, to test crash and resume.
FAULT_VARIABLE = "TAU3MU_INJECT_FAULT"


class RunLockedError(AnalysisError):
    """Another process is writing into the same run directory."""


class InjectedFault(OSError):
    """A transient failure raised on purpose by the fault-injection setting."""


class InjectedPermanentFault(AnalysisError):
    """A permanent failure raised on purpose by the fault-injection setting."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for the duration of a run.

    Raises:
        RunLockedError: another run holds the lock.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    handle = open(path, "a+")  # noqa: SIM115 - held open while locked
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunLockedError(
            f"run directory {run_dir} is in use by another run; wait for it to "
            "finish or choose another run name"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def code_version() -> str:
    """Return a SHA-256 over the package's Python sources (analysis/, flows/)."""
    digest = hashlib.sha256(__version__.encode())
    for folder in ("analysis", "flows"):
        for path in sorted((PACKAGE_ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def file_hashes(paths: Sequence[str | Path]) -> dict[str, str]:
    """Return the SHA-256 of each file, keyed by path."""
    return {str(p): sha256_file(p) for p in paths}


def stage_key(*parts: Any) -> str:
    """Hash JSON-serialisable parts into a stage key."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _record_path(run_dir: Path, stage: str) -> Path:
    return run_dir / ".stages" / f"{stage}.json"


def completed_summary(run_dir: Path, stage: str, key: str) -> dict[str, Any] | None:
    """Return the stored summary of ``stage`` if it completed with ``key``."""
    path = _record_path(run_dir, stage)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        log.warning("ignoring unreadable stage record %s", path)
        return None
    if record.get("key") != key:
        return None
    summary: dict[str, Any] = record["summary"]
    return summary


def mark_completed(
    run_dir: Path, stage: str, key: str, summary: dict[str, Any]
) -> None:
    """Record that ``stage`` finished with ``key`` and produced ``summary``."""
    write_json(_record_path(run_dir, stage), {"key": key, "summary": summary})


def clear_records(run_dir: Path) -> None:
    """Forget every completed stage, so the next run recomputes all of them."""
    folder = run_dir / ".stages"
    if folder.is_dir():
        for path in folder.glob("*.json"):
            path.unlink()


def maybe_inject_fault(run_dir: Path, stage: str, point: str = "start") -> None:
    """Raise or kill as ``TAU3MU_INJECT_FAULT`` requests for ``stage``.

    ``point`` is ``"start"`` before the stage's work and ``"end"`` after it,
    before the completion record is written.
    """
    setting = os.environ.get(FAULT_VARIABLE, "")
    for item in filter(None, (s.strip() for s in setting.split(","))):
        name, _, mode = item.partition(":")
        if name != stage:
            continue
        mode = mode or "once"
        if mode == "kill":
            marker = run_dir / ".faults" / f"{stage}.kill"
            if point == "end" and not marker.exists():
                write_text(marker, "killed\n")
                log.warning("stage %s: SIGKILL injected by %s", stage, FAULT_VARIABLE)
                os.kill(os.getpid(), signal.SIGKILL)
            continue
        if point != "start":
            continue
        if mode == "always":
            raise InjectedPermanentFault(
                f"stage {stage!r}: permanent failure injected by "
                f"{FAULT_VARIABLE}={setting!r}"
            )
        if mode != "once":
            raise InjectedPermanentFault(
                f"{FAULT_VARIABLE}={setting!r}: mode {mode!r} is invalid; use "
                "'once', 'always' or 'kill'"
            )
        marker = run_dir / ".faults" / stage
        if not marker.exists():
            write_text(marker, "injected\n")
            raise InjectedFault(
                f"stage {stage!r}: transient failure injected by "
                f"{FAULT_VARIABLE}={setting!r}"
            )
