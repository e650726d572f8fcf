"""Job script run on the batch node (or locally): standard library only.

Two uses:

- ``jobwrap.py --spec SPEC.json`` replaces itself with the payload argv stored
  in the spec (for an array, the element chosen by ``$LSB_JOBINDEX``). The
  argv never passes through a shell, whatever LSF does with the command line.
- ``jobwrap.py --status FILE --out LOG --err LOG --report -- ARGV...`` is the
  ``local`` backend's job. It runs ARGV with its output in the logs and appends
  a job report in LSF's wording to the ``--out`` log. It also writes its state
  to FILE (JSON), so that a restarted orchestrator can read the outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any


def _write_status(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _spec_argv(spec_path: Path) -> list[str]:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    if "argv" in spec:
        return [str(a) for a in spec["argv"]]
    index = os.environ.get("LSB_JOBINDEX", "")
    elements = spec["elements"]
    if index not in elements:
        raise SystemExit(
            f"jobwrap: LSB_JOBINDEX={index!r} is not an element of {spec_path} "
            f"(elements 1 to {len(elements)})"
        )
    return [str(a) for a in elements[index]]


def _report(argv: list[str], code: int, signal_name: str | None, start: float) -> str:
    end = time.time()
    if code == 0:
        outcome = "Successfully completed."
    elif signal_name:
        outcome = f"Exited with signal termination: {signal_name}."
    else:
        outcome = f"Exited with exit code {code}."
    return "\n".join(
        [
            "",
            "-" * 60,
            "Sender: LSF System (local backend)",
            "",
            "Your job looked like:",
            " ".join(argv),
            f"Started at {time.ctime(start)}",
            f"Results reported at {time.ctime(end)}",
            "",
            outcome,
            "",
            f"    Run time : {end - start:.0f} sec.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the job described by the command line; return its exit code."""
    parser = argparse.ArgumentParser(prog="jobwrap.py")
    parser.add_argument("--spec", type=Path, help="JSON file with the payload argv")
    parser.add_argument("--status", type=Path, help="JSON state file to write")
    parser.add_argument("--name", default="", help="job name, stored in --status")
    parser.add_argument("--out", type=Path, help="log for standard output")
    parser.add_argument("--err", type=Path, help="log for standard error")
    parser.add_argument("--report", action="store_true", help="append a job report")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if args.spec is not None:
        command = _spec_argv(args.spec) + command
    if not command:
        parser.error("no command given: pass --spec FILE or -- ARGV...")

    if args.status is None and args.out is None:
        os.execvp(command[0], command)

    start = time.time()
    running: list[subprocess.Popen[bytes]] = []
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if running:
            running[0].send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if args.status is not None:
        # Written before the payload starts, so that a restarted orchestrator
        # never takes a running job for a lost one.
        _write_status(
            args.status,
            {"name": args.name, "state": "RUN", "pid": os.getpid(), "start": start},
        )
    out = open(args.out, "a") if args.out else None  # noqa: SIM115
    err = open(args.err, "a") if args.err else out  # noqa: SIM115
    signal_name: str | None = None
    code = 0
    if received:
        code = -received[0]
    else:
        try:
            running.append(
                subprocess.Popen(
                    command, stdout=out, stderr=err, stdin=subprocess.DEVNULL
                )
            )
        except OSError as exc:
            if out is not None:
                out.write(f"jobwrap: could not start {command[0]!r}: {exc.strerror}\n")
            code = 127
        else:
            # A signal that arrived while the payload was starting.
            if received:
                running[0].send_signal(received[0])
            code = running[0].wait()
    if code < 0:
        signal_name = signal.Signals(-code).name.removeprefix("SIG").title()
        code = 128 - code

    if out is not None:
        out.flush()
        if args.report:
            out.write(_report(command, code, signal_name, start))
        out.close()
    if err is not None and err is not out:
        err.close()
    if args.status is not None:
        _write_status(
            args.status,
            {
                "name": args.name,
                "state": "DONE" if code == 0 else "EXIT",
                "pid": os.getpid(),
                "exit_code": code,
                "start": start,
                "end": time.time(),
            },
        )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
