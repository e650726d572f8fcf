"""Atomic writing of outputs: a reader never sees half a file.

Every output is written to a temporary file in the destination folder and
renamed into place with :func:`os.replace`, which is atomic on POSIX file
systems. When writing fails, the temporary file is removed and any earlier
output at the destination is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from analysis.errors import OutputError

log = logging.getLogger(__name__)


def _file_mode() -> int:
    """Return the mode a new file gets under the process umask (0644 for 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and rename it to ``path`` on success.

    The caller writes the whole output to the yielded path. If the block raises,
    the temporary file is deleted and ``path`` keeps its earlier content.

    Raises:
        OutputError: writing or renaming failed (disk full, permissions); the
            original ``OSError`` is chained.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=".tmp", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates the file readable by its owner only; give it the
        # mode any other new file would get, so colleagues can read a run.
        os.chmod(tmp, _file_mode())
        os.replace(tmp, final)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(
            f"could not write {final}: {err.strerror or err}; earlier output at "
            "that path is unchanged. Free disk space or fix permissions and rerun."
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically and return the path."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default)
    return write_text(path, text + "\n")


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, paths: the types that reach results.json.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON: {value!r}")


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Return the hex SHA-256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
