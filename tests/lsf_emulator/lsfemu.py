"""LSF emulator for the tests: ``bsub``, ``bjobs`` and ``bkill`` on local processes.

Standard library only, so that it runs with any Python 3.11. The state lives in
one SQLite file, ``$LSFEMU_DIR/lsf.db``. ``bsub`` stores the job and starts one
detached executor process per submission (a single job or a whole array). As
real LSF does, ``bsub`` joins the command and its arguments with spaces and
the executor runs that line with ``/bin/sh -c``, so a command that was not
quoted for the shell breaks here as it would on LSF. The
executor runs the elements as local processes, writes their output to the
``-o``/``-e`` files and appends an LSF job report to the ``-o`` file, the way
LSF does with ``LSB_STDOUT_DIRECT=Y``.

Switches, set by the tests through :func:`set_control` and :func:`add_fault`:

- ``lag_s``: a new job is "not found" by ``bjobs`` for this many seconds.
- ``pend_s``: a job stays PEND for this many seconds before it starts.
- ``clean_period_s``: a finished job is forgotten by ``bjobs`` after this many
  seconds (LSF's CLEAN_PERIOD).
- ``fail_names``: job name (element names with ``[i]``) to exit code; the job
  exits with that code without running its command.
- state overrides (:func:`override_stat`): ``bjobs`` shows a given STAT for a
  job name for some seconds (UNKWN, ZOMBI, PSUSP, USUSP, ...).
- faults (:func:`add_fault`): the next call of ``bjobs``/``bsub`` fails in a
  named way (transient errors, bsub without its ``Job <id>`` line, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

STATE_ENV = "LSFEMU_DIR"
PYTHON_ENV = "LSFEMU_PYTHON"
DEFAULT_QUEUE = "normal"
HOST = "emuhost"
USER = os.environ.get("USER", "user")

PLEASE_WAIT = "LSF is processing your request. Please wait ..."
FAULT_MESSAGES = {
    "please_wait": "batch system daemon not responding ... still trying\n"
    + PLEASE_WAIT,
    "cannot_connect": "Cannot connect to LSF. Please wait ...",
    "lsf_down": "LSF is down. Please wait ...",
    "reset": "Failed in an LSF library call: Connection reset by peer",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    queue TEXT NOT NULL,
    project TEXT,
    stat TEXT NOT NULL,
    exit_code INTEGER,
    submit_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    out_path TEXT,
    err_path TEXT,
    cwd TEXT,
    argv TEXT NOT NULL,
    pid INTEGER,
    killed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (id, idx)
);
CREATE INDEX IF NOT EXISTS jobs_name ON jobs (name);
CREATE TABLE IF NOT EXISTS submissions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    id INTEGER,
    name TEXT,
    argv TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    command TEXT NOT NULL,
    argc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS faults (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    command TEXT NOT NULL,
    kind TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS overrides (
    name TEXT PRIMARY KEY,
    stat TEXT NOT NULL,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS control (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS executors (pid INTEGER PRIMARY KEY, id INTEGER);
"""

_DEFAULTS: dict[str, Any] = {
    "lag_s": 0.0,
    "pend_s": 0.0,
    "clean_period_s": 3600.0,
    "fail_names": {},
}


# --- state -------------------------------------------------------------------


def state_dir() -> Path:
    """Return the emulator's state folder from ``$LSFEMU_DIR``."""
    value = os.environ.get(STATE_ENV)
    if not value:
        sys.stderr.write(f"lsfemu: set {STATE_ENV} to the emulator state folder\n")
        raise SystemExit(2)
    return Path(value)


