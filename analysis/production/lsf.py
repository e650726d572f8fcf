"""LSF backend: ``bsub``, ``bjobs`` and ``bkill`` called with argv lists.

Every command is built as a list and run without a shell, so paths with
spaces or shell metacharacters reach LSF unchanged. LSF itself joins the job
command and its arguments with spaces and runs the result through
``/bin/sh`` on the execution host, so the job command is handed to ``bsub``
as one string built by :func:`job_command_line`, which quotes every argument
with :func:`shlex.quote`. ``bjobs`` is called once
per poll for all tracked jobs, with ``-o "jobid jobindex stat exit_code
job_name" -json``; its exit code is not trusted (LSF returns 255 as soon as
one id is unknown), only its output is.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from analysis.errors import BatchError
from analysis.production.batch import (
    LSF_STATES,
    ArraySpec,
    BatchBackend,
    JobSpec,
    JobState,
    JobStatus,
    TransientBatchError,
    element_id,
    split_id,
)
from analysis.production.config import LsfSettings

log = logging.getLogger(__name__)

BJOBS_FIELDS = "jobid jobindex stat exit_code job_name"

_SUBMITTED = re.compile(r"Job <(\d+)> is submitted to (?:default )?queue <([^>]*)>")
_NOT_FOUND = re.compile(r"Job <([^>]+)> is not found")
#: Messages of an LSF that is busy, restarting or unreachable.
_TRANSIENT = re.compile(
    r"Please wait|Cannot connect|LSF is down|not responding|still trying|"
    r"Connection reset|connection refused|timed? ?out|"
    r"Failed in an LSF library call|LIM is down|mbatchd",
    re.IGNORECASE,
)


def job_command_line(command: Sequence[str]) -> str:
    """Return the job command as the shell line that LSF runs on the batch host.

    Every argument is quoted with :func:`shlex.quote`, so that ``/bin/sh``
    splits the line back into exactly ``command``: spaces, quotes, ``;``,
    ``$()``, backticks and newlines stay literal.

    Raises:
        BatchError: ``command`` is empty.
    """
    if not command:
        raise BatchError("the job command is empty: the payload argv needs a program")
    return shlex.join(command)


@dataclass(frozen=True)
class CommandResult:
    """Output of one LSF command."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


