"""Punzi figure of merit and the choice of the working point.

The figure of merit for a search with expected background B and signal
efficiency eps is Punzi's ``eps / (a/2 + sqrt(B))`` (``formula="simple"``).
Here ``a`` is the number of standard deviations of the wanted significance:
3 and 5 are common, and 1.28 is the one-sided 90% quantile. ``formula="full"``
uses Punzi's complete expression for the minimum detectable signal,
``eps / (a^2/8 + 9 b^2/13 + a sqrt(B) + b/2 sqrt(b^2 + 4 a sqrt(B) + 4 B))``,
where ``b`` is the number of standard deviations of the wanted power (``b``
defaults to ``a``).

:func:`scan_cut` scans the BDT cut and :func:`scan_cut_and_size` scans the
BDT cut and the ellipse size in standard deviations together. Both guard
against picking a statistical fluctuation of the background MC: cuts with fewer
than ``min_background_mc_events`` raw MC candidates cannot be chosen, and
``smooth="exponential"`` replaces B by a fit of ``log B`` against the cut. The
``stability`` of a result measures how far the optimum moves when the MC counts
fluctuate (Poisson toys) and which cuts give a figure of merit within one
standard deviation of the best.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from analysis.errors import ConfigError, did_you_mean
from analysis.signal_region import (
    SignalShape,
    as_float_array,
    make_signal_region,
    resolve_weights,
)

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
FomFormula = Literal["simple", "full"]
Smoothing = Literal["none", "exponential"]

FORMULAS: tuple[str, ...] = ("simple", "full")
SMOOTHINGS: tuple[str, ...] = ("none", "exponential")
DEFAULT_SEED = 20240611


def punzi_fom(
    efficiency: ArrayLike,
    background: ArrayLike,
    a: float = 3.0,
    *,
    formula: FomFormula = "simple",
    b: float | None = None,
) -> FloatArray:
    """Return Punzi's figure of merit for each (efficiency, background) pair.

    Args:
        efficiency: signal efficiency (fraction, >= 0).
        background: expected background yield (events, >= 0).
        a: significance in standard deviations (> 0).
        formula: ``"simple"`` for ``eps / (a/2 + sqrt(B))`` or ``"full"`` for
            the complete expression with the ``b`` term (module docstring).
        b: power in standard deviations for ``"full"``; None uses ``a``.
            Ignored by ``"simple"``.

    Returns:
        The figure of merit, broadcast over the inputs.

    Raises:
        ConfigError: negative or non-finite inputs, ``a`` or ``b`` <= 0, or an
            unknown formula.
    """
    eps = np.asarray(efficiency, dtype=np.float64)
    bkg = np.asarray(background, dtype=np.float64)
    _check_non_negative(eps, "efficiency")
    _check_non_negative(bkg, "background")
    if not (math.isfinite(a) and a > 0):
        raise ConfigError(f"Punzi a must be a finite number > 0, got {a}")
    if formula == "simple":
        return np.asarray(eps / (0.5 * a + np.sqrt(bkg)))
    if formula == "full":
        power = a if b is None else b
        if not (math.isfinite(power) and power > 0):
            raise ConfigError(f"Punzi b must be a finite number > 0, got {power}")
        root_b = np.sqrt(bkg)
        minimum_signal = (
            a**2 / 8.0
            + 9.0 * power**2 / 13.0
            + a * root_b
            + 0.5 * power * np.sqrt(power**2 + 4.0 * a * root_b + 4.0 * bkg)
        )
        return np.asarray(eps / minimum_signal)
    raise ConfigError(
        f"unknown Punzi formula {formula!r}; choose one of {', '.join(FORMULAS)}."
        f"{did_you_mean(str(formula), FORMULAS)}"
    )


def _check_non_negative(values: FloatArray, name: str) -> None:
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        index = np.unravel_index(int(np.flatnonzero(bad)[0]), values.shape)
        raise ConfigError(
            f"{name} must be finite and >= 0, found {values[index]} at index "
            f"{tuple(int(i) for i in index)}"
        )


# ---------------------------------------------------------------------------
# Background smoothing and nested-count toys
# ---------------------------------------------------------------------------


def smooth_background(
    cuts: ArrayLike,
    background: ArrayLike,
    n_mc_events: ArrayLike | None = None,
    *,
    degree: int = 2,
) -> tuple[FloatArray, FloatArray]:
    """Fit ``log B`` against the cut with a polynomial and return the smooth B.

    Points with ``B > 0`` (and at least one MC candidate, when counts are
    given) enter a least-squares fit of ``log B``, each weighted by
    ``sqrt(n_mc)``, the inverse of its relative Poisson uncertainty. The fit
    ignores that cumulative counts at different cuts are correlated, so its
    uncertainty is an approximation.

    Args:
        cuts: cut values, increasing.
        background: expected background at each cut (events).
        n_mc_events: raw MC candidates at each cut, or None for equal weights.
        degree: polynomial degree in the cut (1: pure exponential).

    Returns:
        The smoothed background and its standard uncertainty at every cut.

    Raises:
        ConfigError: fewer than ``degree + 2`` usable points.
    """
    x = np.asarray(cuts, dtype=np.float64)
    y = np.asarray(background, dtype=np.float64)
    usable = y > 0
    weights = np.ones_like(y)
    if n_mc_events is not None:
        counts = np.asarray(n_mc_events, dtype=np.float64)
        usable &= counts >= 1
        weights = np.sqrt(np.clip(counts, 1.0, None))
    if usable.sum() < degree + 2:
        raise ConfigError(
            f"cannot smooth the background with a degree-{degree} fit: only "
            f"{int(usable.sum())} cuts have background MC candidates, "
            f"{degree + 2} are needed; use smooth='none' or a lower degree"
        )
    scale = float(np.ptp(x[usable])) or 1.0
    offset = float(x[usable].mean())
    t = (x - offset) / scale
    scaled_cov = n_mc_events is None
    coefficients, covariance = np.polyfit(
        t[usable],
        np.log(y[usable]),
        degree,
        w=weights[usable],
        cov=True if scaled_cov else "unscaled",
    )
    design = np.vander(t, degree + 1)
    log_b = design @ coefficients
    log_sigma = np.sqrt(np.einsum("ni,ij,nj->n", design, covariance, design))
    smooth = np.exp(log_b)
    return smooth, smooth * log_sigma


def _cells_from_totals(totals: FloatArray) -> FloatArray:
    # totals[i, j] counts candidates with bdt > cut_i inside size_j. Cuts and
    # sizes increase, so totals fall along i and grow along j.
    cells = totals.copy()
    cells[:, 1:] -= totals[:, :-1]
    cells[:-1, :] -= cells[1:, :].copy()
    return cells


def _totals_from_cells(cells: FloatArray) -> FloatArray:
    return np.cumsum(np.cumsum(cells[::-1], axis=0)[::-1], axis=1)


def _is_nested(totals: FloatArray) -> bool:
    return bool(
        np.all(_cells_from_totals(totals) >= -1e-9 * max(1.0, float(totals.max())))
    )


# ---------------------------------------------------------------------------
# Grid scan shared by the 1D and the joint scan
# ---------------------------------------------------------------------------


@dataclass
class _GridScan:
    background_used: FloatArray
    background_uncertainty: FloatArray
    fom: FloatArray
    fom_uncertainty: FloatArray
    allowed: BoolArray
    best: tuple[int, int]
    stability: dict[str, Any]


def _smoothed_grid(
    cuts: FloatArray,
    background: FloatArray,
    counts: FloatArray | None,
    smooth: str,
    degree: int,
) -> tuple[FloatArray, FloatArray]:
    if smooth == "none":
        if counts is None:
            return background, np.zeros_like(background)
        sigma = background / np.sqrt(np.clip(counts, 1.0, None))
        return background, np.where(counts > 0, sigma, 0.0)
    smoothed = np.empty_like(background)
    sigma = np.empty_like(background)
    for j in range(background.shape[1]):
        column = None if counts is None else counts[:, j]
        smoothed[:, j], sigma[:, j] = smooth_background(
            cuts, background[:, j], column, degree=degree
        )
    return smoothed, sigma


def _best_allowed(fom: FloatArray, allowed: BoolArray) -> tuple[int, int] | None:
    if not allowed.any():
        return None
    masked = np.where(allowed, fom, -np.inf)
    flat = int(np.argmax(masked))
    i, j = np.unravel_index(flat, fom.shape)
    return int(i), int(j)


def _allowed(
    counts: FloatArray | None, minimum: int, shape: tuple[int, ...]
) -> BoolArray:
    if counts is None or minimum <= 0:
        return np.ones(shape, dtype=bool)
    return np.asarray(counts >= minimum)


def _scan_grid(
    cuts: FloatArray,
    efficiency: FloatArray,
    background: FloatArray,
    counts: FloatArray | None,
    *,
    a: float,
    formula: FomFormula,
    b: float | None,
    min_background_mc_events: int,
    smooth: str,
    smooth_degree: int,
    n_toys: int,
    seed: int,
) -> _GridScan:
    used, sigma_b = _smoothed_grid(cuts, background, counts, smooth, smooth_degree)
    fom = punzi_fom(efficiency, used, a, formula=formula, b=b)
    fom_up = punzi_fom(
        efficiency, np.clip(used - sigma_b, 0.0, None), a, formula=formula, b=b
    )
    fom_down = punzi_fom(efficiency, used + sigma_b, a, formula=formula, b=b)
    fom_sigma = 0.5 * np.abs(fom_up - fom_down)
    allowed = _allowed(counts, min_background_mc_events, fom.shape)
    best = _best_allowed(fom, allowed)
    if best is None:
        raise ConfigError(
            f"no cut has at least {min_background_mc_events} background MC candidates "
            f"(most at any cut: {0 if counts is None else int(counts.max())}); lower "
            "min_background_mc_events, smooth the background or add MC"
        )

    plateau = allowed & (fom >= fom[best] - fom_sigma[best])
    stability: dict[str, Any] = {
        "fom_uncertainty_at_best": float(fom_sigma[best]),
        "plateau_points": int(plateau.sum()),
        "plateau_cut_range": [
            float(cuts[plateau.any(axis=1)].min()),
            float(cuts[plateau.any(axis=1)].max()),
        ],
        "plateau_mask": plateau.tolist(),
        "excluded_low_mc_points": int((~allowed).sum()),
    }
    neighbours = [
        fom[best[0] + di, best[1]]
        for di in (-1, 1)
        if 0 <= best[0] + di < fom.shape[0] and allowed[best[0] + di, best[1]]
    ]
    if neighbours and fom[best] > 0:
        stability["max_relative_drop_to_neighbour_cut"] = float(
            1.0 - min(neighbours) / fom[best]
        )

    if counts is not None and n_toys > 0:
        stability.update(
            _toy_stability(
                cuts,
                efficiency,
                background,
                counts,
                best,
                a=a,
                formula=formula,
                b=b,
                min_background_mc_events=min_background_mc_events,
                smooth=smooth,
                smooth_degree=smooth_degree,
                n_toys=n_toys,
                seed=seed,
                plateau=plateau,
            )
        )
    return _GridScan(used, sigma_b, fom, fom_sigma, allowed, best, stability)


def _toy_stability(
    cuts: FloatArray,
    efficiency: FloatArray,
    background: FloatArray,
    counts: FloatArray,
    best: tuple[int, int],
    *,
    a: float,
    formula: FomFormula,
    b: float | None,
    min_background_mc_events: int,
    smooth: str,
    smooth_degree: int,
    n_toys: int,
    seed: int,
    plateau: BoolArray,
) -> dict[str, Any]:
    if not _is_nested(counts):
        log.warning(
            "background MC counts are not nested (they must fall with the cut and "
            "grow with the region size); skipping the Poisson toys of the optimum"
        )
        return {"toys": 0}

    cell_counts = np.clip(np.round(_cells_from_totals(counts)), 0, None)
    cell_yields = _cells_from_totals(background)
    # Mean weight of the candidates in each cell; a cell without MC candidates
    # cannot fluctuate and contributes nothing to a toy.
    cell_weights = np.divide(
        cell_yields, cell_counts, out=np.zeros_like(cell_yields), where=cell_counts > 0
    )

    rng = np.random.default_rng(seed)
    chosen = []
    for _ in range(n_toys):
        toy_cells = rng.poisson(cell_counts).astype(np.float64)
        toy_counts = _totals_from_cells(toy_cells)
        toy_background = np.clip(
            _totals_from_cells(toy_cells * cell_weights), 0.0, None
        )
        try:
            used, _ = _smoothed_grid(
                cuts, toy_background, toy_counts, smooth, smooth_degree
            )
        except ConfigError:
            continue
        fom = punzi_fom(efficiency, used, a, formula=formula, b=b)
        pick = _best_allowed(
            fom, _allowed(toy_counts, min_background_mc_events, fom.shape)
        )
        if pick is not None:
            chosen.append(pick)

    if not chosen:
        return {"toys": 0}
    picks = np.array(chosen)
    toy_cuts = cuts[picks[:, 0]]
    result: dict[str, Any] = {
        "toys": len(chosen),
        "seed": seed,
        "toy_best_cut_std": float(toy_cuts.std()),
        "toy_best_cut_68": [float(q) for q in np.quantile(toy_cuts, [0.16, 0.84])],
        "toy_fraction_same_point": float(
            np.mean((picks[:, 0] == best[0]) & (picks[:, 1] == best[1]))
        ),
        "toy_fraction_in_plateau": float(np.mean(plateau[picks[:, 0], picks[:, 1]])),
    }
    return result


def _check_cuts(cuts: ArrayLike, name: str) -> FloatArray:
    values = as_float_array(cuts, name)
    if values.size < 2 or np.any(np.diff(values) <= 0):
        raise ConfigError(
            f"{name} must hold at least two strictly increasing values, got "
            f"{values[:10].tolist()}{' ...' if values.size > 10 else ''}"
        )
    return values


def _check_choice(value: str, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise ConfigError(
            f"unknown {name} {value!r}; choose one of {', '.join(choices)}."
            f"{did_you_mean(value, choices)}"
        )


def _grid(values: ArrayLike, shape: tuple[int, int], name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.size != shape[0] * shape[1]:
        raise ConfigError(f"{name} has shape {array.shape}, expected {shape}")
    return array.reshape(shape)


# ---------------------------------------------------------------------------
# Public scans
# ---------------------------------------------------------------------------


@dataclass
class ScanResult:
    """Result of a scan of the BDT cut.

    Attributes:
        cuts: scanned BDT cuts (increasing); a candidate passes if bdt > cut.
        efficiency: signal efficiency at each cut.
        background: expected background at each cut as given (events).
        background_used: background entering the figure of merit (smoothed
            when ``smooth`` is not ``"none"``).
        background_uncertainty: standard uncertainty of ``background_used``
            from MC statistics or the smoothing fit (0 without MC counts).
        fom: figure of merit at each cut.
        fom_uncertainty: its standard uncertainty from ``background_uncertainty``.
        allowed: cuts with enough background MC candidates to be chosen.
        n_mc_events: raw background MC candidates at each cut, or None.
        best_index: index of the chosen cut.
        a: Punzi ``a``.
        formula: ``"simple"`` or ``"full"``.
        b: Punzi ``b`` for the full formula (None: equal to ``a``).
        smooth: background smoothing used.
        stability: plateau of cuts within one standard deviation of the best
            figure of merit, the relative drop to the neighbouring cuts and,
            with MC counts, how the chosen cut moves in Poisson toys.
    """

    cuts: FloatArray
    efficiency: FloatArray
    background: FloatArray
    background_used: FloatArray
    background_uncertainty: FloatArray
    fom: FloatArray
    fom_uncertainty: FloatArray
    allowed: BoolArray
    n_mc_events: FloatArray | None
    best_index: int
    a: float
    formula: str
    b: float | None
    smooth: str
    stability: dict[str, Any] = field(default_factory=dict)

    @property
    def best_cut(self) -> float:
        """Chosen BDT cut."""
        return float(self.cuts[self.best_index])

    @property
    def best_efficiency(self) -> float:
        """Signal efficiency at the chosen cut."""
        return float(self.efficiency[self.best_index])

    @property
    def best_background(self) -> float:
        """Expected background at the chosen cut (events), as used in the FOM."""
        return float(self.background_used[self.best_index])

    @property
    def best_fom(self) -> float:
        """Figure of merit at the chosen cut."""
        return float(self.fom[self.best_index])

    def working_point(self) -> dict[str, Any]:
        """Return the chosen working point for results.json and the limit stage."""
        return {
            "bdt_cut": self.best_cut,
            "efficiency": self.best_efficiency,
            "background": self.best_background,
            "background_uncertainty": float(
                self.background_uncertainty[self.best_index]
            ),
            "fom": self.best_fom,
            "fom_uncertainty": float(self.fom_uncertainty[self.best_index]),
            "punzi_a": self.a,
            "punzi_formula": self.formula,
            "punzi_b": self.b,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the whole scan as JSON-ready plain types."""
        return {
            "working_point": self.working_point(),
            "cuts": self.cuts.tolist(),
            "efficiency": self.efficiency.tolist(),
            "background": self.background.tolist(),
            "background_used": self.background_used.tolist(),
            "background_uncertainty": self.background_uncertainty.tolist(),
            "fom": self.fom.tolist(),
            "fom_uncertainty": self.fom_uncertainty.tolist(),
            "allowed": self.allowed.tolist(),
            "n_mc_events": None
            if self.n_mc_events is None
            else self.n_mc_events.tolist(),
            "smooth": self.smooth,
            "stability": self.stability,
        }


