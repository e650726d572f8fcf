"""Crash, resume, bad input and hostile input: the guarantees of docs/reliability.md.

Production tests run the real production code against the LSF emulator, whose
``bsub`` runs each job's command line through ``/bin/sh -c`` as LSF does.
One-touch tests run the flow on the session's small generated sample and
check that a bad input stops it with one error and leaves no partial output.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import uproot
import yaml

from analysis.errors import BatchError, ConfigError
from analysis.production import ledger as lg
from analysis.production.config import ProductionConfig, load_config, parse_config
from analysis.production.runner import Production, make_backend
from flows.one_touch import one_touch
from tests.lsf_emulator import lsfemu
from tests.lsf_emulator.harness import emulator, toy_payload

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared" / "data"

# Every character a shell would interpret: quotes, ';', '&', '|', '$()',
# backticks, '*' and a newline. The command substitutions would create files
# named pwned-* if any shell expanded them.
HOSTILE_DIR = "run dir 'sq' \"dq\" ; $(touch pwned-1) `touch pwned-2` & | *\nline2"

# flows/__init__.py routes the ``analysis`` loggers to the Prefect API; the
# production code below runs outside a flow run, where Prefect warns that it
# drops those records.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Logger 'analysis[.a-z_]*' attempted to send logs to the API without "
    "a flow run id:UserWarning"
)


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Path]:
    with emulator(tmp_path / "emu") as state:
        yield state


def _production_config(tmp_path: Path, **overrides: Any) -> ProductionConfig:
    data: dict[str, Any] = {
        "name": "rel",
        "run_dir": str(tmp_path / "run"),
        "backend": "lsf",
        "payload": toy_payload(),
        "poll": {"interval_s": 0.2, "retry_initial_s": 0.05, "not_found_grace_s": 2},
        "samples": [{"name": "sig", "jobs": 2}],
    }
    data.update(overrides)
    return parse_config(data, tmp_path)


def _run_production(config: ProductionConfig) -> None:
    production = Production(config, make_backend(config))
    try:
        production.run()
    finally:
        production.close()


def _emulator_argvs(state: Path) -> dict[str, list[str]]:
    """Return the bsub argv of every submission the emulator received, by name."""
    with sqlite3.connect(state / "lsf.db") as conn:
        rows = conn.execute("SELECT name, argv FROM submissions ORDER BY seq")
        return {str(name): json.loads(argv) for name, argv in rows}


def _finished_count(state: Path) -> int:
    """Return the number of job elements the emulator has seen end."""
    with sqlite3.connect(state / "lsf.db") as conn:
        (finished,) = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE end_time IS NOT NULL"
        ).fetchone()
    return int(finished)


def _unfinished_ids(state: Path) -> set[str]:
    """Return the ids of unfinished jobs, ``123[4]`` for array elements."""
    with sqlite3.connect(state / "lsf.db") as conn:
        rows = conn.execute("SELECT id, idx FROM jobs WHERE end_time IS NULL")
        return {f"{i}[{idx}]" if idx else str(i) for i, idx in rows}


def _wait_until(predicate: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s} s")


def _tree_values(path: Path) -> np.ndarray:
    with uproot.open(path) as handle:
        return np.asarray(handle["tau3mu"]["M"].array(library="np"))


# --- hostile paths through LSF's shell ----------------------------------------


@pytest.mark.parametrize("wrapper", [True, False], ids=["job_wrapper", "raw_payload"])
def test_lsf_hostile_run_dir_stays_literal(
    emu: Path, tmp_path: Path, wrapper: bool
) -> None:
    run_dir = tmp_path / HOSTILE_DIR
    # With the wrapper, the first attempts go out as one job array and the
    # failed element comes back as a single job: both argv forms are checked.
    config = _production_config(
        tmp_path,
        run_dir=str(run_dir),
        job_wrapper=wrapper,
        use_arrays=wrapper,
        samples=[{"name": "sig", "jobs": 3}],
    )
    failing = "rel.sig.00000-00002.a1[2]" if wrapper else "rel.sig.00001.a1"
    lsfemu.set_control(emu, fail_names={failing: 5})
    _run_production(config)

    with lg.Ledger(run_dir / "ledger.sqlite") as ledger:
        jobs = ledger.jobs()
    assert {job.state for job in jobs} == {lg.DONE}
    for job in jobs:
        (output,) = job.outputs
        assert output.parent.parent.parent == run_dir
        assert output.is_file(), output
        assert job.log_out is not None
        assert job.log_out.is_file(), job.log_out

    argvs = _emulator_argvs(emu)
    # One array plus one resubmission, or three single jobs plus one.
    assert len(argvs) == (2 if wrapper else 4), argvs
    for name, argv in argvs.items():
        assert argv[argv.index("-cwd") + 1] == str(run_dir)
        log_out = argv[argv.index("-o") + 1]
        assert log_out.startswith(str(run_dir / "logs" / "sig") + "/"), name
        # The shell on the batch host must split the command line back into
        # the argv that the orchestrator meant, with nothing expanded.
        command = shlex.split(argv[-1])
        if wrapper:
            assert command[-2] == "--spec"
            assert Path(command[-1]).parent == run_dir / "jobs"
        else:
            output = command[command.index("--output") + 1]
            assert Path(output).parent == run_dir / "output" / "sig"

    pwned = sorted(p.name for p in tmp_path.rglob("pwned-*"))
    assert pwned == [], f"a shell expanded the run_dir: {pwned}"
    assert not list(PROJECT.glob("pwned-*"))


def test_silent_bsub_decided_from_report(emu: Path, tmp_path: Path) -> None:
    # bsub prints no job id, and bjobs never shows the job: it is hidden for
    # 60 s and forgotten as soon as it ends. Only its job report proves that
    # it ran, so the rerun of that attempt must not happen.
    lsfemu.set_control(emu, lag_s=60.0, clean_period_s=0.0)
    lsfemu.add_fault(emu, "bsub", "silent")
    poll = {"interval_s": 0.2, "retry_initial_s": 0.05, "not_found_grace_s": 30}
    config = _production_config(
        tmp_path, poll=poll, samples=[{"name": "sig", "jobs": 1}]
    )
    start = time.monotonic()
    _run_production(config)
    assert time.monotonic() - start < 30, "decided only after the grace period"

    assert lsfemu.submissions_by_name(emu) == {"rel.sig.00000.a1": 1}
    with lg.Ledger(config.run_dir / "ledger.sqlite") as ledger:
        (job,) = ledger.jobs()
        (row,) = ledger.submissions()
    assert job.state == lg.DONE
    # The id comes from the report's subject line: the emulator's first id.
    assert row["job_id"] == "1001"


# --- production: SIGKILL of the real flow process, then rerun ------------------


def _write_production_yaml(folder: Path, name: str, run_dir: str) -> Path:
    data = {
        "name": name,
        "run_dir": run_dir,
        "backend": "lsf",
        "payload": toy_payload("--sleep", "1.0"),
        "use_arrays": True,
        "array_limit": 2,
        "poll": {"interval_s": 0.2, "retry_initial_s": 0.05, "not_found_grace_s": 2},
        "samples": [{"name": "sig", "jobs": 6}, {"name": "bkg", "jobs": 2}],
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_production_sigkill_then_rerun(
    emu: Path, tmp_path: Path, prefect_api: str
) -> None:
    path = _write_production_yaml(tmp_path, "crash", "crash-run")
    command = [
        sys.executable, "-m", "flows.production", "--config", str(path),
        "--backend", "lsf",
    ]  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    first = subprocess.Popen(
        command,
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Kill once some jobs finished while others still run or wait.
        _wait_until(lambda: _finished_count(emu) >= 2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    unfinished = _unfinished_ids(emu)
    assert unfinished, "the flow was killed too late: every job had finished"

    second = subprocess.run(
        command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]

    # One bsub per array, none repeated by the rerun.
    assert lsfemu.submissions_by_name(emu) == {
        "crash.sig.00000-00005.a1": 1,
        "crash.bkg.00000-00001.a1": 1,
    }
    config = load_config(path)
    with lg.Ledger(config.run_dir / "ledger.sqlite") as ledger:
        jobs = ledger.jobs()
        assert len(ledger.submissions()) == 8
    assert {job.state for job in jobs} == {lg.DONE}
    # The jobs left running by the killed process finished under their
    # original ids, which the rerun read from the ledger.
    assert unfinished <= {job.job_id for job in jobs}
    listing = json.loads((config.run_dir / "outputs.json").read_text())

    # An uninterrupted run of the same jobs; the toy payload is seeded, so
    # every output must hold the same values, bit for bit.
    reference = load_config(_write_production_yaml(tmp_path, "ref", "ref-run"))
    _run_production(reference)
    expected = json.loads((reference.run_dir / "outputs.json").read_text())
    assert listing["entries"] == expected["entries"]
    for sample, files in expected["samples"].items():
        assert len(listing["samples"][sample]) == len(files)
        for got, want in zip(listing["samples"][sample], files, strict=True):
            np.testing.assert_array_equal(
                _tree_values(Path(got)), _tree_values(Path(want))
            )


def test_second_production_in_run_dir_rejected(emu: Path, tmp_path: Path) -> None:
    config = _production_config(tmp_path, payload=toy_payload("--sleep", "30"))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(config.run_dir)],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(BatchError, match=r"in use by another production"):
            _run_production(config)
    finally:
        holder.kill()
        holder.wait()
    assert lsfemu.count_calls(emu, "bsub") == 0
    assert not (config.run_dir / "ledger.sqlite").exists()


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from analysis.production.runner import production_lock
with production_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


# --- one-touch: bad input through the flow ---------------------------------------


def _bad_config(
    small_config: Path, tmp_path: Path, change: Callable[..., None]
) -> Path:
    config = yaml.safe_load(small_config.read_text())
    change(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _sample(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in config["samples"] if s["name"] == name)


def _unknown_cut_variable(config: dict[str, Any]) -> None:
    config["preselection"][0]["cut"] = "muonIDD > 0.5"


def _empty_glob(config: dict[str, Any]) -> None:
    folder = Path(_sample(config, "data")["files"][0]).parent
    _sample(config, "data")["files"] = [str(folder / "no-such-*.root")]


def _event_wise_tree(config: dict[str, Any]) -> None:
    data = _sample(config, "data")
    data["files"] = [str(SHARED / "uproot-testdata" / "uproot-HZZ.root")]
    data["tree"] = "events"


def _unclosed_file(config: dict[str, Any]) -> None:
    _sample(config, "data")["files"] = [str(SHARED / "belle2" / "load_recon.root")]


def _missing_tree(config: dict[str, Any]) -> None:
    _sample(config, "data")["tree"] = "tau3muu"


BAD_INPUTS = {
    "unknown_cut_variable": (_unknown_cut_variable, r"(?s)sample 'signal'.*muonIDD"),
    "empty_glob": (_empty_glob, r"sample 'data': pattern .*no-such-\*\.root.* no file"),
    "event_wise_tree": (
        _event_wise_tree,
        r"(?s)sample 'data'.*unknown variable 'daughter\(0, muonID\)'",
    ),
    "unclosed_file": (_unclosed_file, r"(?s)sample 'data'.*load_recon\.root"),
    "missing_tree": (_missing_tree, r"(?s)sample 'data'.*'tau3muu' not found"),
}


def _leftovers(run_dir: Path) -> list[str]:
    if not run_dir.exists():
        return []
    return sorted(
        str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()
    )


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_flow_bad_input_one_clear_error(
    case: str, small_config: Path, prefect_api: str, tmp_path: Path, shared_data: Path
) -> None:
    change, message = BAD_INPUTS[case]
    path = _bad_config(small_config, tmp_path, change)
    runs = tmp_path / "runs"
    state = one_touch(config=str(path), runs_dir=str(runs), return_state=True)

    assert state.is_failed()
    with pytest.raises(Exception, match=message) as info:
        state.result()
    assert "Traceback" not in str(info.value)

    # Nothing half-written: no stage record, no results, no temporary file.
    # What may remain are complete files that the rerun overwrites: the lock,
    # the branch map and the skims of the samples read before the bad one.
    remaining = _leftovers(runs / "small")
    assert not [name for name in remaining if name.startswith(".stages")]
    assert "results.json" not in remaining
    assert not [name for name in remaining if name.endswith(".tmp")]
    skims = {f"preselection/{name}.parquet" for name in ("signal", "taupair", "qqbar")}
    allowed = {".lock", "preselection/branches.json"} | skims
    assert set(remaining) <= allowed, remaining
    for name in remaining:
        if name.endswith(".parquet"):
            assert pl.read_parquet(runs / "small" / name).height > 0, name
        elif name.endswith(".json"):
            json.loads((runs / "small" / name).read_text())


@pytest.mark.integration
def test_flow_event_wise_tree_called_not_flat(
    small_config: Path, prefect_api: str, tmp_path: Path, shared_data: Path
) -> None:
    path = _bad_config(small_config, tmp_path, _event_wise_tree)
    state = one_touch(config=str(path), runs_dir=str(tmp_path), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"(?s)uproot-HZZ\.root.*not a flat ntuple"):
        state.result()


BAD_CONFIGS = {
    "yaml_syntax": ("name: x\nsamples: [\n  - {name: a\n", r"invalid YAML at line \d"),
    "unknown_key": ("lumi_fb", r"lumi_fb: unknown key"),
    "wrong_type": ("n_toys", r"limit\.n_toys: .*got 'many'"),
    "missing_samples": ("samples", r"samples: required key is missing"),
    "negative_luminosity": ("luminosity", r"limit\.luminosity_fb: .*got -1"),
}


def _config_text(case: str, small_config: Path) -> str:
    raw, _ = BAD_CONFIGS[case]
    if case == "yaml_syntax":
        return raw
    config = yaml.safe_load(small_config.read_text())
    if case == "unknown_key":
        config["lumi_fb"] = 424
    elif case == "wrong_type":
        config["limit"]["n_toys"] = "many"
    elif case == "missing_samples":
        del config["samples"]
    else:
        config["limit"]["luminosity_fb"] = -1
    return yaml.safe_dump(config)


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_flow_bad_config_writes_nothing(
    case: str, small_config: Path, prefect_api: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_config_text(case, small_config))
    runs = tmp_path / "runs"
    state = one_touch(config=str(path), runs_dir=str(runs), return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match=BAD_CONFIGS[case][1]):
        state.result()
    assert not runs.exists(), "a config error must stop the flow before any write"


# --- writes that fail for real ---------------------------------------------------

_FILE_TOO_LARGE = """
import json, resource, signal, sys
from pathlib import Path
from analysis.errors import OutputError
from analysis.outputs import write_json, write_text
path = Path(sys.argv[1])
write_json(path, {"limit": 1.0})
# The kernel now refuses to let this process grow any file past 4 kB: a real
# write error (EFBIG) in the middle of the output, as on a full disk.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    write_text(path, "x" * 100_000)
except OutputError as err:
    print(json.dumps({"error": str(err)}))