def connect(folder: Path | None = None) -> sqlite3.Connection:
    """Open the state database, creating it on first use."""
    folder = folder or state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(folder / "lsf.db", timeout=60, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(_SCHEMA)
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block inside ``BEGIN IMMEDIATE`` ... ``COMMIT``."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def control(conn: sqlite3.Connection) -> dict[str, Any]:
    """Return the switches with defaults filled in."""
    values = dict(_DEFAULTS)
    for key, value in conn.execute("SELECT key, value FROM control"):
        values[key] = json.loads(value)
    return values


def set_control(folder: Path, **values: Any) -> None:
    """Set emulator switches (see the module docstring) for later calls."""
    conn = connect(folder)
    with transaction(conn):
        for key, value in values.items():
            conn.execute(
                "INSERT OR REPLACE INTO control VALUES (?, ?)", (key, json.dumps(value))
            )
    conn.close()


def add_fault(folder: Path, command: str, kind: str, times: int = 1) -> None:
    """Make the next ``times`` calls of ``command`` fail in the way ``kind``.

    bjobs kinds: the keys of ``FAULT_MESSAGES`` (exit 255, message on stderr),
    ``exit_nonzero`` (full output but exit 255), ``truncated`` (half a JSON
    document, exit 0). bsub kinds: ``silent`` (job submitted, no ``Job <id>``
    line, exit 0), ``preamble`` (Please wait and project lines before the
    ``Job <id>`` line), ``lsf_down`` (not submitted, exit 255).
    """
    conn = connect(folder)
    with transaction(conn):
        for _ in range(times):
            conn.execute(
                "INSERT INTO faults (command, kind) VALUES (?, ?)", (command, kind)
            )
    conn.close()


def override_stat(folder: Path, name: str, stat: str, seconds: float) -> None:
    """Make ``bjobs`` show ``stat`` for job ``name`` during the next ``seconds``."""
    conn = connect(folder)
    with transaction(conn):
        conn.execute(
            "INSERT OR REPLACE INTO overrides VALUES (?, ?, ?)",
            (name, stat, time.time() + seconds),
        )
    conn.close()


def _pop_fault(conn: sqlite3.Connection, command: str) -> str | None:
    with transaction(conn):
        row = conn.execute(
            "SELECT seq, kind FROM faults WHERE command = ? ORDER BY seq LIMIT 1",
            (command,),
        ).fetchone()
        if row is None:
            return None
        conn.execute("DELETE FROM faults WHERE seq = ?", (row[0],))
    return str(row[1])


def _record_call(conn: sqlite3.Connection, command: str, argc: int) -> None:
    conn.execute(
        "INSERT INTO calls (time, command, argc) VALUES (?, ?, ?)",
        (time.time(), command, argc),
    )


def count_calls(folder: Path, command: str) -> int:
    """Return how often ``command`` was called."""
    conn = connect(folder)
    (count,) = conn.execute(
        "SELECT COUNT(*) FROM calls WHERE command = ?", (command,)
    ).fetchone()
    conn.close()
    return int(count)


def submissions_by_name(folder: Path) -> dict[str, int]:
    """Return how many times each job name was submitted through ``bsub``."""
    conn = connect(folder)
    rows = conn.execute("SELECT name, COUNT(*) FROM submissions GROUP BY name")
    result = {str(name): int(count) for name, count in rows}
    conn.close()
    return result


def executor_pids(folder: Path) -> list[int]:
    """Return the pids of executor processes started by ``bsub``."""
    conn = connect(folder)
    pids = [int(pid) for (pid,) in conn.execute("SELECT pid FROM executors")]
    conn.close()
    return pids


def running_pids(folder: Path) -> list[int]:
    """Return the pids of job processes that have not finished."""
    conn = connect(folder)
    rows = conn.execute(
        "SELECT pid FROM jobs WHERE pid IS NOT NULL AND end_time IS NULL"
    )
    pids = [int(pid) for (pid,) in rows]
    conn.close()
    return pids


def shutdown(folder: Path, timeout_s: float = 10.0) -> None:
    """Kill every job and executor of this emulator and wait for them to end."""
    if not (folder / "lsf.db").exists():
        return
    pids = running_pids(folder) + executor_pids(folder)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- bsub --------------------------------------------------------------------

_ARRAY_RE = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<spec>[^\]]+)\](?:%(?P<limit>\d+))?$")
_BSUB_VALUE_OPTIONS = {
    "-q",
    "-n",
    "-M",
    "-R",
    "-W",
    "-J",
    "-o",
    "-e",
    "-cwd",
    "-P",
    "-G",
    "-m",
    "-u",
    "-app",
    "-sla",
    "-g",
    "-L",
    "-E",
    "-Ep",
    "-w",
    "-oo",
    "-eo",
}
_BSUB_FLAG_OPTIONS = {"-K", "-B", "-N", "-r", "-rn", "-x", "-I", "-Ip", "-H"}


def _parse_indices(spec: str) -> list[int]:
    indices: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            start, _, rest = part.partition("-")
            stop, _, step = rest.partition(":")
            indices.extend(range(int(start), int(stop) + 1, int(step or 1)))
        else:
            indices.append(int(part))
    return indices


