"""Benchmark one toy-based CLs upper limit with 10,000 toys per scan point.

The model is a one-bin signal region with every kind of modifier: background
2.0 +- 0.6 events (shapesys), five log-normal signal uncertainties, one PCA
component from 500 muon-ID toys, 4 expected signal events at mu = 1 and 3
observed. The limit scans 41 points (40 with toys). Target: under 60 s.

The reference, measured in the same run, is pyhf 0.7.6's own ToyCalculator at
one POI value on ``--pyhf-toys`` toys, scaled per toy and scan point:
``ratio = (pyhf seconds per toy and point) / (ours per toy and point)``.
Both timings include both hypotheses (s+b and background-only toys). Both
run with one BLAS thread, so the ratio compares one core with one core.

Run from the repository root::

    .venv/bin/python bench/bench_limit.py [--toys 10000] [--repeat 3] [--pyhf-toys 40]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyhf
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import limit
from analysis.outputs import write_json


def bench_inputs() -> limit.LimitInputs:
    """Return the benchmark model (the same as the tests' realistic model)."""
    rng = np.random.default_rng(5)
    return limit.LimitInputs(
        signal_reference=4.0,
        background=2.0,
        background_uncertainty=0.6,
        observed=3,
        signal_systematics={
            "tracking": 0.03,
            "muon_id": 0.04,
            "resolution_window": 0.02,
        },
        normalisation_systematics={"luminosity": 0.006, "cross_section": 0.01},
        toy_variations={"muon_id_toys": rng.normal(0.0, 0.05, size=(500, 1))},
    )


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--toys", type=int, default=10_000, help="toys per hypothesis and scan point"
    )
    parser.add_argument(
        "--points", type=int, default=41, help="scan points, including mu = 0"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed limits; the median is reported"
    )
    parser.add_argument(
        "--pyhf-toys",
        type=int,
        default=40,
        help="toys per hypothesis for pyhf's calculator at one POI value",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write the measurements as JSON here instead of printing them",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with threadpool_limits(limits=1):
        run(args)


def run(args: argparse.Namespace) -> None:
    """Time the limits and pyhf's calculator, then print or write the summary."""

    inputs = bench_inputs()
    toy_points = args.points - 1  # mu = 0 needs no toys

    runs = []
    result = None
    for seed in range(1, args.repeat + 1):
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        result = limit.upper_limit(
            inputs, n_toys=args.toys, seed=seed, n_points=args.points
        )
        runs.append(
            {
                "seed": seed,
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
                "load_before": load,
                "observed": result.observed,
                "observed_toy_error": result.observed_toy_error,
                "expected": list(result.expected),
            }
        )
        print(
            f"run {seed}: {runs[-1]['wall_s']:.1f} s wall, {runs[-1]['cpu_s']:.1f} s "
            f"CPU, load {load:.1f}, observed mu_UL {result.observed:.4f}"
        )
    assert result is not None
    median_wall = statistics.median(r["wall_s"] for r in runs)
    ours_per_toy = median_wall / (args.toys * toy_points)

    mu_test = float(np.median(result.expected))
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    limit.pyhf_toy_cls(inputs, mu_test, n_toys=args.pyhf_toys, seed=1)
    pyhf_wall = time.perf_counter() - wall
    pyhf_cpu = time.process_time() - cpu
    pyhf_per_toy = pyhf_wall / args.pyhf_toys
    median_cpu = statistics.median(r["cpu_s"] for r in runs)
    cpu_ratio = (pyhf_cpu / args.pyhf_toys) / (median_cpu / (args.toys * toy_points))
    print(
        f"pyhf ToyCalculator: {pyhf_wall:.1f} s for {args.pyhf_toys} toys at mu = "
        f"{mu_test:.3f}, load {load:.1f}"
    )

    summary = {
        "command": " ".join(["bench/bench_limit.py", *sys.argv[1:]]),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyhf": pyhf.__version__,
            "blas_threads": 1,
        },
        "toys_per_point": args.toys,
        "scan_points": args.points,
        "runs": runs,
        "median_wall_s": median_wall,
        "ours_s_per_toy_and_point": ours_per_toy,
        "pyhf_toys": args.pyhf_toys,
        "pyhf_wall_s": pyhf_wall,
        "pyhf_cpu_s": pyhf_cpu,
        "median_cpu_s": median_cpu,
        "speedup_per_toy_cpu": cpu_ratio,
        "pyhf_load_before": load,
        "pyhf_s_per_toy_and_point": pyhf_per_toy,
        "pyhf_estimated_limit_s": pyhf_per_toy * args.toys * toy_points,
        "speedup_per_toy": pyhf_per_toy / ours_per_toy,
    }
    print(
        f"median {median_wall:.1f} s for {args.toys} toys x {toy_points} points "
        f"({1e6 * ours_per_toy:.1f} us per toy and point); pyhf "
        f"{1e3 * pyhf_per_toy:.0f} ms per toy and point, "
        f"{summary['speedup_per_toy']:.0f} times slower in wall time "
        f"({cpu_ratio:.0f} in CPU time); a pyhf limit would take "
        f"about {summary['pyhf_estimated_limit_s'] / 3600:.1f} h"
    )
    if args.out:
        write_json(args.out, summary)
    else:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