else:
    print(json.dumps({"error": None}))
"""


def test_write_error_keeps_earlier_output(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-c", _FILE_TOO_LARGE, str(path)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    error = json.loads(done.stdout)["error"]
    assert error is not None, "the oversized write did not fail"
    assert "File too large" in error
    assert str(path) in error
    assert json.loads(path.read_text()) == {"limit": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# --- hostile input: no code runs from config text or run directories -------------

_UNSAFE_CALLS = {
    "eval", "exec", "compile", "__import__",
    "pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load",
    "yaml.full_load", "os.system", "os.popen", "joblib.load", "marshal.loads",
    "dill.load", "dill.loads", "shelve.open", "torch.load",
}  # fmt: skip
_UNSAFE_MODULES = {"pickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _unsafe_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [module] if module else [a.name for a in node.names]
            for name in names:
                if name and name.split(".")[0] in _UNSAFE_MODULES:
                    found.append(f"{where}: import {name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in _UNSAFE_CALLS:
            found.append(f"{where}: {name}()")
        for keyword in node.keywords:
            value = keyword.value
            literal_false = isinstance(value, ast.Constant) and value.value is False
            if keyword.arg in ("shell", "allow_pickle") and not literal_false:
                found.append(f"{where}: {name}({keyword.arg}=...)")
    return found


def test_sources_never_unpickle_eval_or_shell() -> None:
    sources = sorted((PROJECT / "analysis").rglob("*.py"))
    sources += sorted((PROJECT / "flows").rglob("*.py"))
    assert len(sources) > 20
    found = [use for path in sources for use in _unsafe_uses(path)]
    assert found == []


def test_unsafe_scan_finds_planted_calls(tmp_path: Path) -> None:
    # The scan itself must be able to fail.
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import pickle\nimport subprocess\nimport numpy as np\n"
        "pickle.loads(b'')\neval('1')\nsubprocess.run('ls', shell=True)\n"
        "np.load('a.npy', allow_pickle=True)\n"
    )
    found = _unsafe_uses(planted)
    assert len(found) == 5, found


def test_production_yaml_tags_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "production.yaml"
    path.write_text(
        "name: !!python/object/apply:os.system ['touch "
        + str(marker)
        + "']\nrun_dir: run\npayload: [true]\nsamples: [{name: s, jobs: 1}]\n"
    )
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not marker.exists()
