"""Batch layer: one interface for the ``local`` and ``lsf`` backends.

A backend submits jobs (or job arrays), reports their states for many job ids
at once, finds jobs by name and kills jobs. Job ids are strings; an element of
a job array has the id ``"<array id>[<index>]"``.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import BatchError


class TransientBatchError(BatchError):
    """The batch system did not respond this time (daemon down, timeout, ...).

    The caller retries later with backoff; a transient error never counts as a
    job failure.
    """


class JobState(enum.StrEnum):
    """State of a job as the orchestrator tracks it."""

    PENDING = "pending"
    RUNNING = "running"
    UNKNOWN = "unknown"
    DONE = "done"
    FAILED = "failed"
    NOT_FOUND = "not_found"


#: LSF STAT values and the state each one means.
LSF_STATES: dict[str, JobState] = {
    "PEND": JobState.PENDING,
    "PSUSP": JobState.PENDING,
    "WAIT": JobState.PENDING,
    "PROV": JobState.PENDING,
    "RUN": JobState.RUNNING,
    "USUSP": JobState.RUNNING,
    "SSUSP": JobState.RUNNING,
    "UNKWN": JobState.UNKNOWN,
    "ZOMBI": JobState.UNKNOWN,
    "DONE": JobState.DONE,
    "EXIT": JobState.FAILED,
}

#: STAT values of a suspended job; the orchestrator logs each suspension.
SUSPENDED = frozenset({"PSUSP", "USUSP", "SSUSP"})


@dataclass(frozen=True)
class JobStatus:
    """Status of one job as the batch system reports it.

    Attributes:
        job_id: batch job id, ``"123"`` or ``"123[4]"`` for an array element.
        state: the state the orchestrator acts on.
        stat: the batch system's own state name (``RUN``, ``PSUSP``, ...).
        exit_code: exit code of a failed job, ``None`` when not reported.
        name: job name, when the batch system reported it.
    """

    job_id: str
    state: JobState
    stat: str
    exit_code: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class JobSpec:
    """One job to submit.

    Attributes:
        name: job name (letters, digits, ``_``, ``.``, ``-``); unique per
            submission so that the job can be found again by name.
        command: argv of the job, passed to the batch system as a list.
        log_out: file that receives standard output and the job report.
        log_err: file that receives standard error.
        cwd: working folder of the job.
    """

    name: str
    command: list[str]
    log_out: Path
    log_err: Path
    cwd: Path


@dataclass(frozen=True)
class ArraySpec:
    """A job array: ``size`` elements sharing one command.

    Each element finds its own work through ``$LSB_JOBINDEX`` (1 to ``size``).
    The log paths contain ``%I``, which the batch system replaces with the
    element index.

    Attributes:
        name: array name without brackets.
        size: number of elements.
        limit: maximum number of elements running at once, ``None`` for no limit.
        command: argv shared by all elements.
        log_out: ``-o`` path pattern containing ``%I``.
        log_err: ``-e`` path pattern containing ``%I``.
        cwd: working folder.
    """

    name: str
    size: int
    limit: int | None
    command: list[str]
    log_out: Path
    log_err: Path
    cwd: Path


def element_id(array_id: str, index: int) -> str:
    """Return the job id of element ``index`` of array ``array_id``."""
    return f"{array_id}[{index}]"


def split_id(job_id: str) -> tuple[str, int | None]:
    """Split ``"123[4]"`` into ``("123", 4)`` and ``"123"`` into ``("123", None)``."""
    match = re.fullmatch(r"([^\[\]]+)\[(\d+)\]", job_id)
    if match:
        return match.group(1), int(match.group(2))
    return job_id, None


class BatchBackend(abc.ABC):
    """Interface of a batch system."""

    name: str = "abstract"
    supports_arrays: bool = False

    @abc.abstractmethod
    def submit_argv(self, spec: JobSpec) -> list[str]:
        """Return the argv that :meth:`submit` runs for ``spec``."""

    def submit_array_argv(self, spec: ArraySpec) -> list[str]:
        """Return the argv that :meth:`submit_array` runs for ``spec``."""
        raise BatchError(f"the {self.name} backend does not support job arrays")

    @abc.abstractmethod
    def submit(self, spec: JobSpec) -> str | None:
        """Submit one job and return its id.

        Returns:
            The job id, or ``None`` when the batch system accepted the command
            but did not report an id: the job may or may not exist, so look it
            up with :meth:`find_by_name` before submitting it again.

        Raises:
            TransientBatchError: the batch system did not respond; the job may
                still exist, so look it up by name before retrying.
            BatchError: the submission was rejected (bad queue, bad option).
        """

    def submit_array(self, spec: ArraySpec) -> str | None:
        """Submit a job array and return its id, as :meth:`submit` does."""
        raise BatchError(f"the {self.name} backend does not support job arrays")

    @abc.abstractmethod
    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Return the status of each job in ``job_ids`` that the system reported.

        Jobs the batch system no longer lists come back as
        :attr:`JobState.NOT_FOUND`. Ids missing from the result were not
        reported at all in this call.

        Raises:
            TransientBatchError: no usable response this time.
        """

    @abc.abstractmethod
    def find_by_name(self, name: str) -> list[JobStatus]:
        """Return the jobs (or array elements) called ``name``, finished ones too.

        Raises:
            TransientBatchError: no usable answer this time.
        """

    @abc.abstractmethod
    def kill(self, job_ids: Iterable[str]) -> None:
        """Kill the jobs ``job_ids``; jobs that already ended are ignored."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources held by the backend (nothing by default)."""


