"""Generate tau -> 3mu ntuples in basf2's VariablesToNtuple layout.

The generator replaces basf2 production wherever basf2 cannot run (this
machine, the tests, the demo). It writes one row per candidate with basf2's
bookkeeping branches and escaped branch names, for four samples:

``signal``
    e+e- -> tau+ tau- with one tau -> mu mu mu (uniform phase space) and the
    other decaying to one charged track and neutrinos.
``taupair``
    generic tau-pair background: tau -> a1 nu -> 3 pi nu with the pions taken as
    muons (muon-ID fakes), the other tau as for the signal.
``qqbar``
    continuum e+e- -> q qbar: two back-to-back jets of three charged hadrons and
    two neutrals each, three charged tracks combined into a candidate.
``data``
    a mixture of one third ``taupair`` and two thirds ``qqbar`` events, with an
    optional number of injected signal events; no truth information.

Kinematics: sqrt(s) = 10.58 GeV in the centre-of-mass (CM) frame, m_tau =
1.77693 GeV (PDG 2024), initial-state radiation with the leading-log spectrum
``beta x**(beta - 1)``, tau polar angles following ``1 + cos^2(theta)``, track
momenta smeared with a Belle II-like ``sigma_pt / pt = 0.11% pt (+) 0.25%``,
final-state radiation on signal muons, a CM-frame polar-angle acceptance,
and the production cuts 1.3 < M < 2.2 GeV and -1.0 < Delta E < 0.5 GeV with
``Delta E = E*_3mu - sqrt(s)/2``. Event-shape variables use the charged tracks.

NOTE: the continuum model and the muon-ID response are parametrisations chosen
to give realistic shapes and rates for testing, not a tune to Belle II data.

Run ``python -m analysis.generate --help`` for the command line.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uproot

from analysis import kinematics as kin
from analysis.errors import ConfigError
from analysis.kinematics import FloatArray
from analysis.outputs import atomic_path

log = logging.getLogger(__name__)

SQRT_S = 10.58  # GeV, Upsilon(4S)
M_TAU = 1.77693  # GeV, PDG 2024
M_MU = 0.1056583755  # GeV
M_PI = 0.13957039  # GeV
M_K = 0.493677  # GeV
M_A1, WIDTH_A1 = 1.230, 0.420  # GeV, a1(1260)
ALPHA_EM = 1.0 / 137.035999
M_E = 0.51099895e-3  # GeV

# Leading-log ISR radiator of both beams: beta = 2 alpha/pi (ln(s/m_e^2) - 1).
ISR_BETA = 2.0 * ALPHA_EM / np.pi * (np.log(SQRT_S**2 / M_E**2) - 1.0)

# Production cuts of the steering script (GeV).
MASS_WINDOW = (1.3, 2.2)
DELTA_E_WINDOW = (-1.0, 0.5)

# Approximate CM-frame polar-angle acceptance of the Belle II drift chamber.
COS_THETA_ACCEPTANCE = (-0.90, 0.94)

SAMPLES = ("signal", "taupair", "qqbar", "data")
DATA_COMPOSITION = {"taupair": 1.0 / 3.0, "qqbar": 2.0 / 3.0}

# Branch names exactly as basf2 escapes the variable names.
BOOKKEEPING_TYPES = {
    "__experiment__": np.int32,
    "__run__": np.int32,
    "__event__": np.uint32,
    "__production__": np.int32,
    "__candidate__": np.int32,
    "__ncandidates__": np.int32,
    "__weight__": np.float64,
}
PHYSICS_BRANCHES = (
    "M",
    "deltaE",
    "useCMSFrame__bop__bc",
    "useCMSFrame__boE__bc",
    "charge",
    "chiProb",
    "daughter__bo0__cm__spmuonID__bc",
    "daughter__bo1__cm__spmuonID__bc",
    "daughter__bo2__cm__spmuonID__bc",
    "daughter__bo0__cm__spp__bc",
    "daughter__bo1__cm__spp__bc",
    "daughter__bo2__cm__spp__bc",
    "thrust",
    "missingMomentumOfEventCMS",
    "missingMass2OfEvent",
    "visibleEnergyOfEventCMS",
    "nTracks",
    "isSignal",
)


@dataclass(frozen=True)
class _Candidates:
    """Per-candidate arrays before the production cuts (all length n)."""

    event: np.ndarray
    tracks: tuple[FloatArray, FloatArray, FloatArray]
    true_muons: bool
    is_signal: FloatArray
    chi_prob: FloatArray


def _isr_pair_frames(
    n: int, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return the tau-pair mass, its velocity and the tau+ direction in its frame."""
    x = rng.uniform(0.0, 1.0, n) ** (1.0 / ISR_BETA)
    x = np.minimum(x, 0.6)
    w = SQRT_S * np.sqrt(1.0 - x)
    photon_energy = (SQRT_S**2 - w**2) / (2.0 * SQRT_S)
    sign = rng.choice([-1.0, 1.0], n)
    system_e = SQRT_S - photon_energy
    beta = np.zeros((n, 3))
    beta[:, 2] = -sign * photon_energy / system_e
    direction = _one_plus_cos2_directions(n, rng)
    return w, beta, direction


