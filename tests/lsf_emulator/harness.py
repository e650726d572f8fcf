"""Test helpers: put the LSF emulator first on PATH and clean up after it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.lsf_emulator import lsfemu

BIN = Path(__file__).resolve().parent
TOY_PAYLOAD = BIN / "toy_payload.py"


@contextmanager
def emulator(state: Path) -> Iterator[Path]:
    """Run the block with ``bsub``/``bjobs``/``bkill`` from the emulator on PATH.

    Yields the emulator's state folder. On exit every job and executor process
    the emulator started is killed and reaped, so none outlives the test.
    """
    saved = {
        key: os.environ.get(key) for key in ("PATH", "LSFEMU_DIR", "LSFEMU_PYTHON")
    }
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["LSFEMU_DIR"] = str(state)
    os.environ["LSFEMU_PYTHON"] = sys.executable
    lsfemu.connect(state).close()
    try:
        yield state
    finally:
        lsfemu.shutdown(state)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def toy_payload(*extra: str) -> list[str]:
    """Return a payload template running the toy ROOT writer."""
    return [
        sys.executable,
        str(TOY_PAYLOAD),
        "--output",
        "{output}",
        "--tree",
        "{tree}",
        "--seed",
        "{seed}",
        *extra,
    ]
