"""Chaos test: a production of 280 jobs through the LSF emulator, every fault on.

The emulator hides new jobs for a while, forgets finished ones quickly, fails
some jobs, shows UNKWN, ZOMBI and suspended states, and a background thread
keeps breaking ``bjobs`` calls in every way the emulator knows. The first
``bsub`` calls print no job id, print a preamble, or fail. At the end the
emulator's own record of what it ran is compared with the ledger: every job
is done, and every batch job belongs to exactly one ledger submission.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis.production import ledger as lg
from analysis.production.config import parse_config
from analysis.production.runner import Production, make_backend
from tests.lsf_emulator import lsfemu
from tests.lsf_emulator.harness import emulator

pytestmark = pytest.mark.filterwarnings(
    "ignore:Logger 'analysis[.a-z_]*' attempted to send logs to the API without "
    "a flow run id:UserWarning"
)

# A payload that starts in tens of milliseconds: write the seed, sleep a while.
PAYLOAD = [
    sys.executable, "-S", "-c",
    "import sys, time; time.sleep(float(sys.argv[3])); "
    "open(sys.argv[1], 'w').write(sys.argv[2])",
    "{output}", "{seed}", "{sleep}",
]  # fmt: skip
SAMPLES = [
    {"name": "a", "jobs": 170, "params": {"sleep": "0"}},
    {"name": "b", "jobs": 100, "params": {"sleep": "0"}},
    # Sample c runs long enough for a job to be escalated out of UNKWN, even
    # on a loaded machine where each bsub takes most of a second.
    {"name": "c", "jobs": 10, "params": {"sleep": "10"}},
]
ARRAYS = ["chaos.a.00000-00099.a1", "chaos.a.00100-00169.a1",
          "chaos.b.00000-00099.a1", "chaos.c.00000-00009.a1"]  # fmt: skip
# Element -> exit code. chaos.a.00004.a2 is the resubmission of element [5],
# so job a.00004 fails twice and passes on its third attempt.
FAILING = {
    "chaos.a.00000-00099.a1[5]": 3,
    "chaos.a.00004.a2": 6,
    "chaos.a.00000-00099.a1[50]": 4,
    "chaos.a.00100-00169.a1[10]": 3,
    "chaos.b.00000-00099.a1[100]": 2,
}
# bsub faults, used in this order by the four array submissions: the c
# array is never submitted, so its jobs are found missing and go out again
# as single jobs under the same attempt.
BSUB_FAULTS = ["silent", "preamble", "preamble", "lsf_down"]
BJOBS_FAULTS = sorted([*lsfemu.FAULT_MESSAGES, "truncated", "exit_nonzero"])
STATS = ["UNKWN", "ZOMBI", "PSUSP", "USUSP", "SSUSP"]
ESCALATED = "chaos.c.00003"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Path]:
    with emulator(tmp_path / "emu") as state:
        yield state


def _pending_faults(state: Path, command: str) -> int:
    with sqlite3.connect(state / "lsf.db", timeout=60) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM faults WHERE command = ?", (command,)
        ).fetchone()
    return int(count)


def _chaos(state: Path, stop: threading.Event, injected: Counter[str]) -> None:
    """Break one bjobs call at a time and flip array states, until ``stop``."""
    rng = random.Random(2024)
    next_override = 0.0
    while not stop.wait(0.15):
        if rng.random() < 0.35 and not _pending_faults(state, "bjobs"):
            kind = rng.choice(BJOBS_FAULTS)
            lsfemu.add_fault(state, "bjobs", kind)
            injected[kind] += 1
        now = time.monotonic()
        if now >= next_override and rng.random() < 0.3:
            # 0.4 s, shorter than unknown_escalate_s, and at least 3 s apart.
            # Even a loop slowed by load then polls the normal state between
            # two overrides, so it must wait each one out without escalating.
            lsfemu.override_stat(state, rng.choice(ARRAYS), rng.choice(STATS), 0.4)
            injected["override"] += 1
            next_override = now + 3.0


def _emulator_jobs(state: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(state / "lsf.db") as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT id, idx, name, stat, exit_code, killed FROM jobs")
        return [dict(row) for row in rows]


def test_chaos_no_job_lost_or_duplicated(emu: Path, tmp_path: Path) -> None:
    config = parse_config(
        {
            "name": "chaos",
            "run_dir": str(tmp_path / "run"),
            "backend": "lsf",
            "payload": PAYLOAD,
            "verify_outputs": False,
            "use_arrays": True,
            "array_max_size": 100,
            "array_limit": 10,
            "poll": {
                "interval_s": 0.1,
                "retry_initial_s": 0.05,
                "max_interval_s": 0.5,
                # Above the visibility lag, so that a silent bsub is found by
                # name before the grace period ends.
                "not_found_grace_s": 2.0,
                "unknown_escalate_s": 1.5,
            },
            "samples": SAMPLES,
        },
        tmp_path,
    )
    lsfemu.set_control(
        emu, lag_s=0.3, pend_s=0.1, clean_period_s=0.5, fail_names=FAILING
    )
    for kind in BSUB_FAULTS:
        lsfemu.add_fault(emu, "bsub", kind)
    # UNKWN for an hour: under load the single job c.00003 can be submitted
    # more than a minute after this line, and the override counts from here.
    lsfemu.override_stat(emu, f"{ESCALATED}.a1", "UNKWN", 3600)

    stop = threading.Event()
    injected: Counter[str] = Counter()
    chaos = threading.Thread(target=_chaos, args=(emu, stop, injected))
    chaos.start()
    production = Production(config, make_backend(config))
    try:
        result = production.run()
    finally:
        stop.set()
        chaos.join()
        production.close()
    with lg.Ledger(config.run_dir / "ledger.sqlite") as ledger:
        jobs = {job.name: job for job in ledger.jobs()}
        rows = ledger.submissions()
        escalated = [event["job"] for event in ledger.events("escalated")]

    # The faults really happened.
    assert _pending_faults(emu, "bsub") == 0, "every bsub fault was used"
    used = sum(injected.values()) - _pending_faults(emu, "bjobs")
    assert used >= 10, injected
    assert set(injected) == {*BJOBS_FAULTS, "override"}, injected

    # No job lost: all 280 done, each output contains its own seed.
    assert len(jobs) == 280
    assert result.jobs == 280
    assert {job.state for job in jobs.values()} == {lg.DONE}
    for plan in production.plans.values():
        (output,) = plan.outputs
        assert output.read_text() == str(plan.seed), plan.name

    # No batch name went to bsub twice.
    by_name = lsfemu.submissions_by_name(emu)
    assert max(by_name.values()) == 1, [n for n, c in by_name.items() if c > 1]

    # Every batch job the emulator ran belongs to exactly one ledger row, and
    # every ledger row with a job id names a job the emulator ran.
    emulated = _emulator_jobs(emu)
    emulator_ids = [
        f"{row['id']}[{row['idx']}]" if row["idx"] else str(row["id"])
        for row in emulated
    ]
    ledger_ids = [row["job_id"] for row in rows if row["job_id"] is not None]
    assert len(ledger_ids) == len(set(ledger_ids)), "a job id recorded twice"
    assert sorted(ledger_ids) == sorted(emulator_ids)

    # Rows without a job id are the c array that bsub never accepted; each of
    # those jobs went out again as a single job of the same attempt.
    unsubmitted = [row for row in rows if row["job_id"] is None]
    assert {row["batch_name"] for row in unsubmitted} == {ARRAYS[3]}
    assert len(unsubmitted) == 10
    for row in unsubmitted:
        later = [r for r in rows if r["job"] == row["job"] and r["seq"] > row["seq"]]
        assert later[0]["attempt"] == row["attempt"] == 1
        assert later[0]["batch_name"] == f"{row['job']}.a1"

    # Each failing element was resubmitted, with the emulator's exit code.
    exit_codes = {
        row["name"]: row["exit_code"] for row in emulated if not row["killed"]
    }
    assert jobs["chaos.a.00004"].failures == 2
    assert jobs["chaos.a.00004"].attempt == 3
    for name in ("chaos.a.00049", "chaos.a.00109", "chaos.b.00099"):
        assert jobs[name].failures == 1, name
        assert jobs[name].attempt == 2, name
    for row in rows:
        if row["status"] == lg.RETRY and row["exit_code"] is not None:
            element = row["batch_name"]
            if row["array_index"] is not None:
                element += f"[{row['array_index']}]"
            assert exit_codes[element] == row["exit_code"], element

    # The job stuck in UNKWN was killed once and resubmitted.
    assert escalated == [ESCALATED]
    assert jobs[ESCALATED].attempt == 2

    # Apart from escalated jobs, no job ran to success more than once.
    succeeded = set(_successful(emulated))
    successes = Counter(row["job"] for row in rows if row["job_id"] in succeeded)
    assert {job: n for job, n in successes.items() if n > 1} == {}


def _successful(emulated: list[dict[str, Any]]) -> list[str]:
    return [
        f"{row['id']}[{row['idx']}]" if row["idx"] else str(row["id"])
        for row in emulated
        if row["stat"] == "DONE" and not row["killed"]
    ]
