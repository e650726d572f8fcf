"""Toy job payload for the tests: write a small ROOT ntuple with uproot.

Options make it slow (``--sleep``), fail (``--exit-code``), fail only on the
first N runs (``--fail-times`` with ``--counter``) or write an empty tree
(``--entries 0``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import uproot


def main() -> int:
    """Write the ntuple or fail as the options request; return the exit code."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--tree", default="tau3mu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--entries", type=int, default=10)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--fail-times", type=int, default=0)
    parser.add_argument("--counter", type=Path)
    args = parser.parse_args()

    time.sleep(args.sleep)
    if args.fail_times and args.counter is not None:
        runs = int(args.counter.read_text()) if args.counter.exists() else 0
        args.counter.write_text(str(runs + 1))
        if runs < args.fail_times:
            print(f"toy payload: failing run {runs + 1} of {args.fail_times}")
            return 3
    if args.exit_code:
        return args.exit_code
    rng = np.random.default_rng(args.seed)
    with uproot.recreate(args.output) as handle:
        tree = handle.mktree(args.tree, {"M": "f8"})
        tree.extend({"M": rng.uniform(1.3, 2.2, args.entries)})
    print(f"toy payload: wrote {args.entries} entries to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