# --- the job report that LSF appends to the -o file --------------------------

_REPORT_HEADER = "Sender: LSF System"
# LSF's report names the job in its mail subject, for example
# "Subject: Job 1234[5]: <name[5]> in cluster <c> Done"; the local backend's
# report has no subject.
_SUBJECT = re.compile(r"^Subject: Job (\d+(?:\[\d+\])?):", re.MULTILINE)
_SUCCESS = re.compile(r"^Successfully completed\.\s*$", re.MULTILINE)
_EXIT = re.compile(r"^Exited with exit code (-?\d+)\.\s*$", re.MULTILINE)
_SIGNAL = re.compile(r"^Exited with signal termination: ([^.\n]*)\.?\s*$", re.MULTILINE)


@dataclass(frozen=True)
class JobReport:
    """Outcome read from an LSF job report.

    Attributes:
        succeeded: ``True`` for ``Successfully completed.``.
        exit_code: exit code of a failed job, ``None`` when it ended by a
            signal or succeeded.
        detail: the report line.
        job_id: batch job id from the report's subject line, ``None`` when the
            report has none.
    """

    succeeded: bool
    exit_code: int | None
    detail: str
    job_id: str | None = None


def parse_job_report(text: str) -> JobReport | None:
    """Read the outcome from the last LSF job report in a ``-o`` log.

    Only text after the last ``Sender: LSF System`` header is read, so job
    output that happens to contain ``Successfully completed.`` is ignored.

    Returns:
        The outcome, or ``None`` when the log contains no complete job report.
    """
    start = text.rfind(_REPORT_HEADER)
    if start < 0:
        return None
    report = text[start:]
    subject = _SUBJECT.search(report)
    job_id = subject.group(1) if subject else None
    success = _SUCCESS.search(report)
    if success:
        return JobReport(True, None, success.group(0).strip(), job_id)
    exited = _EXIT.search(report)
    if exited:
        return JobReport(False, int(exited.group(1)), exited.group(0).strip(), job_id)
    killed = _SIGNAL.search(report)
    if killed:
        return JobReport(False, None, killed.group(0).strip(), job_id)
    return None


def read_job_report(path: Path) -> JobReport | None:
    """Read the job report of the ``-o`` log at ``path``; ``None`` if absent."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            # The report is at the end; 64 kB hold it with room to spare.
            handle.seek(max(0, size - 65536))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    return parse_job_report(text)
