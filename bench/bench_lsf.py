"""Benchmark: many trivial jobs through the LSF emulator.

Each job sleeps 5 s, at most 100 at a time per array of 1000. Measures, per
poll cycle of the production loop, the number of ``bjobs``
calls (target 1) and the orchestrator's CPU time (target < 0.5 s), with
10,000 jobs submitted as job arrays. The reference, measured in the same run,
is the CPU time of ``json.loads`` on one ``bjobs -json`` output for all jobs:
the least work any poll cycle has to do.

    python bench/bench_lsf.py [--jobs 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from analysis.production.config import parse_config  # noqa: E402
from analysis.production.runner import Production, make_backend  # noqa: E402
from tests.lsf_emulator import lsfemu  # noqa: E402
from tests.lsf_emulator.harness import emulator  # noqa: E402


class TimedProduction(Production):
    """Production that records CPU time and bjobs calls of each poll cycle."""

    def __init__(self, *args: object, state: Path, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.state = state
        self.cycles: list[dict[str, float]] = []

    def _poll_once(self) -> None:
        calls = lsfemu.count_calls(self.state, "bjobs")
        cpu, wall = time.process_time(), time.perf_counter()
        super()._poll_once()
        self.cycles.append(
            {
                "cpu_s": time.process_time() - cpu,
                "wall_s": time.perf_counter() - wall,
                "bjobs": lsfemu.count_calls(self.state, "bjobs") - calls,
            }
        )


def reference_parse_cpu(state: Path, jobs: int) -> float:
    """CPU seconds of json.loads on one bjobs -json output for ``jobs`` records."""
    record = {"JOBID": "1001", "JOBINDEX": "1", "STAT": "RUN", "EXIT_CODE": "",
              "JOB_NAME": "bench.s.00000-00999.a1[1]"}  # fmt: skip
    text = json.dumps({"COMMAND": "bjobs", "JOBS": jobs, "RECORDS": [record] * jobs})
    start = time.process_time()
    json.loads(text)
    return time.process_time() - start


def run_once(jobs: int, workdir: Path) -> dict[str, float]:
    """Run one production of ``jobs`` trivial jobs; return per-cycle statistics."""
    state = workdir / "emu"
    with emulator(state):
        config = parse_config(
            {
                "name": "bench",
                "run_dir": str(workdir / "run"),
                "backend": "lsf",
                "payload": ["sleep", "5"],
                "job_wrapper": False,
                "verify_outputs": False,
                "use_arrays": True,
                "array_limit": 100,
                "array_max_size": 1000,
                "poll": {"interval_s": 2.0, "submit_per_cycle": jobs},
                "samples": [{"name": "s", "jobs": jobs}],
            },
            workdir,
        )
        production = TimedProduction(config, make_backend(config), state=state)
        start = time.perf_counter()
        production.run()
        total = time.perf_counter() - start
        production.close()
        reference = reference_parse_cpu(state, jobs)
        submissions = sum(lsfemu.submissions_by_name(state).values())
    cycles = production.cycles
    cpu = [c["cpu_s"] for c in cycles]
    return {
        "cycles": len(cycles),
        "bjobs_per_cycle_max": max(c["bjobs"] for c in cycles),
        "bjobs_per_cycle_median": statistics.median(c["bjobs"] for c in cycles),
        "cpu_per_cycle_median_s": statistics.median(cpu),
        "cpu_per_cycle_max_s": max(cpu),
        "reference_parse_cpu_s": reference,
        "ratio_median_to_reference": statistics.median(cpu) / max(reference, 1e-9),
        "bsub_calls": submissions,
        "wall_total_s": total,
    }


def main() -> int:
    """Run the benchmark and print one JSON line per run and a median summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000, help="number of jobs")
    parser.add_argument("--repeat", type=int, default=3, help="number of runs")
    args = parser.parse_args()
    uname = subprocess.run(["uname", "-srm"], capture_output=True, text=True)
    print(
        f"# {args.jobs} jobs, {args.repeat} runs, {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}, {uname.stdout.strip()}"
    )
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-lsf-") as folder:
            result = run_once(args.jobs, Path(folder))
        runs.append(result)
        print(json.dumps(result), flush=True)
    summary = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print("median over runs:", json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
