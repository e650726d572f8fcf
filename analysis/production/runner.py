"""The production loop: submit, poll once per cycle, verify, resubmit, list outputs.

:class:`Production` drives one run against a backend and the run's ledger.
It never imports Prefect; ``flows/production.py`` wraps it in a flow.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import BatchError, ConfigError, InputFileError
from analysis.outputs import write_json
from analysis.production import jobwrap
from analysis.production import ledger as lg
from analysis.production.batch import (
    SUSPENDED,
    ArraySpec,
    BatchBackend,
    JobSpec,
    JobState,
    JobStatus,
    TransientBatchError,
    read_job_report,
    split_id,
)
from analysis.production.config import ProductionConfig
from analysis.production.local import LocalBackend
from analysis.production.lsf import LsfBackend
from analysis.production.plan import JobPlan, build_plan
from analysis.production.verify import verify_root_output

log = logging.getLogger(__name__)

LEDGER_NAME = "ledger.sqlite"
OUTPUTS_NAME = "outputs.json"
LOCK_NAME = ".production.lock"
#: Seconds between two log lines with the count of jobs per state.
STATUS_EVERY_S = 60.0


class ProductionCancelled(BaseException):
    """The production was cancelled (SIGTERM or a stop request)."""


@dataclass(frozen=True)
class ProductionResult:
    """Outcome of a finished production.

    Attributes:
        outputs: verified output files per sample, in job order.
        entries: number of tree entries per sample, summed over its outputs.
        jobs: number of jobs.
        submissions: number of submissions in the ledger, all runs included.
        listing: JSON file listing the outputs for the analysis flow.
    """

    outputs: dict[str, list[Path]]
    entries: dict[str, int]
    jobs: int
    submissions: int
    listing: Path


@contextmanager
def production_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder while a production runs in it.

    Two loops on one ledger would both submit the waiting jobs, so a second
    run into the same folder is rejected at once. The kernel releases the
    lock when the process ends, even by SIGKILL, so a rerun after a crash
    never finds a stale lock.

    Raises:
        BatchError: another process holds the lock.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held open while locked
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise BatchError(
            f"run folder {run_dir} is in use by another production (pid {holder}); "
            "wait for it to finish or give this production another run_dir"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def make_backend(config: ProductionConfig, backend: str | None = None) -> BatchBackend:
    """Return the backend named by ``backend`` (or the config's) for this run."""
    name = backend or config.backend
    if name == "local":
        return LocalBackend(
            config.run_dir / "local-jobs", max_concurrent=config.local.max_concurrent
        )
    if name == "lsf":
        return LsfBackend(config.lsf)
    raise ConfigError(f"backend {name!r} is invalid: use 'local' or 'lsf'")


class Production:
    """One production run: plan, ledger and backend.

    Args:
        config: validated production config.
        backend: batch backend the jobs go to.
        stop: when set, the loop cancels the run and kills its jobs.
        clock: Unix time source, replaceable in tests.
        progress: called as ``progress(jobs_done, jobs_total)`` after each
            poll cycle in which the number of finished jobs changed.
    """

    def __init__(
        self,
        config: ProductionConfig,
        backend: BatchBackend,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.backend = backend
        self.stop = stop or threading.Event()
        self.clock = clock
        self.plans = {plan.name: plan for plan in build_plan(config)}
        self.ledger_path = config.run_dir / LEDGER_NAME
        self.bjobs_cycles = 0
        self._reported_done = -1
        self._last_status = -math.inf
        self._ledger: lg.Ledger | None = None

    @property
    def ledger(self) -> lg.Ledger:
        """The run's ledger, opened on first use."""
        if self._ledger is None:
            self._ledger = lg.Ledger(self.ledger_path)
        return self._ledger

    def close(self) -> None:
        """Close the ledger and the backend."""
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        self.backend.close()

    # --- commands of jobs --------------------------------------------------

    def _python(self) -> str:
        if isinstance(self.backend, LsfBackend) and self.config.lsf.python:
            return self.config.lsf.python
        return sys.executable

    def _command(self, spec_file: Path, argv: list[str], write: bool) -> list[str]:
        if self.backend.name == "local" or not self.config.job_wrapper:
            return argv
        if write:
            write_json(spec_file, {"argv": argv})
        return [self._python(), str(Path(jobwrap.__file__)), "--spec", str(spec_file)]

    def _single_spec(self, plan: JobPlan, attempt: int, write: bool) -> JobSpec:
        batch_name = f"{plan.name}.a{attempt}"
        logs = self.config.run_dir / "logs" / plan.sample
        spec_file = self.config.run_dir / "jobs" / f"{batch_name}.json"
        if write:
            logs.mkdir(parents=True, exist_ok=True)
            for output in plan.outputs:
                output.parent.mkdir(parents=True, exist_ok=True)
        return JobSpec(
            name=batch_name,
            command=self._command(spec_file, plan.argv, write),
            log_out=logs / f"{batch_name}.out",
            log_err=logs / f"{batch_name}.err",
            cwd=self.config.run_dir,
        )

    def _array_spec(self, plans: list[JobPlan], write: bool) -> ArraySpec:
        first, last = plans[0], plans[-1]
        name = (
            f"{self.config.name}.{first.sample}.{first.index:05d}-{last.index:05d}.a1"
        )
        logs = self.config.run_dir / "logs" / first.sample
        spec_file = self.config.run_dir / "jobs" / f"{name}.json"
        if self.config.job_wrapper:
            if write:
                elements = {str(i + 1): plan.argv for i, plan in enumerate(plans)}
                write_json(spec_file, {"elements": elements})
            command = [
                self._python(),
                str(Path(jobwrap.__file__)),
                "--spec",
                str(spec_file),
            ]
        else:
            if any(plan.argv != first.argv for plan in plans):
                raise ConfigError(
                    f"use_arrays without job_wrapper needs the same payload argv for "
                    f"every job, but sample {first.sample!r} jobs differ; set "
                    "job_wrapper: true"
                )
            command = first.argv
        if write:
            logs.mkdir(parents=True, exist_ok=True)
            for plan in plans:
                for output in plan.outputs:
                    output.parent.mkdir(parents=True, exist_ok=True)
        return ArraySpec(
            name=name,
            size=len(plans),
            limit=self.config.array_limit,
            command=command,
            log_out=logs / f"{name}.%I.out",
            log_err=logs / f"{name}.%I.err",
            cwd=self.config.run_dir,
        )

    def _groups(self, jobs: list[lg.JobRecord]) -> list[list[lg.JobRecord]]:
        """Group first submissions into arrays (when enabled); others stay single."""
        use_arrays = self.config.use_arrays and self.backend.supports_arrays
        groups: list[list[lg.JobRecord]] = []
        by_sample: dict[str, list[lg.JobRecord]] = {}
        for job in jobs:
            if use_arrays and job.state == lg.PLANNED and job.attempt == 0:
                by_sample.setdefault(job.sample, []).append(job)
            else:
                groups.append([job])
        size = self.config.array_max_size
        for sample_jobs in by_sample.values():
            for start in range(0, len(sample_jobs), size):
                groups.append(sample_jobs[start : start + size])
        return groups

    def dry_run(self) -> list[list[str]]:
        """Return the submission argv of every job (or array), submitting nothing."""
        jobs = [
            lg.JobRecord(
                name=p.name,
                sample=p.sample,
                index=p.index,
                state=lg.PLANNED,
                attempt=0,
                failures=0,
                batch_name=None,
                array_index=None,
                job_id=None,
                stat=None,
                exit_code=None,
                reason=None,
                log_out=None,
                log_err=None,
                outputs=p.outputs,
                argv=p.argv,
                submitted_at=None,
                unknown_since=None,
                not_found_since=None,
            )
            for p in self.plans.values()
        ]
        argvs = []
        for group in self._groups(jobs):
            if len(group) > 1 or (
                self.config.use_arrays and self.backend.supports_arrays
            ):
                spec = self._array_spec(
                    [self.plans[j.name] for j in group], write=False
                )
                argvs.append(self.backend.submit_array_argv(spec))
            else:
                spec1 = self._single_spec(self.plans[group[0].name], 1, write=False)
                argvs.append(self.backend.submit_argv(spec1))
        return argvs

    # --- submission --------------------------------------------------------

    def _submit_ready(self) -> None:
        if not self.ledger.count(lg.WAITING):
            return
        waiting = self.ledger.jobs(lg.WAITING, limit=self.config.poll.submit_per_cycle)
        for group in self._groups(waiting):
            if self.stop.is_set():
                return
            try:
                if len(group) > 1 or (
                    group[0].state == lg.PLANNED
                    and (self.config.use_arrays and self.backend.supports_arrays)
                ):
                    self._submit_array(group)
                else:
                    self._submit_single(group[0])
            except TransientBatchError as err:
                log.warning(
                    "bsub failed (%s); the jobs are looked up by name before "
                    "any resubmission",
                    err,
                )
                return

    def _submit_single(self, job: lg.JobRecord) -> None:
        same_attempt = job.state == lg.LOST
        attempt = job.attempt if same_attempt else job.attempt + 1
        spec = self._single_spec(self.plans[job.name], attempt, write=True)
        self.ledger.begin_submission(
            [(job.name, spec.name, None, spec.log_out, spec.log_err)],
            attempt_increment=not same_attempt,
        )
        job_id = self.backend.submit(spec)
        if job_id is None:
            self.ledger.mark_unconfirmed(job.name, "bsub printed no job id")
            return
        self.ledger.confirm_submission([(job.name, job_id)])
        log.debug("job %s attempt %d submitted as %s", job.name, attempt, job_id)

    def _submit_array(self, group: list[lg.JobRecord]) -> None:
        spec = self._array_spec([self.plans[j.name] for j in group], write=True)
        entries = []
        for i, job in enumerate(group, start=1):
            out = Path(str(spec.log_out).replace("%I", str(i)))
            err = Path(str(spec.log_err).replace("%I", str(i)))
            entries.append((job.name, spec.name, i, out, err))
        self.ledger.begin_submission(entries)
        array_id = self.backend.submit_array(spec)
        if array_id is None:
            self.ledger.mark_unconfirmed(group[0].name, f"array {spec.name}: no job id")
            return
        self.ledger.confirm_submission(
            [(job.name, f"{array_id}[{i}]") for i, job in enumerate(group, start=1)]
        )
        log.info(
            "submitted array %s (%d jobs) as job %s", spec.name, len(group), array_id
        )

    # --- polling -----------------------------------------------------------

    def _resolve_unconfirmed(self, jobs: list[lg.JobRecord], now: float) -> None:
        by_batch: dict[str, list[lg.JobRecord]] = {}
        for job in jobs:
            by_batch.setdefault(job.batch_name or job.name, []).append(job)
        for batch_name, members in by_batch.items():
            found = self.backend.find_by_name(batch_name)
            ids = []
            for job in members:
                match = [
                    s.job_id for s in found if split_id(s.job_id)[1] == job.array_index
                ]
                if match:
                    ids.append((job.name, match[0]))
            if ids:
                self.ledger.confirm_submission(ids)
                log.info(
                    "found unconfirmed submission %s as job %s (%d of %d jobs)",
                    batch_name,
                    ids[0][1],
                    len(ids),
                    len(members),
                )
            # Elements that bjobs no longer shows may have ended long ago.
            confirmed = {name for name, _ in ids}
            rest = [job for job in members if job.name not in confirmed]
            reported = bool(rest) and self._decide_from_reports(batch_name, rest)
            if found or reported:
                continue
            started = members[0].submitted_at or now
            if now - started >= self.config.poll.not_found_grace_s:
                for job in members:
                    self.ledger.set_state(
                        job.name, lg.LOST, reason="submission not found"
                    )
                log.warning(
                    "submission %s not found by name after %.0f s; it will be "
                    "submitted again",
                    batch_name,
                    now - started,
                )

    def _decide_from_reports(
        self, batch_name: str, members: list[lg.JobRecord]
    ) -> bool:
        """Decide unconfirmed jobs that ``bjobs`` no longer shows from their logs.

        A job that ran and ended more than LSF's CLEAN_PERIOD ago is gone from
        ``bjobs -a``, but its job report in the ``-o`` log proves that the
        submission happened, so it must not be submitted again.

        Returns:
            ``True`` when at least one member had a job report; members
            without one stay unconfirmed until a later cycle.
        """
        reports = {
            job.name: read_job_report(job.log_out) if job.log_out else None
            for job in members
        }
        if not any(reports.values()):
            return False
        for job in members:
            report = reports[job.name]
            if report is None:
                continue
            log.info(
                "unconfirmed submission %s of job %s is gone from bjobs; its log "
                "reports: %s",
                batch_name,
                job.name,
                report.detail,
            )
            if report.job_id is not None:
                self.ledger.confirm_submission([(job.name, report.job_id)])
            current = self.ledger.job(job.name)
            if report.succeeded:
                self._check_outputs(current, exit_code=0)
            else:
                self._fail(
                    current, report.exit_code, f"log {job.log_out}: {report.detail}"
                )
        return True

    def _poll_once(self) -> None:
        now = self.clock()
        active = self.ledger.tracked()
        unconfirmed = [
            self.ledger.job(job.name) for job in active if job.job_id is None
        ]
        if unconfirmed:
            self._resolve_unconfirmed(unconfirmed, now)
        tracked = [job for job in active if job.job_id is not None]
        if not tracked:
            return
        statuses = self.backend.poll([job.job_id for job in tracked if job.job_id])
        self.bjobs_cycles += 1
        steady = {lg.PENDING: JobState.PENDING, lg.RUNNING: JobState.RUNNING}
        quiet: list[tuple[str, str, str]] = []
        with self.ledger.batch():
            for light in tracked:
                assert light.job_id is not None
                status = statuses.get(light.job_id)
                if status is None:
                    continue
                # Most jobs did not change since the last cycle: skip them
                # without reading their full ledger row.
                if (
                    steady.get(light.state) is status.state
                    and light.stat == status.stat
                    and light.unknown_since is None
                    and light.not_found_since is None
                ):
                    continue
                self._apply(self.ledger.job(light.name), status, now, quiet)
            if quiet:
                self.ledger.set_stats(quiet)

    def _apply(
        self,
        job: lg.JobRecord,
        status: JobStatus,
        now: float,
        quiet: list[tuple[str, str, str]],
    ) -> None:
        state = status.state
        if state in (JobState.PENDING, JobState.RUNNING):
            if status.stat in SUSPENDED and job.stat != status.stat:
                log.warning(
                    "job %s (%s) is suspended: %s", job.name, job.job_id, status.stat
                )
                self.ledger.add_event(job.name, "suspended", status.stat)
            elif job.stat in SUSPENDED and status.stat not in SUSPENDED:
                log.info("job %s (%s) resumed: %s", job.name, job.job_id, status.stat)
            new = lg.RUNNING if state is JobState.RUNNING else lg.PENDING
            if job.unknown_since is not None or job.not_found_since is not None:
                self.ledger.set_state(
                    job.name,
                    new,
                    stat=status.stat,
                    unknown_since=None,
                    not_found_since=None,
                )
            elif new != job.state or status.stat != job.stat:
                quiet.append((job.name, new, status.stat))
        elif state is JobState.UNKNOWN:
            self._unknown(job, status, now)
        elif state is JobState.DONE:
            self._check_outputs(job, exit_code=0)
        elif state is JobState.FAILED:
            code = status.exit_code
            self._fail(job, code, f"LSF state {status.stat} with exit code {code}")
        else:
            self._not_found(job, now)

    def _unknown(self, job: lg.JobRecord, status: JobStatus, now: float) -> None:
        if job.unknown_since is None:
            log.warning(
                "job %s (%s) is %s: its host does not respond; still polling",
                job.name,
                job.job_id,
                status.stat,
            )
            self.ledger.set_state(
                job.name, lg.UNKNOWN, stat=status.stat, unknown_since=now
            )
            return
        waited = now - job.unknown_since
        if waited < self.config.poll.unknown_escalate_s:
            return
        log.error(
            "job %s (%s) has been %s for %.0f s; killing and resubmitting it",
            job.name,
            job.job_id,
            status.stat,
            waited,
        )
        assert job.job_id is not None
        self.backend.kill([job.job_id])
        self.ledger.add_event(
            job.name, "escalated", f"{status.stat} for {waited:.0f} s"
        )
        self._fail(job, None, f"{status.stat} for {waited:.0f} s")

    def _not_found(self, job: lg.JobRecord, now: float) -> None:
        report = read_job_report(job.log_out) if job.log_out else None
        if report is not None:
            log.info(
                "job %s (%s) no longer known to the batch system; its log reports: %s",
                job.name,
                job.job_id,
                report.detail,
            )
            if report.succeeded:
                self._check_outputs(job, exit_code=0)
            else:
                self._fail(job, report.exit_code, f"log {job.log_out}: {report.detail}")
            return
        if job.not_found_since is None:
            self.ledger.set_state(job.name, job.state, not_found_since=now)
            return
        if now - job.not_found_since >= self.config.poll.not_found_grace_s:
            self._fail(
                job,
                None,
                f"batch system does not know job {job.job_id} and {job.log_out} has "
                "no job report",
            )

    def _check_outputs(self, job: lg.JobRecord, exit_code: int) -> None:
        plan = self.plans[job.name]
        if not self.config.verify_outputs:
            self.ledger.set_state(
                job.name, lg.DONE, stat="DONE", exit_code=0, reason="not verified"
            )
            return
        try:
            entries = [verify_root_output(path, plan.tree) for path in plan.outputs]
        except InputFileError as err:
            self._fail(job, exit_code, f"output check failed: {err}")
            return
        self.ledger.set_state(
            job.name,
            lg.DONE,
            stat="DONE",
            exit_code=0,
            reason=f"{sum(entries)} entries",
        )
        log.debug("job %s done: %d entries", job.name, sum(entries))

    def _fail(self, job: lg.JobRecord, exit_code: int | None, reason: str) -> None:
        failures = job.failures + 1
        if failures < self.config.max_attempts:
            log.warning(
                "job %s attempt %d failed (%s); resubmitting (%d of %d attempts used)",
                job.name,
                job.attempt,
                reason,
                failures,
                self.config.max_attempts,
            )
            self.ledger.record_failure(job.name, lg.RETRY, exit_code, reason)
        else:
            log.error(
                "job %s failed for good after %d attempts: %s",
                job.name,
                failures,
                reason,
            )
            self.ledger.record_failure(job.name, lg.FAILED, exit_code, reason)

    # --- the loop ----------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise ProductionCancelled("stop requested")

    def run(self) -> ProductionResult:
        """Run the production until every job is done or failed for good.

        Returns:
            The verified outputs per sample.

        Raises:
            BatchError: at least one job failed for good; the message lists
                each with its attempts, exit codes and log paths. Also raised
                when another production holds the run folder's lock.
            ProductionCancelled: the stop event was set; running jobs were
                killed first. A ``KeyboardInterrupt`` or Prefect's termination
                signal also kills the jobs before it propagates.
        """
        with production_lock(self.config.run_dir):
            return self._run_locked()

    def _run_locked(self) -> ProductionResult:
        added = self.ledger.add_jobs(
            (p.name, p.sample, p.index, p.outputs, p.argv) for p in self.plans.values()
        )
        reopened = self.ledger.reopen_failed()
        if reopened:
            log.warning(
                "production %s: %d jobs failed for good in an earlier run and get "
                "%d new attempts: %s",
                self.config.name,
                len(reopened),
                self.config.max_attempts,
                ", ".join(reopened[:10]) + (" ..." if len(reopened) > 10 else ""),
            )
        active = self.ledger.count(lg.ACTIVE)
        done = self.ledger.count([lg.DONE])
        log.info(
            "production %s: %d jobs (%d new), %d done, %d to re-attach",
            self.config.name,
            len(self.plans),
            added,
            done,
            active,
        )
        poll = self.config.poll
        delay = 0.0
        errors_in_row = 0
        try:
            while True:
                if self.stop.is_set():
                    raise ProductionCancelled("stop requested")
                self._submit_ready()
                if not self.ledger.count(lg.ACTIVE | lg.WAITING):
                    break
                self._wait(delay)
                try:
                    self._poll_once()
                except TransientBatchError as err:
                    errors_in_row += 1
                    delay = min(
                        poll.retry_initial_s
                        * poll.backoff_factor ** (errors_in_row - 1),
                        poll.max_interval_s,
                    )
                    log.warning(
                        "poll failed (%s); retry %d in %.1f s",
                        err,
                        errors_in_row,
                        delay,
                    )
                    continue
                errors_in_row = 0
                delay = poll.interval_s
                self._report_progress()
                self._log_status()
        except Exception:
            raise
        except BaseException as exc:
            self.cancel(f"{type(exc).__name__}: {exc}")
            raise
        return self._finish()

    def _log_status(self) -> None:
        """Log the count of jobs per state, once per ``STATUS_EVERY_S``."""
        now = time.monotonic()
        if now - self._last_status < STATUS_EVERY_S:
            return
        self._last_status = now
        counts = {
            "pending": self.ledger.count([lg.PENDING, lg.SUBMITTING]),
            "running": self.ledger.count([lg.RUNNING]),
            "unknown": self.ledger.count([lg.UNKNOWN]),
            "waiting to be submitted": self.ledger.count(lg.WAITING),
            "done": self.ledger.count([lg.DONE]),
            "failed": self.ledger.count([lg.FAILED]),
        }
        summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        log.info(
            "production %s: %s of %d jobs",
            self.config.name,
            summary or "no jobs",
            len(self.plans),
        )

    def _report_progress(self) -> None:
        if self.progress is None:
            return
        done = self.ledger.count([lg.DONE])
        if done != self._reported_done:
            self._reported_done = done
            self.progress(done, len(self.plans))

    def cancel(self, reason: str) -> int:
        """Kill every active job of the run with the backend and record it.

        Returns:
            The number of jobs marked killed in the ledger.
        """
        active = self.ledger.jobs(lg.ACTIVE)
        ids = [job.job_id for job in active if job.job_id]
        for job in active:
            if job.job_id is None and job.batch_name:
                try:
                    ids += [s.job_id for s in self.backend.find_by_name(job.batch_name)]
                except TransientBatchError as err:
                    log.error(
                        "could not look up %s to kill it: %s", job.batch_name, err
                    )
        if ids:
            log.warning(
                "cancelling production %s: killing %d jobs (%s)",
                self.config.name,
                len(ids),
                reason,
            )
            self.backend.kill(ids)
        for job in active:
            self.ledger.set_state(job.name, lg.KILLED, reason=f"killed: {reason}")
        self.ledger.add_event(None, "cancelled", f"{len(ids)} jobs killed: {reason}")
        return len(active)

    def _finish(self) -> ProductionResult:
        failed = self.ledger.jobs([lg.FAILED])
        if failed:
            raise BatchError(self.failure_summary(failed))
        outputs: dict[str, list[Path]] = {}
        entries: dict[str, int] = {}
        for job in self.ledger.jobs([lg.DONE]):
            outputs.setdefault(job.sample, []).extend(job.outputs)
            # The reason of a verified job is "<n> entries".
            counted = re.fullmatch(r"(\d+) entries", job.reason or "")
            count = int(counted.group(1)) if counted else 0
            entries[job.sample] = entries.get(job.sample, 0) + count
        listing = write_json(
            self.config.run_dir / OUTPUTS_NAME,
            {
                "production": self.config.name,
                "tree": self.config.tree,
                "samples": {k: [str(p) for p in v] for k, v in outputs.items()},
                "entries": entries,
            },
        )
        submissions = len(self.ledger.submissions())
        log.info(
            "production %s finished: %d jobs, %d submissions, outputs in %s",
            self.config.name,
            len(self.plans),
            submissions,
            listing,
        )
        return ProductionResult(outputs, entries, len(self.plans), submissions, listing)

    def failure_summary(self, failed: list[lg.JobRecord]) -> str:
        """Return a table of failed jobs: attempts, exit codes and log paths."""
        lines = [
            f"{len(failed)} of {len(self.plans)} jobs of production "
            f"{self.config.name} failed for good:"
        ]
        for job in failed:
            rows = self.ledger.submissions(job.name)
            codes = [
                r["exit_code"] for r in rows if r["status"] in (lg.FAILED, lg.RETRY)
            ]
            logs = [r["log_out"] for r in rows]
            lines.append(
                f"  {job.name}: {job.attempt} attempts, exit codes "
                f"{json.dumps(codes)}, last reason: {job.reason}; "
                f"logs: {', '.join(logs)}"
            )
        lines.append(
            "Read the logs, fix the cause and rerun: finished jobs are skipped."
        )
        return "\n".join(lines)


def kill_active(config: ProductionConfig, backend: BatchBackend, reason: str) -> int:
    """Kill the active jobs recorded in the run's ledger (for a cancelled flow run).

    Returns:
        The number of jobs marked killed.
    """
    production = Production(config, backend)
    try:
        if not production.ledger_path.exists():
            return 0
        return production.cancel(reason)
    finally:
        production.close()