def _one_plus_cos2_directions(n: int, rng: np.random.Generator) -> FloatArray:
    cos_theta = np.empty(n)
    todo = np.arange(n)
    while todo.size:
        trial = rng.uniform(-1.0, 1.0, todo.size)
        accept = rng.uniform(0.0, 2.0, todo.size) < 1.0 + trial**2
        cos_theta[todo[accept]] = trial[accept]
        todo = todo[~accept]
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    return np.column_stack(
        [sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta]
    )


def _tau_pair(n: int, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """Produce tau pairs in the CM frame with ISR; return both four-vectors."""
    w, beta, direction = _isr_pair_frames(n, rng)
    p = kin.two_body_momentum(w, M_TAU, M_TAU)
    tau1 = kin.four_vectors(direction * p[:, None], M_TAU)
    tau2 = kin.four_vectors(-direction * p[:, None], M_TAU)
    return kin.boost(tau1, beta), kin.boost(tau2, beta)


def _tag_side(
    tau: FloatArray, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """Decay the tag tau to one charged track plus neutrinos.

    40% tau -> pi nu (two-body), 60% tau -> l nu nu (three-body phase space).
    Returns the charged track and the summed neutrino four-vector.
    """
    n = tau.shape[0]
    hadronic = np.asarray(rng.uniform(size=n) < 0.4, dtype=bool)
    track = np.empty((n, 4))
    neutrinos = np.empty((n, 4))
    if hadronic.any():
        pion, nu = kin.decay_two_body(tau[hadronic], M_PI, 0.0, rng)
        track[hadronic], neutrinos[hadronic] = pion, nu
    leptonic = np.logical_not(hadronic)
    if leptonic.any():
        lepton, nu1, nu2 = kin.decay_three_body(tau[leptonic], (M_MU, 0.0, 0.0), rng)
        track[leptonic], neutrinos[leptonic] = lepton, nu1 + nu2
    return track, neutrinos


def _breit_wigner_masses(
    n: int, mass: float, width: float, low: float, high: float, rng: np.random.Generator
) -> FloatArray:
    u = rng.uniform(
        np.arctan((low - mass) / (width / 2)),
        np.arctan((high - mass) / (width / 2)),
        n,
    )
    return mass + width / 2 * np.tan(u)


def _smear(p4: FloatArray, rng: np.random.Generator, mass: float) -> FloatArray:
    """Smear the momentum magnitude with the Belle II-like resolution; fix the mass."""
    momentum = p4[:, :3]
    pt = np.hypot(momentum[:, 0], momentum[:, 1])
    sigma = np.hypot(0.0011 * pt, 0.0025)
    scale = 1.0 + sigma * rng.standard_normal(p4.shape[0])
    return kin.four_vectors(momentum * scale[:, None], mass)


def _with_mass(p4: FloatArray, mass: float) -> FloatArray:
    return kin.four_vectors(p4[:, :3], mass)


def _radiate(
    p4: FloatArray, rng: np.random.Generator, probability: float
) -> FloatArray:
    """Final-state radiation: some tracks lose an exponential fraction of momentum."""
    n = p4.shape[0]
    loss = np.where(
        rng.uniform(size=n) < probability,
        np.clip(rng.exponential(0.02, n), 0.0, 0.5),
        0.0,
    )
    return kin.four_vectors(p4[:, :3] * (1.0 - loss)[:, None], M_MU)


def _in_acceptance(tracks: Sequence[FloatArray]) -> np.ndarray:
    ok = np.ones(tracks[0].shape[0], dtype=bool)
    low, high = COS_THETA_ACCEPTANCE
    for track in tracks:
        cos_theta = track[:, 2] / np.linalg.norm(track[:, :3], axis=1)
        pt = np.hypot(track[:, 0], track[:, 1])
        ok &= (cos_theta > low) & (cos_theta < high) & (pt > 0.1)
    return ok


def _muon_id(
    momentum: FloatArray, true_muon: bool, rng: np.random.Generator
) -> FloatArray:
    """Draw a muonID value in [0, 1] for true muons or for hadrons.

    True muons above 0.7 GeV (KLM reach) are identified well: 92% near 1.
    Hadrons mostly score low, with 4% fakes near 1 that make tau -> 3 pi nu a
    background.
    """
    n = momentum.shape[0]
    u = rng.uniform(size=n)
    near_one = 1.0 - 0.05 * rng.beta(1.0, 4.0, n)
    anywhere = rng.uniform(0.0, 1.0, n)
    if true_muon:
        good = np.where(momentum > 0.7, 0.92, 0.5)
        return np.where(u < good, near_one, anywhere)
    low = 0.4 * rng.beta(1.0, 6.0, n)
    return np.where(u < 0.04, near_one, np.where(u < 0.3, anywhere, low))


def _wrong_combinations(
    true: _Candidates, tag: FloatArray, rng: np.random.Generator, probability: float
) -> _Candidates:
    """Build extra candidates that swap one track for the tag-side track."""
    n = true.event.size
    chosen = np.flatnonzero(rng.uniform(size=n) < probability)
    swap = rng.integers(0, 3, chosen.size)
    tracks = [t[chosen].copy() for t in true.tracks]
    for i in range(3):
        replace = swap == i
        tracks[i][replace] = _with_mass(tag[chosen][replace], M_MU)
    return _Candidates(
        event=true.event[chosen],
        tracks=(tracks[0], tracks[1], tracks[2]),
        true_muons=True,
        is_signal=np.zeros(chosen.size),
        chi_prob=rng.beta(0.3, 3.0, chosen.size),
    )


def _event_variables(
    charged: Sequence[FloatArray], n_extra_tracks: np.ndarray
) -> dict[str, FloatArray]:
    """Event-shape and missing-energy variables from the charged tracks (CM frame)."""
    visible = np.sum(list(charged), axis=0)
    p_miss = np.linalg.norm(visible[:, :3], axis=1)
    e_miss = SQRT_S - visible[:, 3]
    return {
        "thrust": kin.thrust(list(charged)),
        "missingMomentumOfEventCMS": p_miss,
        "missingMass2OfEvent": e_miss**2 - p_miss**2,
        "visibleEnergyOfEventCMS": visible[:, 3],
        "nTracks": (len(charged) + n_extra_tracks).astype(np.float64),
    }


def _generate_signal(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    tau1, tau2 = _tau_pair(n, rng)
    mu = kin.decay_three_body(tau1, (M_MU, M_MU, M_MU), rng)
    tag, _ = _tag_side(tau2, rng)
    muons = tuple(_smear(_radiate(m, rng, 0.1), rng, M_MU) for m in mu)
    tag = _smear(tag, rng, M_PI)
    accepted = _in_acceptance([*muons, tag])
    events = _event_variables([*muons, tag], rng.poisson(0.3, n))
    true = _Candidates(
        event=np.arange(n),
        tracks=(muons[0], muons[1], muons[2]),
        true_muons=True,
        is_signal=np.ones(n),
        chi_prob=rng.uniform(size=n),
    )
    fake = _wrong_combinations(true, tag, rng, probability=0.15)
    return _finish([(true, True), (fake, True)], events, accepted, rng)


def _generate_taupair(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    tau1, tau2 = _tau_pair(n, rng)
    m_a1 = _breit_wigner_masses(n, M_A1, WIDTH_A1, 3 * M_PI + 1e-3, M_TAU - 1e-3, rng)
    a1, _ = kin.decay_two_body(tau1, m_a1, 0.0, rng)
    pions = kin.decay_three_body(a1, (M_PI, M_PI, M_PI), rng)
    tag, _ = _tag_side(tau2, rng)
    # Reconstructed as muons: smeared tracks with the muon mass hypothesis.
    tracks = tuple(_with_mass(_smear(p, rng, M_PI), M_MU) for p in pions)
    tag = _smear(tag, rng, M_PI)
    accepted = _in_acceptance([*tracks, tag])
    events = _event_variables([*tracks, tag], rng.poisson(0.3, n))
    candidates = _Candidates(
        event=np.arange(n),
        tracks=(tracks[0], tracks[1], tracks[2]),
        true_muons=False,
        is_signal=np.zeros(n),
        chi_prob=rng.uniform(size=n),
    )
    fake = _wrong_combinations(candidates, tag, rng, probability=0.2)
    return _finish([(candidates, False), (fake, False)], events, accepted, rng)


def _generate_qqbar(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    axis = _one_plus_cos2_directions(n, rng)
    charged: list[FloatArray] = []
    for side in (1.0, -1.0):
        fractions = rng.dirichlet([1.4, 1.2, 1.0, 0.8, 0.8], n)
        jet_axis = side * axis
        for k in range(3):
            p = fractions[:, k] * SQRT_S / 2
            pt = rng.exponential(0.3, n)
            direction = _tilt(jet_axis, pt / np.maximum(p, 1e-3), rng)
            mass = np.where(rng.uniform(size=n) < 0.12, M_K, M_PI)
            track = kin.four_vectors(direction * p[:, None], mass)
            charged.append(_with_mass(_smear(track, rng, M_PI), M_MU))
    events = _event_variables(charged, rng.poisson(1.5, n))
    accepted = _in_acceptance(charged)
    # Candidate: the three tracks of one jet (70%) or two plus one from the other.
    one_jet = rng.uniform(size=n) < 0.7
    first_jet = rng.uniform(size=n) < 0.5
    picks = []
    for i in range(3):
        same = np.where(first_jet[:, None], charged[i], charged[3 + i])
        other = np.where(first_jet[:, None], charged[3 + i], charged[i])
        picks.append(same if i < 2 else np.where(one_jet[:, None], same, other))
    candidates = _Candidates(
        event=np.arange(n),
        tracks=(picks[0], picks[1], picks[2]),
        true_muons=False,
        is_signal=np.zeros(n),
        chi_prob=np.where(one_jet, rng.beta(0.6, 2.0, n), rng.beta(0.2, 4.0, n)),
    )
    return _finish([(candidates, False)], events, accepted, rng)


def _tilt(axis: FloatArray, angle: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Rotate unit vectors ``axis`` by polar ``angle`` (rad) about a random azimuth."""
    helper = np.where(np.abs(axis[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u, axis=1)[:, None]
    v = np.cross(axis, u)
    phi = rng.uniform(0.0, 2.0 * np.pi, axis.shape[0])
    angle = np.minimum(angle, np.pi / 2)
    return np.cos(angle)[:, None] * axis + np.sin(angle)[:, None] * (
        np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v
    )


def _finish(
    groups: list[tuple[_Candidates, bool]],
    events: dict[str, FloatArray],
    accepted: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Reconstruct candidates, apply acceptance and production cuts, add IDs."""
    n_events = accepted.size
    charge = np.where(rng.uniform(size=n_events) < 0.5, -1.0, 1.0)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in PHYSICS_BRANCHES}
    event_index: list[np.ndarray] = []
    for candidates, true_muons in groups:
        ev = candidates.event
        total = np.sum(candidates.tracks, axis=0)
        mass = kin.invariant_mass(total)
        delta_e = total[:, 3] - SQRT_S / 2
        keep = (
            accepted[ev]
            & (mass > MASS_WINDOW[0])
            & (mass < MASS_WINDOW[1])
            & (delta_e > DELTA_E_WINDOW[0])
            & (delta_e < DELTA_E_WINDOW[1])
        )
        ev = ev[keep]
        event_index.append(ev)
        columns["M"].append(mass[keep])
        columns["deltaE"].append(delta_e[keep])
        columns["useCMSFrame__bop__bc"].append(np.linalg.norm(total[keep, :3], axis=1))
        columns["useCMSFrame__boE__bc"].append(total[keep, 3])
        columns["charge"].append(charge[ev])
        columns["chiProb"].append(candidates.chi_prob[keep])
        for i, track in enumerate(candidates.tracks):
            p = np.linalg.norm(track[keep, :3], axis=1)
            columns[f"daughter__bo{i}__cm__spp__bc"].append(p)
            columns[f"daughter__bo{i}__cm__spmuonID__bc"].append(
                _muon_id(p, true_muons, rng)
            )
        for name, values in events.items():
            columns[name].append(values[ev])
        columns["isSignal"].append(candidates.is_signal[keep])

    out = {name: np.concatenate(parts) for name, parts in columns.items()}
    event = np.concatenate(event_index)
    order = np.argsort(event, kind="stable")
    out = {name: values[order] for name, values in out.items()}
    out["_event_index"] = event[order]
    return out


_GENERATORS = {
    "signal": _generate_signal,
    "taupair": _generate_taupair,
    "qqbar": _generate_qqbar,
}


def generate_sample(
    sample: str,
    n_events: int,
    seed: int,
    *,
    experiment: int | None = None,
    run: int = 0,
    production: int = 0,
    first_event: int = 1,
    inject_signal: int = 0,
) -> dict[str, np.ndarray]:
    """Generate the candidates of ``n_events`` e+e- events of one sample.

    Args:
        sample: ``signal``, ``taupair``, ``qqbar`` or ``data``.
        n_events: number of generated events (for ``signal``, of generated
            tau -> 3mu decays); only candidates inside the production window
            are returned, so most samples return fewer rows.
        seed: seed of the numpy random generator; equal seeds give equal output.
        experiment: basf2 experiment number (default 1003 for MC, 12 for data).
        run: run number written to ``__run__``.
        production: production id written to ``__production__``.
        first_event: number of the first event in ``__event__``.
        inject_signal: for ``data``, number of signal events mixed in.

    Returns:
        Column name to array, in basf2 branch naming, one entry per candidate,
        sorted by event, with the bookkeeping branches.

    Raises:
        ConfigError: unknown sample, or negative event counts.
    """
    if sample not in SAMPLES:
        raise ConfigError(
            f"unknown sample kind {sample!r}; choose one of {', '.join(SAMPLES)}"
        )
    if n_events < 0 or inject_signal < 0:
        raise ConfigError(
            f"event counts must be >= 0, got n_events={n_events}, "
            f"inject_signal={inject_signal}"
        )
    rng = np.random.default_rng(seed)
    if sample == "data":
        parts = []
        n_taupair = round(n_events * DATA_COMPOSITION["taupair"])
        counts = {
            "taupair": n_taupair,
            "qqbar": n_events - n_taupair,
            "signal": inject_signal,
        }
        offset = 0
        for kind, count in counts.items():
            part = _GENERATORS[kind](count, rng) if count else None
            if part is None:
                continue
            part["_event_index"] = part["_event_index"] + offset
            offset += count
            parts.append(part)
        if not parts:
            # No events at all: an empty sample with every branch.
            parts.append(_GENERATORS["qqbar"](0, rng))
        columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        # Interleave the components as real data would be: shuffle whole events.
        total_events = offset
        relabel = rng.permutation(total_events)
        columns["_event_index"] = relabel[columns["_event_index"]]
        order = np.argsort(columns["_event_index"], kind="stable")
        columns = {name: values[order] for name, values in columns.items()}
        columns["isSignal"] = np.full(columns["M"].size, np.nan)
        default_experiment = 12
    else:
        columns = _GENERATORS[sample](n_events, rng)
        default_experiment = 1003

    event = columns.pop("_event_index")
    n = event.size
    starts = np.flatnonzero(np.r_[True, event[1:] != event[:-1]]) if n else event
    counts_per_event = np.diff(np.r_[starts, n]) if n else event
    candidate = np.arange(n) - np.repeat(starts, counts_per_event)
    out: dict[str, np.ndarray] = {
        "__experiment__": np.full(
            n, default_experiment if experiment is None else experiment, np.int32
        ),
        "__run__": np.full(n, run, np.int32),
        "__event__": (event + first_event).astype(np.uint32),
        "__production__": np.full(n, production, np.int32),
        "__candidate__": candidate.astype(np.int32),
        "__ncandidates__": np.repeat(counts_per_event, counts_per_event).astype(
            np.int32
        ),
        "__weight__": np.ones(n),
    }
    for name in PHYSICS_BRANCHES:
        out[name] = columns[name].astype(np.float64)
    return out


def write_ntuple(
    path: str | Path,
    columns: dict[str, np.ndarray],
    tree: str = "tau3mu",
    chunk_rows: int = 200_000,
) -> Path:
    """Write ``columns`` as a flat TTree with uproot, atomically.

    Branch types follow the arrays' dtypes (int32, uint32, float64). Rows are
    written in chunks of ``chunk_rows``, one basket per branch per chunk.
    """
    path = Path(path)
    n = len(next(iter(columns.values())))
    with atomic_path(path) as tmp, uproot.recreate(tmp) as handle:
        handle.mktree(tree, {name: arr.dtype for name, arr in columns.items()})
        for start in range(0, n, chunk_rows):
            chunk = {
                name: arr[start : start + chunk_rows] for name, arr in columns.items()
            }
            handle[tree].extend(chunk)
    log.info("wrote %d candidates to %s:%s", n, path, tree)
    return path


@dataclass(frozen=True)
class DemoSample:
    """One sample of a generated demo dataset."""

    name: str
    kind: str
    path: Path
    n_events: int
    n_candidates: int


def generate_dataset(
    outdir: str | Path,
    *,
    signal_events: int,
    taupair_events: int,
    qqbar_events: int,
    data_events: int,
    inject_signal: int = 0,
    seed: int = 20261204,
    tree: str = "tau3mu",
) -> list[DemoSample]:
    """Write one ROOT file per sample (signal, taupair, qqbar, data) to ``outdir``.

    Each sample gets its own seed derived from ``seed``, so the files do not
    share random numbers.
    """
    outdir = Path(outdir)
    plan = [
        ("signal", "signal", signal_events, 0),
        ("taupair", "taupair", taupair_events, 0),
        ("qqbar", "qqbar", qqbar_events, 0),
        ("data", "data", data_events, inject_signal),
    ]
    seeds = np.random.SeedSequence(seed).spawn(len(plan))
    written: list[DemoSample] = []
    for (name, kind, n_events, inject), seq in zip(plan, seeds, strict=True):
        start = time.perf_counter()
        columns = generate_sample(
            kind,
            n_events,
            int(seq.generate_state(1)[0]),
            inject_signal=inject,
            run=len(written) + 1,
        )
        path = write_ntuple(outdir / f"{name}.root", columns, tree=tree)
        n_cand = len(columns["M"])
        log.info(
            "generated %s: %d events, %d candidates in %.1f s",
            name,
            n_events,
            n_cand,
            time.perf_counter() - start,
        )
        written.append(DemoSample(name, kind, path, n_events, n_cand))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write one sample to one ROOT file."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.generate",
        description="Write a basf2-layout tau -> 3mu ntuple (one row per candidate).",
    )
    parser.add_argument("--sample", required=True, choices=SAMPLES)
    parser.add_argument(
        "--events", type=int, required=True, help="number of generated events"
    )
    parser.add_argument("--seed", type=int, required=True, help="random seed")
    parser.add_argument("--output", required=True, help="output ROOT file path")
    parser.add_argument("--tree", default="tau3mu", help="tree name (default tau3mu)")
    parser.add_argument("--run", type=int, default=0, help="value of __run__")
    parser.add_argument(
        "--production", type=int, default=0, help="value of __production__"
    )
    parser.add_argument(
        "--first-event", type=int, default=1, help="number of the first event"
    )
    parser.add_argument(
        "--inject-signal",
        type=int,
        default=0,
        help="signal events mixed into --sample data",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    columns = generate_sample(
        args.sample,
        args.events,
        args.seed,
        run=args.run,
        production=args.production,
        first_event=args.first_event,
        inject_signal=args.inject_signal,
    )
    write_ntuple(args.output, columns, tree=args.tree)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
