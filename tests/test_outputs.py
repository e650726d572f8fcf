"""Atomic outputs: a failed write leaves the earlier file untouched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from analysis.errors import OutputError
from analysis.outputs import atomic_path, sha256_file, write_json, write_text


def test_write_replaces_whole_file(tmp_path: Path) -> None:
    path = write_text(tmp_path / "a" / "out.txt", "first\n")
    write_text(path, "second\n")
    assert path.read_text() == "second\n"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_failed_write_keeps_earlier_output(tmp_path: Path) -> None:
    path = write_json(tmp_path / "results.json", {"limit": 1.0})

    def write_half() -> None:
        with atomic_path(path) as tmp:
            tmp.write_text('{"limit": ')
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_half()
    assert json.loads(path.read_text()) == {"limit": 1.0}
    assert list(tmp_path.iterdir()) == [path], "temporary file removed"


def test_disk_full_gives_output_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_text(tmp_path / "report.md", "earlier report\n")

    def full_disk(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputError, match=r"No space left.*earlier output"):
        write_text(path, "new report\n")
    assert path.read_text() == "earlier report\n"
    assert list(tmp_path.iterdir()) == [path]


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3_000_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk_bytes=4096) == hashlib.sha256(data).hexdigest()


def test_written_file_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "report.md", "x\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
