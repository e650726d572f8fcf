"""Job ledger: one SQLite file in the run folder that records every submission.

A submission is written in two steps. :meth:`Ledger.begin_submission` records
the intent (state ``submitting``) before ``bsub`` runs, and
:meth:`Ledger.confirm_submission` stores the job id afterwards. A crash between
the two leaves a ``submitting`` row, and the next run looks that job up by
name before it submits anything, so no job is submitted twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

#: Ledger states of a job.
PLANNED = "planned"
SUBMITTING = "submitting"
PENDING = "pending"
RUNNING = "running"
UNKNOWN = "unknown"
RETRY = "retry"
DONE = "done"
FAILED = "failed"
KILLED = "killed"
LOST = "lost"

#: States of jobs waiting for a submission.
WAITING = frozenset({PLANNED, RETRY, LOST, KILLED})

#: States in which a job may have a live batch job.
ACTIVE = frozenset({SUBMITTING, PENDING, RUNNING, UNKNOWN})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    sample TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    batch_name TEXT,
    array_index INTEGER,
    job_id TEXT,
    stat TEXT,
    exit_code INTEGER,
    reason TEXT,
    log_out TEXT,
    log_err TEXT,
    outputs TEXT NOT NULL,
    argv TEXT NOT NULL,
    submitted_at REAL,
    unknown_since REAL,
    not_found_since REAL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS submissions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    batch_name TEXT NOT NULL,
    array_index INTEGER,
    job_id TEXT,
    status TEXT NOT NULL,
    exit_code INTEGER,
    log_out TEXT,
    started_at REAL NOT NULL,
    confirmed_at REAL
);
CREATE INDEX IF NOT EXISTS submissions_job ON submissions (job, seq);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    job TEXT,
    kind TEXT NOT NULL,
    detail TEXT
);
"""


@dataclass(frozen=True)
class JobRecord:
    """One planned job as stored in the ledger.

    Attributes:
        name: job name without attempt suffix, ``<production>.<sample>.<index>``.
        sample: sample name.
        index: job index within the sample (0-based).
        state: ledger state (``planned``, ``pending``, ``done``, ...).
        attempt: number of submissions started so far.
        failures: number of attempts that failed (killed ones do not count).
        batch_name: job or array name of the current submission.
        array_index: element index (1-based) when submitted in an array.
        job_id: batch job id of the current submission.
        stat: last batch state name seen (``RUN``, ``PSUSP``, ...).
        exit_code: exit code of the last failed attempt.
        reason: why the last attempt failed.
        log_out: ``-o`` log of the current submission.
        log_err: ``-e`` log of the current submission.
        outputs: output files the job must write.
        argv: payload argv.
        submitted_at: Unix time of the current submission.
        unknown_since: Unix time since which the job is UNKWN or ZOMBI.
        not_found_since: Unix time since which bjobs no longer reports the job.
    """

    name: str
    sample: str
    index: int
    state: str
    attempt: int
    failures: int
    batch_name: str | None
    array_index: int | None
    job_id: str | None
    stat: str | None
    exit_code: int | None
    reason: str | None
    log_out: Path | None
    log_err: Path | None
    outputs: list[Path]
    argv: list[str]
    submitted_at: float | None
    unknown_since: float | None
    not_found_since: float | None


class TrackedJob(NamedTuple):
    """Columns of an active job that the poll loop compares with bjobs."""

    name: str
    state: str
    job_id: str | None
    stat: str | None
    unknown_since: float | None
    not_found_since: float | None


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        name=row["name"],
        sample=row["sample"],
        index=row["idx"],
        state=row["state"],
        attempt=row["attempt"],
        failures=row["failures"],
        batch_name=row["batch_name"],
        array_index=row["array_index"],
        job_id=row["job_id"],
        stat=row["stat"],
        exit_code=row["exit_code"],
        reason=row["reason"],
        log_out=Path(row["log_out"]) if row["log_out"] else None,
        log_err=Path(row["log_err"]) if row["log_err"] else None,
        outputs=[Path(p) for p in json.loads(row["outputs"])],
        argv=json.loads(row["argv"]),
        submitted_at=row["submitted_at"],
        unknown_since=row["unknown_since"],
        not_found_since=row["not_found_since"],
    )


