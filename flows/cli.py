"""The ``tau3mu`` command line.

    tau3mu demo                      generate the demo sample if missing, run it
    tau3mu run --config FILE         run the one-touch flow on a config
    tau3mu generate-demo             write the demo sample to data/demo/
    tau3mu generate --sample ...     write one generated ntuple

Without ``PREFECT_API_URL`` the flow runs against Prefect's ephemeral local
server, so nothing has to be started by hand.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.errors import AnalysisError

# Event counts of the demo dataset; configs/demo.yaml normalises to them.
DEMO_EVENTS = {
    "signal_events": 50_000,
    "taupair_events": 1_200_000,
    "qqbar_events": 2_400_000,
    "data_events": 900_000,
}
# The demo runs from any working directory: its files live in the checkout.
PROJECT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = str(PROJECT / "configs" / "demo.yaml")
DEMO_DIR = str(PROJECT / "data" / "demo")


def _generate_demo(outdir: str, seed: int, force: bool) -> None:
    from analysis.generate import generate_dataset

    names = ("signal", "taupair", "qqbar", "data")
    if not force and all((Path(outdir) / f"{n}.root").is_file() for n in names):
        print(f"demo sample already in {outdir}; use --force to regenerate")
        return
    start = time.perf_counter()
    samples = generate_dataset(outdir, seed=seed, **DEMO_EVENTS)
    for s in samples:
        print(
            f"  {s.name:8s} {s.n_events:>9d} events {s.n_candidates:>8d} "
            f"candidates -> {s.path}"
        )
    print(f"generated the demo sample in {time.perf_counter() - start:.1f} s")


def _print_summary(result: dict[str, Any]) -> None:
    limit = result["limit"]
    cl = round(100 * limit["cl"])
    expected = limit["n_upper_expected"]
    print()
    print(
        f"signal efficiency at the working point: "
        f"{result['working_point']['signal_efficiency']:.4f}"
    )
    background = result["working_point"]["background"]
    print(
        f"expected background in the signal region: {background['value']:.3g} "
        f"+- {background['uncertainty']:.2g} events ({background['method']})"
    )
    print(
        f"expected {cl}% CL upper limit on the signal yield: {expected[2]:.3g} "
        f"events (-1 sigma {expected[1]:.3g}, +1 sigma {expected[3]:.3g})"
    )
    if "br_upper_expected" in limit:
        br = limit["br_upper_expected"]
        print(
            f"expected {cl}% CL upper limit on B(tau -> 3mu): {br[2]:.3g} "
            f"(-1 sigma {br[1]:.3g}, +1 sigma {br[3]:.3g})"
        )
        if limit.get("br_upper_observed") is not None:
            print(
                f"observed {cl}% CL upper limit on B(tau -> 3mu): "
                f"{limit['br_upper_observed']:.3g}"
            )
    print(f"report: {result['report']}")


def _run(
    config: str, run_name: str | None, unblind: bool, force: bool, runs_dir: str
) -> int:
    from analysis.config import expand_files, load_config
    from flows.one_touch import one_touch

    # Check the config and its inputs before Prefect starts, so a typo is
    # reported in a second instead of after the server came up.
    try:
        checked = load_config(config)
        for sample in checked.samples:
            expand_files(sample)
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    # Prefect's logging setup, done on import, leaves httpx at INFO: one line
    # per API request. Keep those out of the terminal.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        result = one_touch(
            config=config,
            run_name=run_name,
            unblind=unblind,
            force=force,
            runs_dir=runs_dir,
        )
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    _print_summary(result)
    return 0


class Terminated(BaseException):
    """SIGTERM that reached the process: a batch system or a user stopped it."""


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tau3mu`` command."""
    parser = argparse.ArgumentParser(
        prog="tau3mu",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the one-touch analysis flow")
    run.add_argument("--config", required=True, help="analysis YAML file")
    run.add_argument("--run-name", help="run directory name (default: config name)")
    run.add_argument("--runs-dir", default="runs", help="folder of run directories")
    run.add_argument(
        "--unblind", action="store_true", help="look at data in the signal region"
    )
    run.add_argument("--force", action="store_true", help="recompute every stage")

    demo = sub.add_parser("demo", help="generate the demo sample and run it")
    demo.add_argument("--runs-dir", default="runs", help="folder of run directories")
    demo.add_argument("--force", action="store_true", help="recompute every stage")

    gen = sub.add_parser("generate-demo", help="write the demo sample")
    gen.add_argument("--outdir", default=DEMO_DIR)
    gen.add_argument("--seed", type=int, default=20261204)
    gen.add_argument("--force", action="store_true", help="overwrite existing files")

    sub.add_parser("generate", help="write one generated ntuple", add_help=False)

    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "generate":
        from analysis.generate import main as generate_main

        return generate_main(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    # Prefect's flow engine handles SIGTERM first (it kills the batch jobs)
    # and then sends it again. Raising an exception on that second signal
    # lets the temporary Prefect server stop instead of staying behind.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if args.command == "generate-demo":
            _generate_demo(args.outdir, args.seed, args.force)
            return 0
        if args.command == "demo":
            _generate_demo(DEMO_DIR, 20261204, force=False)
            return _run(DEMO_CONFIG, None, False, args.force, args.runs_dir)
        return _run(args.config, args.run_name, args.unblind, args.force, args.runs_dir)
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as err:
        code = 143 if isinstance(err, Terminated) else 130
        print(
            "cancelled: the flow stopped, and the batch jobs of the running stage "
            "(if any) were killed; rerun the same command to resume after the "
            "last finished stage",
            file=sys.stderr,
        )
        return code


if __name__ == "__main__":
    raise SystemExit(main())
