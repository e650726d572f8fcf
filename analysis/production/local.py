"""Local backend: the same jobs as local processes, at most N at a time.

Each job runs under ``jobwrap.py``, which writes its output to the job's logs,
appends a job report in LSF's wording and keeps a JSON state file in the
backend's state folder. Jobs run in their own session, so they survive a
crash of the orchestrator, and a new backend instance reads their state from
those files.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from analysis.production import jobwrap
from analysis.production.batch import BatchBackend, JobSpec, JobState, JobStatus

log = logging.getLogger(__name__)


@dataclass
class _LocalJob:
    spec: JobSpec
    status_file: Path
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False
    exit_code: int | None = field(default=None)


class LocalBackend(BatchBackend):
    """Run jobs as local processes with a concurrency limit.

    Args:
        state_dir: folder for the per-job state files (in the run folder).
        max_concurrent: maximum number of jobs running at once.
        python: interpreter that runs ``jobwrap.py``.
    """

    name = "local"

    def __init__(
        self, state_dir: Path, max_concurrent: int = 2, python: str | None = None
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.max_concurrent = max_concurrent
        self.python = python or sys.executable
        self._jobs: dict[str, _LocalJob] = {}
        self._queue: list[str] = []

    def submit_argv(self, spec: JobSpec) -> list[str]:
        """Return the argv of the local process that runs ``spec``."""
        return self._wrapper_argv(spec, self.state_dir / "local-ID.json")

    def _wrapper_argv(self, spec: JobSpec, status_file: Path) -> list[str]:
        return [
            self.python,
            str(Path(jobwrap.__file__)),
            "--status",
            str(status_file),
            "--name",
            spec.name,
            "--out",
            str(spec.log_out),
            "--err",
            str(spec.log_err),
            "--report",
            "--",
            *spec.command,
        ]

    def submit(self, spec: JobSpec) -> str:
        """Queue ``spec`` and start it when a slot is free; return its id."""
        job_id = f"local-{uuid.uuid4().hex[:12]}"
        status_file = self.state_dir / f"{job_id}.json"
        self._jobs[job_id] = _LocalJob(spec, status_file)
        self._queue.append(job_id)
        self._start_queued()
        return job_id

    def _running(self) -> int:
        return sum(
            1
            for job in self._jobs.values()
            if job.proc is not None and job.proc.poll() is None
        )

    def _start_queued(self) -> None:
        free = self.max_concurrent - self._running()
        while free > 0 and self._queue:
            job_id = self._queue.pop(0)
            job = self._jobs[job_id]
            job.spec.log_out.parent.mkdir(parents=True, exist_ok=True)
            job.spec.log_err.parent.mkdir(parents=True, exist_ok=True)
            job.spec.cwd.mkdir(parents=True, exist_ok=True)
            job.proc = subprocess.Popen(
                self._wrapper_argv(job.spec, job.status_file),
                cwd=job.spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            _create_status(job.status_file, job.spec.name, job.proc.pid)
            log.debug(
                "started local job %s (%s), pid %d", job_id, job.spec.name, job.proc.pid
            )
            free -= 1

    def _status_from_file(self, job_id: str, status_file: Path) -> JobStatus:
        try:
            data = json.loads(status_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return JobStatus(job_id, JobState.NOT_FOUND, "")
        state = str(data.get("state", ""))
        name = str(data.get("name") or "") or None
        if state == "DONE":
            return JobStatus(job_id, JobState.DONE, "DONE", 0, name)
        if state == "EXIT":
            return JobStatus(
                job_id, JobState.FAILED, "EXIT", data.get("exit_code"), name
            )
        if state == "RUN" and _pid_alive(int(data.get("pid", 0))):
            return JobStatus(job_id, JobState.RUNNING, "RUN", None, name)
        # NOTE: a wrapper killed while Python starts up, before its signal
        # handlers exist, leaves RUN with a dead pid. The job then reads as not
        # found, and the orchestrator decides its outcome from the log.
        return JobStatus(job_id, JobState.NOT_FOUND, "", None, name)

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Return the state of each job, starting queued jobs as slots free up."""
        for started in self._jobs.values():
            if started.proc is not None:
                started.proc.poll()
        self._start_queued()
        result: dict[str, JobStatus] = {}
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is None:
                # Started by an earlier orchestrator: only its state file is left.
                result[job_id] = self._status_from_file(
                    job_id, self.state_dir / f"{job_id}.json"
                )
            elif job.proc is None:
                stat = "EXIT" if job.killed else "PEND"
                state = JobState.FAILED if job.killed else JobState.PENDING
                result[job_id] = JobStatus(
                    job_id, state, stat, 130 if job.killed else None
                )
            elif job.proc.returncode is None:
                result[job_id] = JobStatus(
                    job_id, JobState.RUNNING, "RUN", None, job.spec.name
                )
            else:
                status = self._status_from_file(job_id, job.status_file)
                if status.state in (JobState.NOT_FOUND, JobState.RUNNING):
                    # The wrapper died before it wrote its final state.
                    code = job.proc.returncode
                    code = 128 - code if code < 0 else code
                    status = JobStatus(
                        job_id, JobState.FAILED, "EXIT", code, job.spec.name
                    )
                result[job_id] = status
        return result

    def find_by_name(self, name: str) -> list[JobStatus]:
        """Return local jobs called ``name`` from this instance and the state files."""
        found = [
            JobStatus(job_id, JobState.PENDING, "PEND", None, name)
            for job_id, job in self._jobs.items()
            if job.spec.name == name and job.proc is None and not job.killed
        ]
        for status_file in self.state_dir.glob("local-*.json"):
            status = self._status_from_file(status_file.stem, status_file)
            if status.name == name and status.state is not JobState.NOT_FOUND:
                found.append(status)
        return found

    def kill(self, job_ids: Iterable[str]) -> None:
        """Terminate the jobs' process groups and drop queued jobs."""
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is not None and job.proc is None:
                job.killed = True
                if job_id in self._queue:
                    self._queue.remove(job_id)
                continue
            pid = job.proc.pid if job is not None and job.proc is not None else None
            if pid is None:
                try:
                    data = json.loads((self.state_dir / f"{job_id}.json").read_text())
                    pid = int(data["pid"]) if data.get("state") == "RUN" else None
                except (OSError, ValueError, KeyError):
                    pid = None
            if pid is None:
                continue
            try:
                os.killpg(pid, signal.SIGTERM)
                log.debug("sent SIGTERM to local job %s (pid %d)", job_id, pid)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        """Reap finished child processes; running jobs keep running."""
        for job in self._jobs.values():
            if job.proc is not None:
                job.proc.poll()

    def wait_all(self, timeout_s: float) -> None:
        """Wait for started jobs of this instance to end (used after a kill)."""
        for job in self._jobs.values():
            if job.proc is not None:
                try:
                    job.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "local job %s still running after %s s",
                        job.spec.name,
                        timeout_s,
                    )


def _create_status(path: Path, name: str, pid: int) -> None:
    """Write a first RUN state unless the wrapper already wrote its own.

    Written right after the start, so that an orchestrator crash before the
    wrapper writes its state never leaves a running job without a state file.
    ``O_EXCL`` keeps a final state that a fast wrapper wrote first.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as handle:
        json.dump({"name": name, "state": "RUN", "pid": pid}, handle)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # A zombie has exited; only its parent has not reaped it yet.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
