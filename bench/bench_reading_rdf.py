"""Run the reading benchmark's preselection with ROOT RDataFrame, single-threaded.

This script runs in the benchmark-only virtualenv that has ROOT (never in the
project's own), so it imports nothing from the project. ``bench_reading.py``
starts it with a JSON job file and reads one JSON line from its output::

    /tmp/rootenv/bin/python bench/bench_reading_rdf.py JOB.json

The job file gives the tree, the files, the cuts in C++ with branch names,
the weight scale and the columns to keep. The event loop books one ``Count``
and one ``Sum`` of the weight per step and returns the surviving candidates'
columns with ``AsNumpy``, which runs every booked action in one loop.
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time


def _peak_kb() -> int:
    with open("/proc/self/status") as handle:
        match = re.search(r"VmHWM:\s+(\d+) kB", handle.read())
    return int(match.group(1)) if match else -1


def main(argv: list[str]) -> int:
    """Run one job and print its timings and cut-flow as one JSON line."""
    with open(argv[1]) as handle:
        job = json.load(handle)

    import ROOT

    # Load the RDataFrame library before the clock starts, as the other ways
    # are timed after their imports too.
    ROOT.RDataFrame  # noqa: B018
    ROOT.ROOT.DisableImplicitMT()

    start_wall = time.perf_counter()
    start_cpu = time.process_time()
    frame = ROOT.RDataFrame(job["tree"], job["files"])
    node = frame.Define("weight", f"__weight__ * {float(job['scale'])!r}")
    counts = [node.Count()]
    sums = [node.Sum("weight")]
    for name, cut in job["cuts"]:
        node = node.Filter(cut, name)
        counts.append(node.Count())
        sums.append(node.Sum("weight"))
    kept = node.AsNumpy(job["keep"])
    flow = [int(c.GetValue()) for c in counts]
    weighted = [float(s.GetValue()) for s in sums]
    wall = time.perf_counter() - start_wall
    cpu = time.process_time() - start_cpu

    rows = len(kept[job["keep"][0]])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu,
                "candidates": flow,
                "weighted_candidates": weighted,
                "rows": rows,
                "peak_mb": _peak_kb() / 1024,
                "process_cpu_s": usage.ru_utime + usage.ru_stime,
                "root_version": str(ROOT.gROOT.GetVersion()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