class Ledger:
    """SQLite ledger of one production run.

    Args:
        path: database file, created on first use.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL survives a crash of this process; a power
        # loss may drop the last commits, which the lookup by name covers.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(sql, params)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group every write of the block into one transaction (one commit)."""
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _transaction(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        if self._conn.in_transaction:
            for sql, params in statements:
                self._conn.execute(sql, params)
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                self._conn.execute(sql, params)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # --- plan ------------------------------------------------------------

    def add_jobs(
        self, jobs: Iterable[tuple[str, str, int, list[Path], list[str]]]
    ) -> int:
        """Insert planned jobs ``(name, sample, index, outputs, argv)`` not yet known.

        Returns:
            The number of jobs inserted; jobs already in the ledger keep their
            state, so a rerun resumes where the last run stopped.
        """
        now = time.time()
        before = self.count()
        self._transaction(
            (
                "INSERT OR IGNORE INTO jobs (name, sample, idx, state, outputs, argv,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    sample,
                    index,
                    PLANNED,
                    json.dumps([str(p) for p in outputs]),
                    json.dumps(argv),
                    now,
                ),
            )
            for name, sample, index, outputs, argv in jobs
        )
        return self.count() - before

    def count(self, states: Iterable[str] | None = None) -> int:
        """Return the number of jobs, all or those in ``states``."""
        query = "SELECT COUNT(*) FROM jobs"
        params: list[str] = []
        if states is not None:
            params = list(states)
            query += f" WHERE state IN ({','.join('?' * len(params))})"
        (count,) = self._conn.execute(query, params).fetchone()
        return int(count)

    def jobs(
        self, states: Iterable[str] | None = None, limit: int | None = None
    ) -> list[JobRecord]:
        """Return jobs, all or those in ``states``, ordered by sample and index."""
        query = "SELECT * FROM jobs"
        params: list[Any] = []
        if states is not None:
            params = list(states)
            query += f" WHERE state IN ({','.join('?' * len(params))})"
        query += " ORDER BY sample, idx"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        return [_record(row) for row in self._conn.execute(query, params)]

    def tracked(self) -> list[TrackedJob]:
        """Return the few columns the poll loop reads, for every active job."""
        placeholders = ",".join("?" * len(ACTIVE))
        rows = self._conn.execute(
            "SELECT name, state, job_id, stat, unknown_since, not_found_since "
            f"FROM jobs WHERE state IN ({placeholders})",
            sorted(ACTIVE),
        )
        return [TrackedJob(*row) for row in rows]

    def job(self, name: str) -> JobRecord:
        """Return the job called ``name``.

        Raises:
            KeyError: no such job.
        """
        row = self._conn.execute(
            "SELECT * FROM jobs WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise KeyError(f"job {name!r} not found in ledger {self.path}")
        return _record(row)

    # --- submissions -----------------------------------------------------

    def begin_submission(
        self,
        entries: Sequence[tuple[str, str, int | None, Path, Path]],
        attempt_increment: bool = True,
    ) -> None:
        """Record the intent to submit ``(job, batch_name, array_index, out, err)``.

        Called before ``bsub`` runs; one transaction for all entries (a whole
        array is recorded at once). With ``attempt_increment=False`` the
        current attempt is submitted again after a lookup found nothing.
        """
        now = time.time()
        statements: list[tuple[str, Sequence[Any]]] = []
        for job, batch_name, array_index, log_out, log_err in entries:
            bump = 1 if attempt_increment else 0
            statements.append(
                (
                    "UPDATE jobs SET state = ?, attempt = attempt + ?, batch_name = ?,"
                    " array_index = ?, job_id = NULL, stat = NULL, log_out = ?,"
                    " log_err = ?, submitted_at = ?, unknown_since = NULL,"
                    " not_found_since = NULL, updated_at = ? WHERE name = ?",
                    (
                        SUBMITTING,
                        bump,
                        batch_name,
                        array_index,
                        str(log_out),
                        str(log_err),
                        now,
                        now,
                        job,
                    ),
                )
            )
            statements.append(
                (
                    "INSERT INTO submissions (job, attempt, batch_name, array_index,"
                    " status, log_out, started_at) SELECT name, attempt, ?, ?,"
                    " 'submitting', ?, ? FROM jobs WHERE name = ?",
                    (batch_name, array_index, str(log_out), now, job),
                )
            )
        self._transaction(statements)

    def confirm_submission(self, ids: Sequence[tuple[str, str]]) -> None:
        """Store the batch job id of each ``(job, job_id)`` after submission."""
        now = time.time()
        statements: list[tuple[str, Sequence[Any]]] = []
        for job, job_id in ids:
            statements.append(
                (
                    "UPDATE jobs SET state = ?, job_id = ?, updated_at = ?"
                    " WHERE name = ?",
                    (PENDING, job_id, now, job),
                )
            )
            statements.append(
                (
                    "UPDATE submissions SET job_id = ?, status = 'submitted',"
                    " confirmed_at = ? WHERE seq = (SELECT MAX(seq) FROM submissions"
                    " WHERE job = ?)",
                    (job_id, now, job),
                )
            )
        self._transaction(statements)

    def mark_unconfirmed(self, job: str, detail: str) -> None:
        """Note that the last submission of ``job`` returned no job id."""
        self.add_event(job, "unconfirmed", detail)

    def submissions(self, job: str | None = None) -> list[dict[str, Any]]:
        """Return submission rows, all or those of ``job``, oldest first."""
        query = "SELECT * FROM submissions"
        params: list[str] = []
        if job is not None:
            query += " WHERE job = ?"
            params.append(job)
        return [
            dict(row) for row in self._conn.execute(query + " ORDER BY seq", params)
        ]

    # --- state changes ---------------------------------------------------

    def set_state(self, job: str, state: str, **fields: Any) -> None:
        """Set the state of ``job`` and any of the columns given as keywords."""
        allowed = {
            "stat",
            "exit_code",
            "reason",
            "unknown_since",
            "not_found_since",
            "job_id",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(
                f"unknown ledger columns {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        columns = ["state = ?", "updated_at = ?"] + [f"{key} = ?" for key in fields]
        params = [state, time.time(), *fields.values(), job]
        self._write(f"UPDATE jobs SET {', '.join(columns)} WHERE name = ?", params)
        if state in (DONE, FAILED, RETRY, KILLED):
            self._write(
                "UPDATE submissions SET status = ?, exit_code = ? WHERE seq = "
                "(SELECT MAX(seq) FROM submissions WHERE job = ?)",
                (state, fields.get("exit_code"), job),
            )

    def set_stats(self, updates: Sequence[tuple[str, str, str]]) -> None:
        """Store ``(job, state, stat)`` for many jobs in one transaction."""
        now = time.time()
        self._transaction(
            (
                "UPDATE jobs SET state = ?, stat = ?, updated_at = ? WHERE name = ?",
                (state, stat, now, job),
            )
            for job, state, stat in updates
        )

    def record_failure(
        self, job: str, state: str, exit_code: int | None, reason: str
    ) -> None:
        """Count a failed attempt of ``job`` and set its state (retry or failed)."""
        self._write("UPDATE jobs SET failures = failures + 1 WHERE name = ?", (job,))
        self.set_state(job, state, exit_code=exit_code, reason=reason)

    def reopen_failed(self) -> list[str]:
        """Give every job that failed for good a new set of attempts.

        A rerun calls this after the user fixed the cause: the jobs go back
        to ``retry`` with their failure count reset, and their next attempt
        number continues, so batch job names never repeat.

        Returns:
            The names of the reopened jobs.
        """
        rows = self._conn.execute("SELECT name FROM jobs WHERE state = ?", (FAILED,))
        names = [str(row[0]) for row in rows]
        if names:
            now = time.time()
            self._transaction(
                (
                    "UPDATE jobs SET state = ?, failures = 0, updated_at = ? "
                    "WHERE name = ?",
                    (RETRY, now, name),
                )
                for name in names
            )
            self.add_event(None, "reopened", ", ".join(names))
        return names

    def add_event(self, job: str | None, kind: str, detail: str = "") -> None:
        """Append an event (kill, escalation, suspension, ...) to the ledger."""
        self._write(
            "INSERT INTO events (time, job, kind, detail) VALUES (?, ?, ?, ?)",
            (time.time(), job, kind, detail),
        )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Return events, all or those of ``kind``, oldest first."""
        query = "SELECT * FROM events"
        params: list[str] = []
        if kind is not None:
            query += " WHERE kind = ?"
            params.append(kind)
        return [
            dict(row) for row in self._conn.execute(query + " ORDER BY seq", params)
        ]
