"""Benchmark the reading executors: worker processes against batch jobs.

Runs the ten-cut preselection of ``bench_reading.py`` on one dataset four ways,
each in a fresh process with ``POLARS_MAX_THREADS=1``:

- ``processes-1``: one process, the reference;
- ``processes-2``: two worker processes;
- ``batch-local``: one job per file group on the local backend, two at a time;
- ``batch-lsf``: the same jobs through the LSF emulator of the tests
  (``tests/lsf_emulator``: ``bsub`` starts local processes, ``bjobs`` is
  polled every second).

Every way must give the same cut-flow and the same table, or the script
stops. It compares hashes of the survivors' parquet bytes and of the cut-flow.
Wall times start after the imports of the measuring process and include,
for the batch ways, submission, polling and the merge.

Run from the repository root, after writing a dataset with
``bench_reading_generate.py``::

    .venv/bin/python bench/bench_batch_reading.py --data /tmp/bench-batch/data \
        --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench_batch_reading")

WAYS = ("processes-1", "processes-2", "batch-local", "batch-lsf")


def run_way(
    way: str, files: list[str], work: Path, files_per_job: int
) -> dict[str, Any]:
    """Read the dataset one way (in the child process) and hash the results."""
    from analysis.batch_reading import BatchSettings
    from analysis.preselection import SampleSelection, select_sample
    from analysis.production.config import LocalSettings, PollSettings
    from bench.bench_reading import CUTS, KEEP, SCALE, TREE

    batch = None
    workers = 1
    if way == "processes-2":
        workers = 2
    elif way.startswith("batch-"):
        batch = BatchSettings(
            backend=way.removeprefix("batch-"),
            files_per_job=files_per_job,
            work_dir=work,
            local=LocalSettings(max_concurrent=2),
            poll=PollSettings(interval_s=1.0, retry_initial_s=0.5),
        )
    spec = SampleSelection(
        name="bench",
        files=[Path(f) for f in files],
        tree=TREE,
        cuts=[(name, cut) for name, cut, _ in CUTS],
        keep=KEEP,
        scale=SCALE,
        workers=workers,
        batch=batch,
    )
    start = time.perf_counter()
    table, flow = select_sample(spec)
    wall = time.perf_counter() - start
    buffer = io.BytesIO()
    table.write_parquet(buffer)
    return {
        "wall_s": wall,
        "rows": table.height,
        "table_sha": hashlib.sha256(buffer.getvalue()).hexdigest(),
        "flow_sha": hashlib.sha256(
            json.dumps([s.as_row() for s in flow]).encode()
        ).hexdigest(),
    }


def measure(
    way: str, files: list[str], files_per_job: int, emu: Path
) -> dict[str, Any]:
    """Run one way in a fresh process and return its report."""
    env = {**os.environ, "POLARS_MAX_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if way == "batch-lsf":
        emulator = Path(__file__).resolve().parents[1] / "tests" / "lsf_emulator"
        env["PATH"] = f"{emulator}{os.pathsep}{env.get('PATH', '')}"
        env["LSFEMU_DIR"] = str(emu)
        env["LSFEMU_PYTHON"] = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as work:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            way,
            "--work",
            work,
            "--files-per-job",
            str(files_per_job),
            *files,
        ]
        load = os.getloadavg()[0]
        result = subprocess.run(
            argv, capture_output=True, text=True, env=env, check=False, timeout=3600
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"{way} failed with exit code {result.returncode}:\n{result.stderr[-3000:]}"
        )
    report = dict(json.loads(result.stdout.strip().splitlines()[-1]))
    report["load_before"] = load
    log.info("%s: %.1f s wall, load %.1f", way, report["wall_s"], load)
    return report


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every way ``args.repeat`` times, interleaved; return all reports."""
    files = sorted(str(p) for p in Path(args.data).glob("part-*.root"))
    if len(files) < 2:
        raise SystemExit(f"no part-*.root files in {args.data}; generate them first")
    for path in files:
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    reports: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="bench-lsfemu-") as emu:
        for repetition in range(args.repeat):
            log.info("repetition %d of %d", repetition + 1, args.repeat)
            for way in WAYS:
                reports[way].append(
                    measure(
                        way, files, args.files_per_job, Path(emu) / f"r{repetition}"
                    )
                )
        from tests.lsf_emulator import lsfemu

        for repetition in range(args.repeat):
            state = Path(emu) / f"r{repetition}"
            if state.exists():
                lsfemu.shutdown(state)
    hashes = {(r["table_sha"], r["flow_sha"]) for way in WAYS for r in reports[way]}
    if len(hashes) != 1:
        raise RuntimeError(f"the ways disagree: {hashes}")
    return {
        "files": len(files),
        "files_per_job": args.files_per_job,
        "reports": reports,
    }


def summarize(results: dict[str, Any]) -> str:
    """Format medians and ratios to the one-process run as Markdown."""
    reports = results["reports"]
    reference = [r["wall_s"] for r in reports["processes-1"]]
    lines = [
        f"{results['files']} files, {results['files_per_job']} per batch job; "
        f"{reports['processes-1'][0]['rows']} survivors, identical in every run.",
        "",
        "| way | wall s (median) | / processes-1 (median of ratios) | runs (s) |",
        "|---|---:|---:|---|",
    ]
    for way in WAYS:
        walls = [r["wall_s"] for r in reports[way]]
        ratios = [w / ref for w, ref in zip(walls, reference, strict=True)]
        lines.append(
            f"| {way} | {statistics.median(walls):.1f} | "
            f"{statistics.median(ratios):.2f} | "
            + ", ".join(f"{w:.1f}" for w in walls)
            + " |"
        )
    loads = [r["load_before"] for way in WAYS for r in reports[way]]
    lines.append("")
    lines.append(
        f"Load average (1 min) before the runs: {min(loads):.1f} to {max(loads):.1f}."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the benchmark or one child."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default="/tmp/bench-batch/data", help="dataset folder"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions")
    parser.add_argument("--files-per-job", type=int, default=1, help="files per job")
    parser.add_argument(
        "--out", default="/tmp/bench-batch/results.json", help="results JSON"
    )
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        report = run_way(args.child, args.files, Path(args.work), args.files_per_job)
        print(json.dumps(report))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = benchmark(args)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(summarize(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