def scan_cut(
    cuts: ArrayLike,
    efficiency: ArrayLike,
    background: ArrayLike,
    *,
    a: float = 3.0,
    min_background_mc_events: int = 0,
    n_mc_events: ArrayLike | None = None,
    smooth: Smoothing = "none",
    smooth_degree: int = 2,
    formula: FomFormula = "simple",
    b: float | None = None,
    n_toys: int = 200,
    seed: int = DEFAULT_SEED,
) -> ScanResult:
    """Scan the BDT cut and choose the one with the best Punzi figure of merit.

    Args:
        cuts: BDT cuts, strictly increasing; a candidate passes if bdt > cut.
        efficiency: signal efficiency at each cut.
        background: expected background at each cut (events, scaled to the
            data luminosity).
        a: Punzi ``a`` (standard deviations of significance).
        min_background_mc_events: a cut can be chosen only with at least this
            many raw background MC candidates; 0 disables the guard.
        n_mc_events: raw background MC candidates at each cut; needed by the
            guard and the toys, and used to weight the smoothing fit.
        smooth: ``"none"`` or ``"exponential"`` (fit of ``log B`` with a
            polynomial of degree ``smooth_degree`` in the cut).
        smooth_degree: degree of that polynomial.
        formula: ``"simple"`` or ``"full"`` (see :func:`punzi_fom`).
        b: Punzi ``b`` for the full formula; None uses ``a``.
        n_toys: Poisson toys of the MC counts for the stability report; 0
            skips them.
        seed: seed of the toys.

    Returns:
        The :class:`ScanResult`.

    Raises:
        ConfigError: cuts not increasing, arrays of different lengths, the
            guard given without MC counts, no cut passing the guard, or
            invalid FOM options.
    """
    cut_values = _check_cuts(cuts, "cuts")
    n = cut_values.size
    eps = _grid(efficiency, (n, 1), "efficiency")
    bkg = _grid(background, (n, 1), "background")
    counts = None if n_mc_events is None else _grid(n_mc_events, (n, 1), "n_mc_events")
    _check_options(min_background_mc_events, counts, smooth)

    scan = _scan_grid(
        cut_values,
        eps,
        bkg,
        counts,
        a=a,
        formula=formula,
        b=b,
        min_background_mc_events=min_background_mc_events,
        smooth=smooth,
        smooth_degree=smooth_degree,
        n_toys=n_toys,
        seed=seed,
    )
    result = ScanResult(
        cuts=cut_values,
        efficiency=eps[:, 0],
        background=bkg[:, 0],
        background_used=scan.background_used[:, 0],
        background_uncertainty=scan.background_uncertainty[:, 0],
        fom=scan.fom[:, 0],
        fom_uncertainty=scan.fom_uncertainty[:, 0],
        allowed=scan.allowed[:, 0],
        n_mc_events=None if counts is None else counts[:, 0],
        best_index=scan.best[0],
        a=a,
        formula=formula,
        b=b,
        smooth=smooth,
        stability={
            **scan.stability,
            "plateau_mask": [row[0] for row in scan.stability["plateau_mask"]],
        },
    )
    log.info(
        "Punzi scan (a=%g, %s): best BDT cut %.4g, efficiency %.4g, background %.4g "
        "events, FOM %.4g",
        a,
        formula,
        result.best_cut,
        result.best_efficiency,
        result.best_background,
        result.best_fom,
    )
    return result