def bsub(argv: Sequence[str]) -> int:
    """Emulate ``bsub [options] command [arguments]``."""
    options: dict[str, str] = {}
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in _BSUB_FLAG_OPTIONS:
            options[option] = ""
        elif option in _BSUB_VALUE_OPTIONS and rest:
            options[option] = rest.pop(0)
        else:
            sys.stderr.write(f"{option}: Illegal option.\n")
            return 255
    if not rest:
        sys.stderr.write("Job not submitted.\n")
        return 255
    queue = options.get("-q", DEFAULT_QUEUE)
    if queue.startswith("bad"):
        sys.stderr.write(f"{queue}: No such queue. Job not submitted.\n")
        return 255

    name = options.get("-J", Path(rest[0]).name)
    indices = [0]
    match = _ARRAY_RE.match(name)
    if match:
        name = match.group("base")
        indices = _parse_indices(match.group("spec"))

    conn = connect()
    _record_call(conn, "bsub", len(argv))
    fault = _pop_fault(conn, "bsub")
    if fault == "lsf_down":
        sys.stderr.write(FAULT_MESSAGES["lsf_down"] + "\n")
        return 255

    now = time.time()
    with transaction(conn):
        (last,) = conn.execute("SELECT COALESCE(MAX(id), 1000) FROM jobs").fetchone()
        job_id = int(last) + 1
        for idx in indices:
            conn.execute(
                "INSERT INTO jobs (id, idx, name, queue, project, stat, submit_time,"
                " out_path, err_path, cwd, argv) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    idx,
                    f"{name}[{idx}]" if match else name,
                    queue,
                    options.get("-P"),
                    "PEND",
                    now,
                    options.get("-o") or options.get("-oo"),
                    options.get("-e") or options.get("-eo"),
                    options.get("-cwd"),
                    json.dumps(rest),
                ),
            )
        conn.execute(
            "INSERT INTO submissions (time, id, name, argv) VALUES (?,?,?,?)",
            (now, job_id, name, json.dumps(list(argv))),
        )
        limit = int(match.group("limit")) if match and match.group("limit") else 0
        conn.execute(
            "INSERT OR REPLACE INTO control VALUES (?, ?)",
            (f"limit.{job_id}", json.dumps(limit or len(indices))),
        )

    _start_executor(conn, job_id)
    conn.close()

    if fault == "silent":
        return 0
    if fault == "preamble":
        sys.stdout.write(PLEASE_WAIT + "\n")
        sys.stdout.write(
            f"Job is submitted to <{options.get('-P', 'default')}> project.\n"
        )
    where = f"queue <{queue}>" if "-q" in options else f"default queue <{queue}>"
    sys.stdout.write(f"Job <{job_id}> is submitted to {where}.\n")
    return 0


