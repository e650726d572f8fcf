"""Test helpers that read Linux's /proc: child processes, liveness, CPU time."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str]:
    """Return the fields of ``/proc/<pid>/stat`` after the command name.

    The command name is in parentheses and may contain spaces, so the split
    starts after its closing parenthesis: the first field is the state (field
    3 of proc(5)), the second the parent's id.
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()


def children(parent: int, marker: bytes | None = None) -> list[int]:
    """Return the ids of the processes whose parent is ``parent``.

    With ``marker``, only those whose command line contains it.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and (marker is None or marker in cmdline):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Return whether ``pid`` runs; a zombie waiting to be reaped does not."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) of ``pid`` so far, 0 if it is gone."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of proc(5), 12 and 13 here.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
