"""Reading at scale: flat memory, worker processes, chunk boundaries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import uproot
import yaml

from analysis.config import parse_config
from analysis.errors import ConfigError, InputFileError
from analysis.preselection import SampleSelection, select_sample
from tests.procs import alive, children, cpu_seconds

PROJECT = Path(__file__).resolve().parents[1]
TREE = "tau3mu"
CUTS = [
    ("muon ID", "muonID > 0.5"),
    ("vertex fit", "chiProb > 0.01 && passesTrigger"),
    ("fit window", "1.5 < M < 2.0 and nKLMClusters < 4"),
]
PHYSICS = ("M", "chiProb", "muonID", "p0", "p1", "p2", "p3")


def write_random_ntuple(
    path: Path, n_candidates: int, seed: int, *, compress: bool = True
) -> dict[str, np.ndarray]:
    """Write a basf2-layout tree of random candidates and return its columns.

    Events hold one to three consecutive candidates, as basf2 writes them.
    The branch types are those of recent basf2 releases: int32, uint32, bool
    and double. ``M`` is NaN for 1% of the candidates.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_candidates)
    sizes = sizes[np.cumsum(sizes) <= n_candidates]
    n = int(sizes.sum())
    event = np.repeat(np.arange(1, sizes.size + 1), sizes)
    columns: dict[str, np.ndarray] = {
        "__experiment__": np.full(n, 1003, np.int32),
        "__run__": np.full(n, seed, np.int32),
        "__event__": event.astype(np.uint32),
        "__production__": np.zeros(n, np.int32),
        "__weight__": rng.uniform(0.5, 1.5, n),
        "nKLMClusters": rng.poisson(2.0, n).astype(np.int32),
        "passesTrigger": rng.uniform(size=n) < 0.9,
    }
    for name in PHYSICS:
        columns[name] = rng.uniform(0.0, 1.0, n)
    columns["M"] = rng.uniform(1.3, 2.2, n)
    columns["M"][rng.uniform(size=n) < 0.01] = np.nan
    options = {} if compress else {"compression": None}
    with uproot.recreate(path, **options) as handle:
        handle.mktree(TREE, {name: a.dtype for name, a in columns.items()})
        for start in range(0, n, 100_000):
            handle[TREE].extend(
                {k: v[start : start + 100_000] for k, v in columns.items()}
            )
    return columns