class LsfBackend(BatchBackend):
    """Submit, poll and kill jobs on LSF.

    Args:
        settings: queue, resources and command paths.
    """

    name = "lsf"
    supports_arrays = True

    def __init__(self, settings: LsfSettings) -> None:
        self.settings = settings
        self.bjobs_calls = 0

    # --- commands --------------------------------------------------------

    def _run(self, argv: list[str]) -> CommandResult:
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=self.settings.command_timeout_s,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError as err:
            raise BatchError(
                f"LSF command {argv[0]!r} not found: put it on PATH or set its path "
                "in the lsf section (lsf: in a production config, reading.batch.lsf: "
                "in an analysis config); without LSF, use the local backend"
            ) from err
        except subprocess.TimeoutExpired as err:
            raise TransientBatchError(
                f"{argv[0]} timed out after {self.settings.command_timeout_s} s"
            ) from err
        except OSError as err:
            raise TransientBatchError(f"{argv[0]} could not run: {err}") from err
        return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr)

    def _resource_options(self) -> list[str]:
        settings = self.settings
        options = ["-q", settings.queue]
        if settings.slots is not None:
            options += ["-n", str(settings.slots)]
        if settings.memory_mb is not None:
            if settings.memory_option == "M":
                options += ["-M", str(settings.memory_mb)]
            else:
                options += ["-R", f"rusage[mem={settings.memory_mb}]"]
        if settings.walltime_min is not None:
            options += ["-W", str(settings.walltime_min)]
        if settings.project is not None:
            options += ["-P", settings.project]
        return options

    def submit_argv(self, spec: JobSpec) -> list[str]:
        """Return the ``bsub`` argv for one job, ending in its quoted command line."""
        return [
            self.settings.bsub,
            *self._resource_options(),
            "-J",
            spec.name,
            "-o",
            str(spec.log_out),
            "-e",
            str(spec.log_err),
            "-cwd",
            str(spec.cwd),
            *self.settings.extra_options,
            job_command_line(spec.command),
        ]

    def submit_array_argv(self, spec: ArraySpec) -> list[str]:
        """Return the ``bsub`` argv for a job array ``name[1-size]%limit``.

        The argv ends in the quoted command line, as for :meth:`submit_argv`.
        """
        name = f"{spec.name}[1-{spec.size}]"
        if spec.limit is not None:
            name += f"%{spec.limit}"
        return [
            self.settings.bsub,
            *self._resource_options(),
            "-J",
            name,
            "-o",
            str(spec.log_out),
            "-e",
            str(spec.log_err),
            "-cwd",
            str(spec.cwd),
            *self.settings.extra_options,
            job_command_line(spec.command),
        ]

    def _submit(self, argv: list[str], name: str) -> str | None:
        result = self._run(argv)
        match = _SUBMITTED.search(result.stdout) or _SUBMITTED.search(result.stderr)
        if match:
            log.debug("submitted %s as job %s to queue %s", name, *match.groups())
            return match.group(1)
        message = (result.stderr.strip() or result.stdout.strip())[:500]
        if result.returncode == 0:
            log.warning(
                "bsub exited 0 for %s without a 'Job <id> is submitted' line (%r); "
                "the job will be looked up by name before any resubmission",
                name,
                message,
            )
            return None
        if _TRANSIENT.search(message) or not message:
            raise TransientBatchError(
                f"bsub for {name} failed with exit code {result.returncode}: "
                f"{message!r}"
            )
        raise BatchError(
            f"bsub rejected job {name} (exit code {result.returncode}): {message!r}. "
            "Check the lsf: settings (queue, project, resources) of the config."
        )

    def submit(self, spec: JobSpec) -> str | None:
        """Submit one job with ``bsub``; see :meth:`BatchBackend.submit`."""
        return self._submit(self.submit_argv(spec), spec.name)

    def submit_array(self, spec: ArraySpec) -> str | None:
        """Submit a job array with one ``bsub``; see :meth:`BatchBackend.submit`."""
        return self._submit(self.submit_array_argv(spec), spec.name)

    # --- polling ---------------------------------------------------------

    def _bjobs_argv(self, extra: list[str]) -> list[str]:
        return [self.settings.bjobs, "-o", BJOBS_FIELDS, "-json", *extra]

    def _chunks(self, ids: list[str]) -> list[list[str]]:
        """Split ids so that no bjobs argv exceeds ``max_argv_bytes``."""
        base = sum(len(a) + 1 for a in self._bjobs_argv([]))
        chunks: list[list[str]] = [[]]
        size = base
        for job_id in ids:
            cost = len(job_id) + 1
            if chunks[-1] and size + cost > self.settings.max_argv_bytes:
                chunks.append([])
                size = base
            chunks[-1].append(job_id)
            size += cost
        return chunks

    def _bjobs(self, extra: list[str]) -> list[dict[str, str]]:
        self.bjobs_calls += 1
        result = self._run(self._bjobs_argv(extra))
        records = _parse_bjobs_json(result.stdout)
        if records is None:
            message = (result.stderr.strip() or result.stdout.strip())[:300]
            raise TransientBatchError(
                f"bjobs gave no usable output (exit code {result.returncode}): "
                f"{message!r}"
            )
        if result.stderr.strip():
            log.debug("bjobs stderr: %s", result.stderr.strip()[:300])
        return records

    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Query all ``job_ids`` with one ``bjobs`` call per argv-sized chunk.

        Array elements are queried through their array id, which returns
        every element at once.
        """
        wanted: dict[str, list[str]] = {}
        for job_id in job_ids:
            base, _ = split_id(job_id)
            wanted.setdefault(base, []).append(job_id)

        statuses: dict[str, JobStatus] = {}
        for chunk in self._chunks(list(wanted)):
            for record in self._bjobs(chunk):
                for status in _statuses_from_record(record, wanted):
                    if status.job_id in statuses and status.state is JobState.NOT_FOUND:
                        continue
                    statuses[status.job_id] = status
        return {job_id: statuses[job_id] for job_id in job_ids if job_id in statuses}

    def find_by_name(self, name: str) -> list[JobStatus]:
        """Return jobs or array elements called ``name`` with ``bjobs -a -J``."""
        found = []
        for record in self._bjobs(["-a", "-J", name]):
            if "ERROR" in record:
                continue
            status = _status_from_fields(record)
            if status is None:
                continue
            if status.name in (name, None) or (status.name or "").startswith(
                name + "["
            ):
                found.append(status)
        return found

    def kill(self, job_ids: Iterable[str]) -> None:
        """Kill jobs with ``bkill`` in chunks of ``bkill_chunk`` ids."""
        ids = list(job_ids)
        chunk = self.settings.bkill_chunk
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            try:
                result = self._run([self.settings.bkill, *part])
            except TransientBatchError as err:
                log.error("bkill failed for %d jobs: %s", len(part), err)
                continue
            terminated = result.stdout.count("is being terminated")
            log.info(
                "bkill: %d of %d jobs being terminated (exit code %d)",
                terminated,
                len(part),
                result.returncode,
            )
            if result.stderr.strip():
                log.debug("bkill stderr: %s", result.stderr.strip()[:500])


def _parse_bjobs_json(text: str) -> list[dict[str, str]] | None:
    start = text.find("{")
    if start < 0:
        return None
    try:
        document = json.loads(text[start:])
    except json.JSONDecodeError:
        return None
    records = document.get("RECORDS") if isinstance(document, dict) else None
    if not isinstance(records, list):
        return None
    return [r for r in records if isinstance(r, dict)]


def _status_from_fields(record: dict[str, str]) -> JobStatus | None:
    job_id = str(record.get("JOBID", "")).strip()
    stat = str(record.get("STAT", "")).strip()
    if not job_id or stat not in LSF_STATES:
        if stat:
            log.warning("bjobs reported unknown STAT %r for job %s", stat, job_id)
        return None
    index = str(record.get("JOBINDEX", "")).strip()
    if index not in ("", "0", "-") and "[" not in job_id:
        job_id = element_id(job_id, int(index))
    exit_text = str(record.get("EXIT_CODE", "")).strip()
    exit_code = int(exit_text) if re.fullmatch(r"-?\d+", exit_text) else None
    name = str(record.get("JOB_NAME", "")).strip() or None
    return JobStatus(job_id, LSF_STATES[stat], stat, exit_code, name)


def _statuses_from_record(
    record: dict[str, str], wanted: dict[str, list[str]]
) -> list[JobStatus]:
    if "ERROR" in record:
        match = _NOT_FOUND.search(str(record["ERROR"]))
        if not match:
            log.warning("bjobs error record: %s", record["ERROR"])
            return []
        base = match.group(1)
        return [
            JobStatus(job_id, JobState.NOT_FOUND, "", None)
            for job_id in wanted.get(base, [base])
        ]
    status = _status_from_fields(record)
    return [] if status is None else [status]