def _check_options(minimum: int, counts: FloatArray | None, smooth: str) -> None:
    _check_choice(smooth, SMOOTHINGS, "smoothing")
    if minimum > 0 and counts is None:
        raise ConfigError(
            f"min_background_mc_events={minimum} needs n_mc_events, the raw MC "
            "count at each cut"
        )


@dataclass
class JointScanResult:
    """Result of the joint scan of BDT cut and ellipse size.

    Grids have shape (number of cuts, number of sizes). Attributes mirror
    :class:`ScanResult`; ``n_sigmas`` are the region sizes in standard
    deviations and ``best_index`` is (cut index, size index).
    """

    cuts: FloatArray
    n_sigmas: FloatArray
    efficiency: FloatArray
    background: FloatArray
    background_used: FloatArray
    background_uncertainty: FloatArray
    fom: FloatArray
    fom_uncertainty: FloatArray
    allowed: BoolArray
    n_mc_events: FloatArray | None
    best_index: tuple[int, int]
    a: float
    formula: str
    b: float | None
    smooth: str
    stability: dict[str, Any] = field(default_factory=dict)

    @property
    def best_cut(self) -> float:
        """Chosen BDT cut."""
        return float(self.cuts[self.best_index[0]])

    @property
    def best_n_sigma(self) -> float:
        """Chosen region size in standard deviations."""
        return float(self.n_sigmas[self.best_index[1]])

    @property
    def best_efficiency(self) -> float:
        """Signal efficiency at the chosen point."""
        return float(self.efficiency[self.best_index])

    @property
    def best_background(self) -> float:
        """Expected background at the chosen point (events), as used in the FOM."""
        return float(self.background_used[self.best_index])

    @property
    def best_fom(self) -> float:
        """Figure of merit at the chosen point."""
        return float(self.fom[self.best_index])

    def working_point(self) -> dict[str, Any]:
        """Return the chosen working point for results.json and the limit stage."""
        return {
            "bdt_cut": self.best_cut,
            "n_sigma": self.best_n_sigma,
            "efficiency": self.best_efficiency,
            "background": self.best_background,
            "background_uncertainty": float(
                self.background_uncertainty[self.best_index]
            ),
            "fom": self.best_fom,
            "fom_uncertainty": float(self.fom_uncertainty[self.best_index]),
            "punzi_a": self.a,
            "punzi_formula": self.formula,
            "punzi_b": self.b,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the whole scan as JSON-ready plain types."""
        return {
            "working_point": self.working_point(),
            "cuts": self.cuts.tolist(),
            "n_sigmas": self.n_sigmas.tolist(),
            "efficiency": self.efficiency.tolist(),
            "background": self.background.tolist(),
            "background_used": self.background_used.tolist(),
            "background_uncertainty": self.background_uncertainty.tolist(),
            "fom": self.fom.tolist(),
            "fom_uncertainty": self.fom_uncertainty.tolist(),
            "allowed": self.allowed.tolist(),
            "n_mc_events": None
            if self.n_mc_events is None
            else self.n_mc_events.tolist(),
            "smooth": self.smooth,
            "stability": self.stability,
        }


def scan_cut_and_size(
    cuts: ArrayLike,
    n_sigmas: ArrayLike,
    efficiency: ArrayLike,
    background: ArrayLike,
    *,
    a: float = 3.0,
    min_background_mc_events: int = 0,
    n_mc_events: ArrayLike | None = None,
    smooth: Smoothing = "none",
    smooth_degree: int = 2,
    formula: FomFormula = "simple",
    b: float | None = None,
    n_toys: int = 200,
    seed: int = DEFAULT_SEED,
) -> JointScanResult:
    """Scan the BDT cut and the ellipse size together and choose the best point.

    Takes grids of shape (len(cuts), len(n_sigmas)), for example from
    :func:`tabulate_cut_and_size`. Smoothing, when asked for, is applied along
    the cut for each size. The other arguments are those of :func:`scan_cut`.

    Returns:
        The :class:`JointScanResult`.

    Raises:
        ConfigError: as :func:`scan_cut`, or sizes not strictly increasing.
    """
    cut_values = _check_cuts(cuts, "cuts")
    sizes = _check_cuts(n_sigmas, "n_sigmas")
    shape = (cut_values.size, sizes.size)
    eps = _grid(efficiency, shape, "efficiency")
    bkg = _grid(background, shape, "background")
    counts = None if n_mc_events is None else _grid(n_mc_events, shape, "n_mc_events")
    _check_options(min_background_mc_events, counts, smooth)

    scan = _scan_grid(
        cut_values,
        eps,
        bkg,
        counts,
        a=a,
        formula=formula,
        b=b,
        min_background_mc_events=min_background_mc_events,
        smooth=smooth,
        smooth_degree=smooth_degree,
        n_toys=n_toys,
        seed=seed,
    )
    plateau = np.asarray(scan.stability["plateau_mask"], dtype=bool)
    scan.stability["plateau_n_sigma_range"] = [
        float(sizes[plateau.any(axis=0)].min()),
        float(sizes[plateau.any(axis=0)].max()),
    ]
    result = JointScanResult(
        cuts=cut_values,
        n_sigmas=sizes,
        efficiency=eps,
        background=bkg,
        background_used=scan.background_used,
        background_uncertainty=scan.background_uncertainty,
        fom=scan.fom,
        fom_uncertainty=scan.fom_uncertainty,
        allowed=scan.allowed,
        n_mc_events=counts,
        best_index=scan.best,
        a=a,
        formula=formula,
        b=b,
        smooth=smooth,
        stability=scan.stability,
    )
    log.info(
        "joint Punzi scan (a=%g, %s): best BDT cut %.4g at %.3g sigma, efficiency "
        "%.4g, background %.4g events, FOM %.4g",
        a,
        formula,
        result.best_cut,
        result.best_n_sigma,
        result.best_efficiency,
        result.best_background,
        result.best_fom,
    )
    return result


# ---------------------------------------------------------------------------
# Tables of efficiency and background from samples
# ---------------------------------------------------------------------------


def tabulate_cut(
    cuts: ArrayLike,
    signal_bdt: ArrayLike,
    background_bdt: ArrayLike,
    *,
    signal_weights: ArrayLike | None = None,
    background_weights: ArrayLike | None = None,
    n_signal_generated: float | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Count signal efficiency, background yield and raw MC count at each cut.

    Pass candidates already inside the signal region; a candidate passes a cut
    if bdt > cut.

    Args:
        cuts: BDT cuts.
        signal_bdt: BDT output of the signal MC candidates.
        background_bdt: BDT output of the background MC candidates.
        signal_weights: signal weights, or None for unit weights.
        background_weights: background weights scaled to the data luminosity,
            or None for unit weights.
        n_signal_generated: efficiency denominator (weighted); None uses the
            sum of the given signal weights.

    Returns:
        ``(efficiency, background, n_mc_events)``, one entry per cut.

    Raises:
        ConfigError: invalid inputs or a denominator <= 0.
    """
    cut_values = as_float_array(cuts, "cuts")
    s_bdt = as_float_array(signal_bdt, "signal_bdt")
    b_bdt = as_float_array(background_bdt, "background_bdt")
    s_w = resolve_weights(signal_weights, s_bdt.size, "signal_weights")
    b_w = resolve_weights(background_weights, b_bdt.size, "background_weights")
    denominator = (
        float(s_w.sum()) if n_signal_generated is None else float(n_signal_generated)
    )
    if not denominator > 0:
        raise ConfigError(
            f"signal efficiency denominator must be > 0, got {denominator}"
        )
    passes_s = s_bdt[None, :] > cut_values[:, None]
    passes_b = b_bdt[None, :] > cut_values[:, None]
    efficiency = passes_s @ s_w / denominator
    background = passes_b @ b_w
    counts = passes_b.sum(axis=1).astype(np.float64)
    return efficiency, background, counts


def tabulate_cut_and_size(
    shape: SignalShape,
    cuts: ArrayLike,
    n_sigmas: ArrayLike,
    signal: tuple[ArrayLike, ArrayLike | None, ArrayLike, ArrayLike | None],
    background: tuple[ArrayLike, ArrayLike | None, ArrayLike, ArrayLike | None],
    *,
    n_signal_generated: float | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Count efficiency, background and raw MC count on a (cut, size) grid.

    The region of each size is :func:`make_signal_region` of ``shape``.

    Args:
        shape: the fitted signal shape.
        cuts: BDT cuts.
        n_sigmas: region sizes in standard deviations.
        signal: ``(mass, delta_e, bdt, weights)`` of the signal MC; delta_e
            None in 1D, weights None for unit weights.
        background: the same for the background MC, weights scaled to the
            data luminosity.
        n_signal_generated: efficiency denominator; None uses the sum of the
            signal weights.

    Returns:
        ``(efficiency, background, n_mc_events)``, each of shape
        (len(cuts), len(n_sigmas)).
    """
    cut_values = as_float_array(cuts, "cuts")
    sizes = as_float_array(n_sigmas, "n_sigmas")
    grids = [np.zeros((cut_values.size, sizes.size)) for _ in range(3)]
    s_weights = resolve_weights(signal[3], np.asarray(signal[2]).size, "signal weights")
    denominator = (
        float(s_weights.sum()) if n_signal_generated is None else n_signal_generated
    )
    for j, size in enumerate(sizes):
        region = make_signal_region(shape, float(size))
        s_in = region.contains(signal[0], signal[1])
        b_in = region.contains(background[0], background[1])
        b_bdt = np.asarray(background[2], dtype=np.float64)
        b_weights = None if background[3] is None else np.asarray(background[3])[b_in]
        columns = tabulate_cut(
            cut_values,
            np.asarray(signal[2], dtype=np.float64)[s_in],
            b_bdt[b_in],
            signal_weights=s_weights[s_in],
            background_weights=b_weights,
            n_signal_generated=denominator,
        )
        for grid, column in zip(grids, columns, strict=True):
            grid[:, j] = column
    return grids[0], grids[1], grids[2]


# ---------------------------------------------------------------------------
# Plots (implemented in analysis.region_plots, which imports matplotlib)
# ---------------------------------------------------------------------------


def plot_punzi_scan(result: ScanResult, path: str | Path) -> Path:
    """Plot FOM, efficiency and background against the BDT cut; return the path."""
    from analysis.region_plots import plot_punzi_scan as _plot

    return _plot(result, path)


def plot_joint_scan(result: JointScanResult, path: str | Path) -> Path:
    """Plot the FOM over (BDT cut, region size) with the best point; return the path."""
    from analysis.region_plots import plot_joint_scan as _plot

    return _plot(result, path)