def hand_pass(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Evaluate CUTS with numpy; a comparison with NaN is false, as in C++."""
    with np.errstate(invalid="ignore"):
        return (
            (columns["muonID"] > 0.5)
            & (columns["chiProb"] > 0.01)
            & columns["passesTrigger"]
            & (columns["M"] > 1.5)
            & (columns["M"] < 2.0)
            & (columns["nKLMClusters"] < 4)
        )


@pytest.fixture(scope="module")
def three_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("scale")
    paths = []
    for index, n in enumerate((30_000, 0, 45_000)):
        path = folder / f"part-{index}.root"
        write_random_ntuple(path, n, seed=index + 1)
        paths.append(path)
    return paths


def _spec(files: list[Path], **options: object) -> SampleSelection:
    return SampleSelection(
        name="sample",
        files=files,
        tree=TREE,
        cuts=CUTS,
        keep=["M", "chiProb", "nKLMClusters"],
        scale=0.25,
        **options,  # type: ignore[arg-type]
    )


def test_workers_match_single_and_numpy(three_files: list[Path]) -> None:
    single_table, single_flow = select_sample(_spec(three_files, step_size=7000))
    table, flow = select_sample(_spec(three_files, step_size=7000, workers=2))

    # Bitwise equality: every file's sums are added in file order either way.
    assert table.equals(single_table)
    assert [s.as_row() for s in flow] == [s.as_row() for s in single_flow]

    total = 0
    passed = 0
    weighted = 0.0
    events = 0
    for path in three_files:
        with uproot.open(path) as handle:
            raw = handle[TREE].arrays(library="np")
        mask = hand_pass(raw)
        total += mask.size
        passed += int(mask.sum())
        weighted += 0.25 * float(raw["__weight__"][mask].sum())
        events += np.unique(raw["__event__"][mask]).size
    assert flow[0].candidates == total
    assert flow[-1].candidates == passed
    assert flow[-1].events == events
    # Sums of about 10^4 weights in another order: rtol 1e-12 covers rounding.
    assert flow[-1].weighted_candidates == pytest.approx(weighted, rel=1e-12)
    assert table.height == passed


def test_chunk_size_does_not_change_result(three_files: list[Path]) -> None:
    whole, whole_flow = select_sample(_spec(three_files))
    # 997 entries per chunk: events of up to three candidates straddle chunks.
    small, small_flow = select_sample(_spec(three_files, step_size=997))

    assert small.equals(whole)
    assert [s.candidates for s in small_flow] == [s.candidates for s in whole_flow]
    assert [s.events for s in small_flow] == [s.events for s in whole_flow]


def test_worker_error_names_file(three_files: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.root"
    broken.write_bytes(three_files[0].read_bytes()[:20_000])
    with pytest.raises(InputFileError, match=r"broken\.root"):
        select_sample(_spec([*three_files, broken], workers=2))


def test_workers_below_one_rejected(three_files: list[Path]) -> None:
    with pytest.raises(ConfigError, match="workers must be at least 1, got 0"):
        select_sample(_spec(three_files, workers=0))


_KILLED_PARENT = """
import sys
sys.path.insert(0, sys.argv[1])
from analysis.preselection import SampleSelection, select_sample
from tests.test_reading_scale import CUTS, TREE
spec = SampleSelection(
    name="probe", files=sys.argv[2:], tree=TREE, cuts=CUTS, keep=["M"],
    step_size=50, workers=2,
)
select_sample(spec)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux /proc and prctl")
def test_workers_end_with_killed_parent(tmp_path: Path) -> None:
    # Two files that take each worker about 10 s in 50-entry chunks.
    files = []
    for index in range(2):
        path = tmp_path / f"slow-{index}.root"
        write_random_ntuple(path, 300_000, seed=40 + index)
        files.append(str(path))
    parent = subprocess.Popen(
        [sys.executable, "-c", _KILLED_PARENT, str(PROJECT), *files]
    )
    workers: list[int] = []
    try:
        # Wait until both workers read their file: a worker that is still
        # starting ends with its parent anyway, as its start-up pipe closes.
        # Imports take about 1 s of CPU time, a file about 10 s, so at 3 s
        # a worker is reading.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert parent.poll() is None, "the parent ended before it was killed"
            time.sleep(0.1)
            workers = children(parent.pid, b"spawn_main")
            if len(workers) == 2 and all(cpu_seconds(w) > 3 for w in workers):
                break
        else:
            pytest.fail(f"the workers {workers} did not start reading in 60 s")
        parent.kill()
        parent.wait(timeout=10)
        # Without the parent-death signal the workers would read on for
        # seconds; with it they end at once.
        deadline = time.monotonic() + 3
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for worker in workers:
            if alive(worker):
                os.kill(worker, signal.SIGKILL)


# The child process runs the preselection on each file given in argv and
# prints, per file, the peak resident memory of that run as JSON. Before each
# run it resets the peak (VmHWM) by writing 5 to /proc/self/clear_refs, so
# every run is measured from the memory in use at its start.
_MEMORY_PROBE = """
import json, re, sys
sys.path.insert(0, sys.argv[1])
from analysis.preselection import SampleSelection, select_sample
from tests.test_reading_scale import CUTS, TREE

def peak_kb():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))

# A tight last cut keeps about 0.4% of the candidates, so the survivors
# hardly add to the memory.
cuts = [*CUTS, ("tight", "muonID > 0.9 and chiProb > 0.9")]
report = []
for path in sys.argv[3:]:
    spec = SampleSelection(
        name="probe", files=[path], tree=TREE, cuts=cuts, keep=["M"],
        step_size=int(sys.argv[2]),
    )
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    table, flow = select_sample(spec)
    report.append({"peak_kb": peak_kb(), "candidates": flow[0].candidates})
print(json.dumps(report))
"""


def _peak_memory_mb(files: list[Path], step_entries: int) -> list[tuple[float, int]]:
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(PROJECT), str(step_entries)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return [(r["peak_kb"] / 1024, r["candidates"]) for r in report]


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(),
    reason="needs Linux /proc/self/clear_refs to reset the peak memory",
)
def test_memory_flat_in_candidates(tmp_path: Path) -> None:
    # 1x and 4x the candidates. The probe reads 10 branches, 53 bytes per
    # candidate: 4 int32 event keys, __weight__, muonID, chiProb, M (double),
    # nKLMClusters (int32) and passesTrigger (bool).
    small = tmp_path / "small.root"
    large = tmp_path / "large.root"
    write_random_ntuple(small, 250_000, seed=5, compress=False)
    write_random_ntuple(large, 1_000_000, seed=6, compress=False)
    extra_mb = (1_000_000 - 250_000) * 53 / 2**20  # 38 MB more data read

    (peak_small, n_small), (peak_large, n_large) = _peak_memory_mb(
        [small, large], step_entries=20_000
    )
    # Control: one chunk contains the whole file, so memory grows.
    (whole_small, _), (whole_large, _) = _peak_memory_mb(
        [small, large], step_entries=10**9
    )

    assert n_large > 3.9 * n_small
    # Chunked reading: 4x the candidates add less than 15% of the extra data
    # (5.7 MB); the survivors (70 kB) and allocator noise fit in that.
    assert peak_large - peak_small < 0.15 * extra_mb
    # The control shows that the probe measures growth of that size.
    assert whole_large - whole_small > 0.5 * extra_mb


def _demo_config(reading: dict[str, object] | None) -> dict[str, object]:
    data = yaml.safe_load((PROJECT / "configs" / "demo.yaml").read_text())
    if reading is not None:
        data["reading"] = reading
    return data


def test_reading_config_defaults_and_values() -> None:
    default = parse_config(_demo_config(None), PROJECT / "configs")
    chosen = parse_config(
        _demo_config({"workers": 4, "step_size": "16 MiB"}), PROJECT / "configs"
    )

    assert default.reading.workers == 1
    assert default.reading.step_size == "64 MB"
    assert chosen.reading.workers == 4
    assert chosen.reading.step_size == "16 MiB"


@pytest.mark.parametrize(
    ("reading", "message"),
    [
        ({"step_size": "64 MBB"}, r"reading\.step_size: step_size '64 MBB' is not"),
        ({"step_size": 0}, r"reading\.step_size"),
        ({"workers": 0}, r"reading\.workers: .*greater than or equal to 1"),
        ({"executor": "dask"}, r"reading\.executor: .*'processes' or 'batch'"),
    ],
)
def test_reading_config_rejects_invalid(
    reading: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_demo_config(reading), PROJECT / "configs")
