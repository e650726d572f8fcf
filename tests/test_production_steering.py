"""basf2 steering script, run against stand-in basf2 modules that record calls.

basf2 cannot be installed here, so each module the script imports is replaced
by a small module (written to tmp_path, used only by these tests) that appends
every call with its arguments to a JSON-lines file. The real check of the
script is a run at KEK.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from analysis.production.plan import STEERING

_RECORDER = """
import json, os

def _record(module, name, args, kwargs):
    def plain(value):
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return repr(value)
    entry = {"call": f"{module}.{name}", "args": plain(list(args)),
             "kwargs": {k: plain(v) for k, v in kwargs.items()}}
    with open(os.environ["BASF2_STUB_LOG"], "a") as handle:
        handle.write(json.dumps(entry) + "\\n")

def make(module, names):
    functions = {}
    for name in names:
        def function(*args, _name=name, **kwargs):
            _record(module, _name, args, kwargs)
            return Path() if _name == "create_path" else None
        functions[name] = function
    return functions

class Path:
    def __repr__(self):
        return "<basf2.Path>"
"""

_MODULES = {
    "basf2": ["create_path", "process"],
    "modularAnalysis": [
        "inputMdstList",
        "fillParticleList",
        "reconstructDecay",
        "buildEventShape",
        "buildEventKinematics",
        "buildRestOfEvent",
        "appendROEMasks",
        "matchMCTruth",
        "variablesToNtuple",
    ],
    "vertex": ["kFit", "treeFit"],
    "stdCharged": ["stdPi", "stdMu"],
    "stdPhotons": ["stdPhotons"],
}


def _write_stubs(folder: Path) -> None:
    (folder / "_stubrecorder.py").write_text(_RECORDER)
    for module, names in _MODULES.items():
        text = (
            "from _stubrecorder import make, Path\n"
            f"globals().update(make({module!r}, {names!r}))\n"
        )
        if module == "basf2":
            text += "statistics = 'basf2 statistics stand-in'\n"
        (folder / f"{module}.py").write_text(text)


def _run_steering(tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    _write_stubs(stubs)
    log = tmp_path / "calls.jsonl"
    env = {
        "PYTHONPATH": str(stubs),
        "BASF2_STUB_LOG": str(log),
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(
        [sys.executable, str(STEERING), *args], env=env, check=True, capture_output=True
    )
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def calls(tmp_path: Path) -> list[dict[str, Any]]:
    return _run_steering(
        tmp_path, "--output", "out dir/n.root", "--tree", "tau3mu", "a.mdst", "b.mdst"
    )


def _one(calls: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [c for c in calls if c["call"] == name]
    assert len(found) == 1, f"{name} called {len(found)} times"
    return found[0]


def test_steering_reads_inputs(calls: list[dict[str, Any]]) -> None:
    assert _one(calls, "modularAnalysis.inputMdstList")["kwargs"]["filelist"] == [
        "a.mdst", "b.mdst",
    ]  # fmt: skip


def test_steering_muon_id_cut(calls: list[dict[str, Any]]) -> None:
    call = _one(calls, "modularAnalysis.fillParticleList")
    assert call["args"][0] == "mu+:tau3mu"
    assert "muonID > 0.5" in call["kwargs"]["cut"]


def test_steering_tau_decay_and_cuts(calls: list[dict[str, Any]]) -> None:
    call = _one(calls, "modularAnalysis.reconstructDecay")
    assert call["args"][0] == "tau+:3mu -> mu+:tau3mu mu-:tau3mu mu+:tau3mu"
    assert call["kwargs"]["cut"] == "1.3 < M < 2.2 and -1.0 < deltaE < 0.5"


def test_steering_vertex_fit(calls: list[dict[str, Any]]) -> None:
    call = _one(calls, "vertex.kFit")
    assert call["args"][0] == "tau+:3mu"
    assert call["kwargs"]["fit_type"] == "vertex"


def test_steering_event_shape_and_roe(calls: list[dict[str, Any]]) -> None:
    shape = _one(calls, "modularAnalysis.buildEventShape")
    assert shape["kwargs"]["thrust"] is True
    assert _one(calls, "modularAnalysis.buildEventKinematics")["kwargs"][
        "inputListNames"
    ]
    assert _one(calls, "modularAnalysis.buildRestOfEvent")["args"][0] == "tau+:3mu"
    masks = _one(calls, "modularAnalysis.appendROEMasks")["args"][1]
    assert masks[0][0] == "cleanMask"


def test_steering_ntuple_and_order(calls: list[dict[str, Any]]) -> None:
    ntuple = _one(calls, "modularAnalysis.variablesToNtuple")
    assert ntuple["kwargs"]["filename"] == "out dir/n.root"
    assert ntuple["kwargs"]["treename"] == "tau3mu"
    variables = ntuple["kwargs"]["variables"]
    for name in ("M", "deltaE", "chiProb", "thrust", "missingMomentumOfEventCMS",
                 "roeE(cleanMask)", "daughter(0, muonID)"):  # fmt: skip
        assert name in variables
    assert "isSignal" not in variables
    order = [c["call"] for c in calls]
    assert order.index("modularAnalysis.reconstructDecay") < order.index("vertex.kFit")
    assert order.index("vertex.kFit") < order.index("modularAnalysis.variablesToNtuple")
    assert order[-1] == "basf2.process"


def test_steering_mc_adds_truth(tmp_path: Path) -> None:
    calls = _run_steering(
        tmp_path, "--output", "n.root", "--mc", "--muon-id", "0.9", "a"
    )
    assert _one(calls, "modularAnalysis.matchMCTruth")["args"][0] == "tau+:3mu"
    assert (
        "isSignal"
        in _one(calls, "modularAnalysis.variablesToNtuple")["kwargs"]["variables"]
    )
    assert (
        "muonID > 0.9"
        in _one(calls, "modularAnalysis.fillParticleList")["kwargs"]["cut"]
    )
