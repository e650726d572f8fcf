"""Benchmark the ten-cut preselection against ROOT RDataFrame and plain uproot.

Three ways run the same ten cuts over the same files, each in its own process
with one thread (``POLARS_MAX_THREADS=1``, RDataFrame without implicit
multi-threading):

``ours``
    ``analysis.preselection.select_sample``: chunked reading of the needed
    branches, the cuts parsed from basf2/C++ text, the cut-flow with events
    and weights, and the surviving candidates as a polars table.
``rdf``
    ROOT RDataFrame (``bench_reading_rdf.py`` in the ROOT virtualenv): the same
    cuts written in C++ with branch names, one ``Count`` and one weight
    ``Sum`` per step, survivors through ``AsNumpy``. It counts no events and
    builds no event ids, which ``ours`` does.
``uproot``
    ``TTree.iterate`` over the same branches and chunk size, doing nothing
    with the arrays: the cost of reading alone.

Each process times its work after its imports (wall and CPU seconds) and
reports its peak resident memory (VmHWM). The three ways run interleaved in
every repetition, so a change of machine load hits all of them; the ratios
are taken within a repetition and their median is reported. ``ours`` also
runs with 2 worker processes. The cut-flows of ``ours`` and ``rdf`` must
agree candidate for candidate, or the script stops.

Write the dataset first with ``bench_reading_generate.py``, then run from the
repository root::

    .venv/bin/python bench/bench_reading.py --data /tmp/bench-reading \
        --root-python /tmp/rootenv/bin/python --repeat 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench_reading")

HERE = Path(__file__).resolve().parent
TREE = "tau3mu"
SCALE = 0.5

# (name, cut as analysts write it, the same cut in C++ with branch names).
CUTS = [
    (
        "muon ID",
        "daughter(0, muonID) > 0.5 and daughter(1, muonID) > 0.5 "
        "and daughter(2, muonID) > 0.5",
        "daughter__bo0__cm__spmuonID__bc > 0.5 && daughter__bo1__cm__spmuonID__bc "
        "> 0.5 && daughter__bo2__cm__spmuonID__bc > 0.5",
    ),
    (
        "electron veto",
        "daughter(0, electronID) < 0.2 && daughter(1, electronID) < 0.2 "
        "&& daughter(2, electronID) < 0.2",
        "daughter__bo0__cm__spelectronID__bc < 0.2 && "
        "daughter__bo1__cm__spelectronID__bc < 0.2 && "
        "daughter__bo2__cm__spelectronID__bc < 0.2",
    ),
    ("vertex fit", "chiProb > 0.01", "chiProb > 0.01"),
    (
        "impact parameter",
        "[abs(daughter(0, dr)) < 0.5] and [abs(daughter(1, dr)) < 0.5] "
        "and [abs(daughter(2, dr)) < 0.5]",
        "std::abs(daughter__bo0__cm__spdr__bc) < 0.5 && "
        "std::abs(daughter__bo1__cm__spdr__bc) < 0.5 && "
        "std::abs(daughter__bo2__cm__spdr__bc) < 0.5",
    ),
    ("longitudinal", "fabs(dz) < 0.25", "std::abs(dz) < 0.25"),
    ("thrust", "0.89 < thrust < 0.975", "thrust > 0.89 && thrust < 0.975"),
    (
        "missing momentum",
        "missingMomentumOfEventCMS > 0.5 && missingMass2OfEvent < 10",
        "missingMomentumOfEventCMS > 0.5 && missingMass2OfEvent < 10",
    ),
    (
        "visible energy",
        "visibleEnergyOfEventCMS < 9.5 and extraInfo(BDT) > 0.05",
        "visibleEnergyOfEventCMS < 9.5 && extraInfo__boBDT__bc > 0.05",
    ),
    (
        "multiplicity",
        "nTracks <= 6 && nKLMClusters < 6 && passesTrigger == 1",
        "nTracks <= 6 && nKLMClusters < 6 && passesTrigger == 1",
    ),
    (
        "fit window",
        "1.5 < M < 2.0 and -0.6 < deltaE < 0.3",
        "M > 1.5 && M < 2.0 && deltaE > -0.6 && deltaE < 0.3",
    ),
]

# Branches kept for the later stages: fit variables and BDT features.
KEEP = [
    "M",
    "deltaE",
    "useCMSFrame__bop__bc",
    "useCMSFrame__boE__bc",
    "chiProb",
    "thrust",
    "missingMomentumOfEventCMS",
    "missingMass2OfEvent",
    "visibleEnergyOfEventCMS",
    "nTracks",
    "daughter__bo0__cm__spmuonID__bc",
    "daughter__bo1__cm__spmuonID__bc",
    "daughter__bo2__cm__spmuonID__bc",
    "extraInfo__boBDT__bc",
    "R2",
    "isSignal",
]


def _peak_mb() -> float:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else -1.0


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def needed_branches(files: list[str]) -> list[str]:
    """Return the branches the preselection reads (cuts, keep, event keys)."""
    from analysis.cuts import parse_cut
    from analysis.ntuple import EVENT_BRANCHES, tree_branches
    from analysis.preselection import WEIGHT_BRANCH

    available = tree_branches(files[0], TREE)
    needed = set(KEEP) | set(EVENT_BRANCHES) | {WEIGHT_BRANCH}
    for _, cut, _ in CUTS:
        needed |= parse_cut(cut, available).variables
    return sorted(needed)


def run_ours(files: list[str], workers: int, step_size: str) -> dict[str, Any]:
    """Child process: the project's preselection."""
    from analysis.preselection import SampleSelection, select_sample

    spec = SampleSelection(
        name="bench",
        files=[Path(f) for f in files],
        tree=TREE,
        cuts=[(name, cut) for name, cut, _ in CUTS],
        keep=KEEP,
        scale=SCALE,
        step_size=step_size,
        workers=workers,
    )
    start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
    table, flow = select_sample(spec)
    return {
        "wall_s": time.perf_counter() - start_wall,
        "cpu_s": _cpu_seconds() - start_cpu,
        "candidates": [s.candidates for s in flow],
        "events": [s.events for s in flow],
        "weighted_candidates": [s.weighted_candidates for s in flow],
        "rows": table.height,
        "peak_mb": _peak_mb(),
        "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def run_uproot(files: list[str], step_size: str) -> dict[str, Any]:
    """Child process: read the needed branches with uproot and nothing else."""
    import uproot

    branches = needed_branches(files)
    start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
    entries = 0
    for path in files:
        with uproot.open(path) as handle:
            for arrays in handle[TREE].iterate(
                branches, step_size=step_size, library="np"
            ):
                entries += len(arrays[branches[0]])
    return {
        "wall_s": time.perf_counter() - start_wall,
        "cpu_s": _cpu_seconds() - start_cpu,
        "entries": entries,
        "branches": len(branches),
        "peak_mb": _peak_mb(),
    }


def _child(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, check=False, timeout=3600
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"benchmark child {argv[:3]} failed with exit code "
            f"{result.returncode}:\n{result.stderr[-3000:]}"
        )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def measure(
    way: str,
    files: list[str],
    args: argparse.Namespace,
    job_file: Path,
    workers: int = 1,
) -> dict[str, Any]:
    """Run one way in a fresh single-threaded process and return its report."""
    env = {
        **os.environ,
        "POLARS_MAX_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    if way == "rdf":
        job = {
            "tree": TREE,
            "files": files,
            "cuts": [(name, cpp) for name, _, cpp in CUTS],
            "keep": KEEP,
            "scale": SCALE,
        }
        job_file.write_text(json.dumps(job))
        argv = [args.root_python, str(HERE / "bench_reading_rdf.py"), str(job_file)]
    else:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            way,
            "--workers",
            str(workers),
            "--step-size",
            args.step_size,
            *files,
        ]
    load = os.getloadavg()[0]
    report = _child(argv, env)
    report["load_before"] = load
    report["load_after"] = os.getloadavg()[0]
    log.info(
        "%s workers=%d files=%d: %.1f s wall, %.1f s cpu, %.0f MB peak, load %.1f",
        way,
        workers,
        len(files),
        report["wall_s"],
        report["cpu_s"],
        report["peak_mb"],
        load,
    )
    return report


def _check_agreement(ours: dict[str, Any], rdf: dict[str, Any]) -> None:
    if ours["candidates"] != rdf["candidates"]:
        raise RuntimeError(
            f"cut-flows differ: ours {ours['candidates']}, "
            f"RDataFrame {rdf['candidates']}"
        )
    for a, b in zip(
        ours["weighted_candidates"], rdf["weighted_candidates"], strict=True
    ):
        # Sums of up to 2e7 weights in another order: 1e-9 relative covers it.
        if abs(a - b) > 1e-9 * max(abs(a), 1.0):
            raise RuntimeError(f"weighted cut-flows differ: ours {a}, RDataFrame {b}")
    if ours["rows"] != rdf["rows"]:
        raise RuntimeError(f"survivors differ: ours {ours['rows']}, RDF {rdf['rows']}")


def _median(reports: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in reports)


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every way on the large and the small file set; return all reports."""
    files = sorted(str(p) for p in Path(args.data).glob("part-*.root"))
    if len(files) < 2:
        raise SystemExit(f"no part-*.root files in {args.data}; generate them first")
    small = files[: max(1, len(files) // 4)]
    # Read every file once so that all ways start from the page cache.
    for path in files:
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass

    ways = ["uproot", "ours", "rdf"]
    results: dict[str, Any] = {"large": {w: [] for w in ways}, "small": {}}
    results["large"]["ours_2_workers"] = []
    with tempfile.TemporaryDirectory() as tmp:
        job = Path(tmp) / "job.json"
        for repetition in range(args.repeat):
            log.info("repetition %d of %d", repetition + 1, args.repeat)
            for way in ways:
                results["large"][way].append(measure(way, files, args, job))
            _check_agreement(results["large"]["ours"][-1], results["large"]["rdf"][-1])
            results["large"]["ours_2_workers"].append(
                measure("ours", files, args, job, workers=2)
            )
        for way in ways:
            results["small"][way] = [measure(way, small, args, job)]

    results["files"] = {"large": len(files), "small": len(small)}
    results["candidates"] = {
        "large": results["large"]["ours"][0]["candidates"][0],
        "small": results["small"]["ours"][0]["candidates"][0],
    }
    return results


def summarize(results: dict[str, Any]) -> str:
    """Format the medians and the per-repetition ratios as Markdown."""
    large = results["large"]
    lines = [
        "| way | wall s (median) | cpu s (median) | peak MB | load avg |",
        "|---|---:|---:|---:|---:|",
    ]
    for way, reports in large.items():
        peak = f"{max(r['peak_mb'] for r in reports):.0f}"
        if way == "ours_2_workers":
            worker = max(r["worker_peak_mb"] for r in reports)
            peak += f" + 2 x {worker:.0f}"
        lines.append(
            f"| {way} | {_median(reports, 'wall_s'):.1f} "
            f"| {_median(reports, 'cpu_s'):.1f} | {peak} "
            f"| {_median(reports, 'load_before'):.1f} |"
        )
    ratios = []
    for key in ("wall_s", "cpu_s"):
        for other in ("rdf", "uproot"):
            values = [
                ours[key] / ref[key]
                for ours, ref in zip(large["ours"], large[other], strict=True)
            ]
            ratios.append(
                f"| ours / {other} ({key[:-2]}) | {statistics.median(values):.2f} "
                f"| {', '.join(f'{v:.2f}' for v in values)} |"
            )
    speedup = [
        one["wall_s"] / two["wall_s"]
        for one, two in zip(large["ours"], large["ours_2_workers"], strict=True)
    ]
    ratios.append(
        f"| 1 worker / 2 workers (wall) | {statistics.median(speedup):.2f} "
        f"| {', '.join(f'{v:.2f}' for v in speedup)} |"
    )
    memory = [
        f"| {way} | {results['small'][way][0]['peak_mb']:.0f} "
        f"| {max(r['peak_mb'] for r in large[way]):.0f} |"
        for way in ("ours", "rdf", "uproot")
    ]
    candidates = results["candidates"]
    return "\n".join(
        [
            f"{candidates['large']} candidates in {results['files']['large']} files",
            "",
            *lines,
            "",
            "| ratio | median | per repetition |",
            "|---|---:|---|",
            *ratios,
            "",
            f"| peak memory MB | {candidates['small']} candidates "
            f"| {candidates['large']} candidates |",
            "|---|---:|---:|",
            *memory,
            "",
            "cut-flow (ours = RDataFrame): "
            + ", ".join(str(c) for c in large["ours"][0]["candidates"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: run the benchmark, or one child run with --child."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/tmp/bench-reading", help="dataset folder")
    parser.add_argument(
        "--root-python",
        default="/tmp/rootenv/bin/python",
        help="python of the virtualenv that has ROOT",
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions")
    parser.add_argument("--step-size", default="64 MB", help="chunk size in bytes")
    parser.add_argument(
        "--output", type=Path, default=None, help="write all reports as JSON here"
    )
    parser.add_argument("--child", choices=["ours", "uproot"], help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "ours":
        print(json.dumps(run_ours(args.files, args.workers, args.step_size)))
        return 0
    if args.child == "uproot":
        print(json.dumps(run_uproot(args.files, args.step_size)))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = benchmark(args)
    if args.output is not None:
        from analysis.outputs import write_json

        write_json(args.output, results)
    print(summarize(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