def _start_executor(conn: sqlite3.Connection, job_id: int) -> None:
    python = os.environ.get(PYTHON_ENV) or sys.executable
    proc = subprocess.Popen(
        [python, os.path.abspath(__file__), "_exec", str(job_id)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    conn.execute("INSERT OR REPLACE INTO executors VALUES (?, ?)", (proc.pid, job_id))


# --- executor ----------------------------------------------------------------


def _expand(path: str | None, job_id: int, idx: int) -> str | None:
    if path is None:
        return None
    return path.replace("%J", str(job_id)).replace("%I", str(idx))


def _job_report(
    row: sqlite3.Row, exit_code: int, signal_name: str | None, start: float
) -> str:
    end = time.time()
    lines = [
        "",
        "-" * 60,
        f"Sender: LSF System <lsfadmin@{HOST}>",
        f"Subject: Job {row['id']}{_index_suffix(row['idx'])}: <{row['name']}> in "
        f"cluster <emu> {'Done' if exit_code == 0 else 'Exited'}",
        "",
        f"Job <{row['name']}> was submitted from host <{HOST}> by user <{USER}> in "
        "cluster <emu>.",
        f"Job was executed on host(s) <{HOST}>, in queue <{row['queue']}>, as user "
        f"<{USER}> in cluster <emu>.",
        f"Started at {time.ctime(start)}",
        f"Results reported at {time.ctime(end)}",
        "",
        "Your job looked like:",
        "",
        "-" * 60,
        "# LSBATCH: User input",
        " ".join(json.loads(row["argv"])),
        "-" * 60,
        "",
    ]
    if exit_code == 0:
        lines.append("Successfully completed.")
    elif signal_name is not None:
        lines.append(f"Exited with signal termination: {signal_name}.")
    else:
        lines.append(f"Exited with exit code {exit_code}.")
    lines += [
        "",
        "Resource usage summary:",
        "",
        f"    Run time :                                   {end - start:.0f} sec.",
        "",
        "The output (if any) is above this job summary.",
        "",
    ]
    return "\n".join(lines)


def _index_suffix(idx: int) -> str:
    return f"[{idx}]" if idx else ""


class _Element:
    def __init__(self, row: sqlite3.Row) -> None:
        self.row = row
        self.proc: subprocess.Popen[bytes] | None = None
        self.start = 0.0
        self.files: list[TextIO] = []


def execute(job_id: int) -> None:
    """Run every element of job ``job_id``; the body of the executor process."""
    conn = connect()
    conn.row_factory = sqlite3.Row
    settings = control(conn)
    limit = int(settings.get(f"limit.{job_id}", 1)) or 1
    pending = list(
        conn.execute("SELECT * FROM jobs WHERE id = ? ORDER BY idx", (job_id,))
    )
    pend_s = float(settings["pend_s"])
    if pend_s > 0:
        time.sleep(pend_s)

    running: list[_Element] = []
    while pending or running:
        while pending and len(running) < limit:
            element = _start_element(conn, pending.pop(0), settings)
            if element is not None:
                running.append(element)
        still: list[_Element] = []
        for element in running:
            assert element.proc is not None
            if element.proc.poll() is None:
                still.append(element)
            else:
                _finish_element(conn, element)
        running = still
        if running:
            time.sleep(0.005)
    with transaction(conn):
        conn.execute("DELETE FROM executors WHERE pid = ?", (os.getpid(),))
    conn.close()


def _start_element(
    conn: sqlite3.Connection, row: sqlite3.Row, settings: dict[str, Any]
) -> _Element | None:
    fresh = conn.execute(
        "SELECT killed FROM jobs WHERE id = ? AND idx = ?", (row["id"], row["idx"])
    ).fetchone()
    if fresh is not None and fresh[0]:
        return None
    element = _Element(row)
    element.start = time.time()
    out_path = _expand(row["out_path"], row["id"], row["idx"])
    err_path = _expand(row["err_path"], row["id"], row["idx"])
    cwd = row["cwd"] or None
    out: Any = subprocess.DEVNULL
    err: Any = subprocess.DEVNULL
    if out_path:
        out_file = open(_resolve(out_path, cwd), "a")  # noqa: SIM115
        element.files.append(out_file)
        out = err = out_file
    if err_path:
        err_file = open(_resolve(err_path, cwd), "a")  # noqa: SIM115
        element.files.append(err_file)
        err = err_file

    # LSF runs the job's command line through the shell, not the argv.
    argv = ["/bin/sh", "-c", " ".join(json.loads(row["argv"]))]
    fail_code = settings["fail_names"].get(row["name"])
    if fail_code is not None:
        argv = ["/bin/sh", "-c", f"exit {int(fail_code)}"]
    env = {
        **os.environ,
        "LSB_JOBID": str(row["id"]),
        "LSB_JOBINDEX": str(row["idx"]),
        "LSB_JOBNAME": row["name"],
    }
    env.pop(STATE_ENV, None)
    try:
        element.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        if element.files:
            element.files[0].write(f"{argv[0]}: {exc.strerror}\n")
        element.proc = subprocess.Popen(
            [sys.executable, "-c", "raise SystemExit(127)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    with transaction(conn):
        conn.execute(
            "UPDATE jobs SET stat = 'RUN', start_time = ?, pid = ? "
            "WHERE id = ? AND idx = ? AND killed = 0",
            (element.start, element.proc.pid, row["id"], row["idx"]),
        )
    return element


def _resolve(path: str, cwd: str | None) -> str:
    return path if os.path.isabs(path) or not cwd else os.path.join(cwd, path)


def _finish_element(conn: sqlite3.Connection, element: _Element) -> None:
    assert element.proc is not None
    code = element.proc.returncode
    signal_name = None
    if code < 0:
        signal_name = signal.Signals(-code).name.removeprefix("SIG").title()
        code = 128 - code
    killed = conn.execute(
        "SELECT killed FROM jobs WHERE id = ? AND idx = ?",
        (element.row["id"], element.row["idx"]),
    ).fetchone()[0]
    if killed:
        code, signal_name = 130, "Terminated"
    if element.files:
        element.files[0].write(
            _job_report(element.row, code, signal_name, element.start)
        )
    for handle in element.files:
        handle.close()
    with transaction(conn):
        conn.execute(
            "UPDATE jobs SET stat = ?, exit_code = ?, end_time = ? "
            "WHERE id = ? AND idx = ?",
            (
                "DONE" if code == 0 else "EXIT",
                code,
                time.time(),
                element.row["id"],
                element.row["idx"],
            ),
        )


# --- bjobs -------------------------------------------------------------------

_FIELDS = {
    "jobid": "JOBID",
    "jobindex": "JOBINDEX",
    "stat": "STAT",
    "exit_code": "EXIT_CODE",
    "job_name": "JOB_NAME",
    "name": "JOB_NAME",
    "queue": "QUEUE",
    "user": "USER",
}


def _visible_rows(
    conn: sqlite3.Connection,
    ids: list[str],
    name: str | None,
    show_all: bool,
    settings: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[str]]:
    now = time.time()
    lag = float(settings["lag_s"])
    clean = float(settings["clean_period_s"])
    overrides = {
        str(n): str(s)
        for n, s in conn.execute(
            "SELECT name, stat FROM overrides WHERE until > ?", (now,)
        )
    }

    def visible(row: sqlite3.Row) -> bool:
        if now - row["submit_time"] < lag:
            return False
        return not (row["end_time"] is not None and now - row["end_time"] > clean)

    def as_record(row: sqlite3.Row) -> dict[str, Any]:
        stat = overrides.get(row["name"], row["stat"])
        base = row["name"].split("[", 1)[0]
        stat = overrides.get(base, stat) if row["idx"] else stat
        exit_code = row["exit_code"] if stat == "EXIT" else None
        return {
            "JOBID": str(row["id"]),
            "JOBINDEX": str(row["idx"]),
            "STAT": stat,
            "EXIT_CODE": "" if exit_code is None else str(exit_code),
            "JOB_NAME": row["name"],
            "QUEUE": row["queue"],
            "USER": USER,
            "SUBMIT_TIME": time.strftime(
                "%b %d %H:%M", time.localtime(row["submit_time"])
            ),
            "FROM_HOST": HOST,
            "EXEC_HOST": HOST if row["start_time"] else "",
        }

    records: list[dict[str, Any]] = []
    errors: list[str] = []
    if ids:
        for job in ids:
            match = re.fullmatch(r"(\d+)(?:\[(\d+)\])?", job)
            rows: list[sqlite3.Row] = []
            if match:
                query = "SELECT * FROM jobs WHERE id = ?"
                params: list[Any] = [int(match.group(1))]
                if match.group(2):
                    query += " AND idx = ?"
                    params.append(int(match.group(2)))
                rows = [
                    r
                    for r in conn.execute(query + " ORDER BY idx", params)
                    if visible(r)
                ]
            if not rows:
                errors.append(f"Job <{job}> is not found")
            records.extend(as_record(r) for r in rows)
        return records, errors

    query = "SELECT * FROM jobs"
    params = []
    if name is not None:
        query += " WHERE name = ? OR name LIKE ?"
        params = [name, name + "[%]"]
    for row in conn.execute(query + " ORDER BY id, idx", params):
        if not visible(row):
            continue
        if row["end_time"] is not None and not show_all:
            continue
        records.append(as_record(row))
    if not records:
        errors.append(
            f"Job <{name}> is not found" if name else "No unfinished job found"
        )
    return records, errors


def bjobs(argv: Sequence[str]) -> int:
    """Emulate ``bjobs [-a] [-w] [-noheader] [-o fields] [-json] [-J name] [ids]``."""
    fields: list[str] | None = None
    as_json = False
    show_all = False
    header = True
    name: str | None = None
    ids: list[str] = []
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "-o" and rest:
            fields = rest.pop(0).split()
        elif arg == "-json":
            as_json = True
        elif arg == "-a":
            show_all = True
        elif arg == "-noheader":
            header = False
        elif arg == "-J" and rest:
            name = rest.pop(0)
        elif arg in ("-w", "-u") or arg == "all":
            continue
        elif arg.startswith("-"):
            sys.stderr.write(f"{arg}: Illegal option.\n")
            return 255
        else:
            ids.append(arg)

    conn = connect()
    conn.row_factory = sqlite3.Row
    _record_call(conn, "bjobs", len(argv))
    fault = _pop_fault(conn, "bjobs")
    if fault in FAULT_MESSAGES:
        sys.stderr.write(FAULT_MESSAGES[fault] + "\n")
        return 255
    settings = control(conn)
    records, errors = _visible_rows(conn, ids, name, show_all, settings)
    conn.close()

    if as_json and fields:
        keys = [_FIELDS.get(f.lower(), f.upper()) for f in fields]
        out_records: list[dict[str, str]] = [
            {k: r.get(k, "") for k in keys} for r in records
        ]
        for error in errors:
            match = re.search(r"<([^>]+)>", error)
            out_records.append(
                {"JOBID": match.group(1) if match else "", "ERROR": error}
            )
        text = json.dumps(
            {"COMMAND": "bjobs", "JOBS": len(out_records), "RECORDS": out_records},
            indent=2,
        )
        if fault == "truncated":
            text = text[: len(text) // 2]
        sys.stdout.write(text + "\n")
    else:
        keys = (
            [_FIELDS.get(f.lower(), f.upper()) for f in fields]
            if fields
            else [
                "JOBID",
                "USER",
                "STAT",
                "QUEUE",
                "FROM_HOST",
                "EXEC_HOST",
                "JOB_NAME",
                "SUBMIT_TIME",
            ]
        )
        if records and header:
            sys.stdout.write(" ".join(f"{k:<10}" for k in keys).rstrip() + "\n")
        for record in records:
            values = [str(record.get(k) or "-") for k in keys]
            sys.stdout.write(" ".join(f"{v:<10}" for v in values).rstrip() + "\n")
        for error in errors:
            sys.stderr.write(error + "\n")
    if fault == "exit_nonzero" or errors:
        return 255
    return 0


# --- bkill -------------------------------------------------------------------


def bkill(argv: Sequence[str]) -> int:
    """Emulate ``bkill [-J name] [0 | ids]``; returns 255 if any id failed."""
    name: str | None = None
    ids: list[str] = []
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "-J" and rest:
            name = rest.pop(0)
        elif arg in ("-s", "-r") and rest:
            rest.pop(0)
        else:
            ids.append(arg)
    conn = connect()
    conn.row_factory = sqlite3.Row
    _record_call(conn, "bkill", len(argv))
    status = 0
    targets: list[tuple[str, list[sqlite3.Row]]] = []
    if name is not None or ids == ["0"]:
        query = "SELECT * FROM jobs WHERE end_time IS NULL"
        params: list[Any] = []
        if name is not None:
            query += " AND (name = ? OR name LIKE ?)"
            params = [name, name + "[%]"]
        for row in conn.execute(query, params):
            targets.append((f"{row['id']}{_index_suffix(row['idx'])}", [row]))
        if not targets:
            sys.stderr.write("No unfinished job found\n")
            status = 255
    else:
        for job in ids:
            match = re.fullmatch(r"(\d+)(?:\[(\d+)\])?", job)
            rows: list[sqlite3.Row] = []
            if match:
                query = "SELECT * FROM jobs WHERE id = ?"
                params = [int(match.group(1))]
                if match.group(2):
                    query += " AND idx = ?"
                    params.append(int(match.group(2)))
                rows = list(conn.execute(query, params))
            targets.append((job, rows))

    for job, rows in targets:
        if not rows:
            sys.stderr.write(f"Job <{job}>: No matching job found\n")
            status = 255
            continue
        live = [r for r in rows if r["end_time"] is None]
        if not live:
            sys.stderr.write(f"Job <{job}>: Job has already finished\n")
            status = 255
            continue
        with transaction(conn):
            for row in live:
                _kill_row(conn, row)
        sys.stdout.write(f"Job <{job}> is being terminated\n")
    conn.close()
    return status


def _kill_row(conn: sqlite3.Connection, row: sqlite3.Row) -> None:
    conn.execute(
        "UPDATE jobs SET killed = 1 WHERE id = ? AND idx = ?", (row["id"], row["idx"])
    )
    if row["pid"] is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(row["pid"], signal.SIGTERM)
    else:
        # Never started: LSF marks a killed pending job EXIT at once.
        conn.execute(
            "UPDATE jobs SET stat = 'EXIT', exit_code = 130, end_time = ? "
            "WHERE id = ? AND idx = ?",
            (time.time(), row["id"], row["idx"]),
        )


def main(argv: Sequence[str]) -> int:
    """Dispatch ``lsfemu.py COMMAND ARGS...`` to bsub, bjobs, bkill or _exec."""
    if not argv:
        sys.stderr.write("usage: lsfemu.py bsub|bjobs|bkill ARGS...\n")
        return 2
    command, args = argv[0], argv[1:]
    if command == "_exec":
        execute(int(args[0]))
        return 0
    handlers = {"bsub": bsub, "bjobs": bjobs, "bkill": bkill}
    if command not in handlers:
        sys.stderr.write(f"lsfemu: unknown command {command!r}\n")
        return 2
    return handlers[command](args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
