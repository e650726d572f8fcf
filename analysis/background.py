"""Expected background in the signal region.

Three estimates, each returned as a :class:`BackgroundEstimate`:

* :func:`estimate_from_sidebands` fits a smooth background shape to the data
  sidebands (exponential or Legendre polynomial in M_3mu, flat or linear in
  Delta E) and integrates it over the signal region;
* :func:`estimate_from_mc` sums the background MC in the region, with weights
  already scaled to the data luminosity;
* :func:`estimate_abcd` uses the BDT output as the second axis of an ABCD
  method.

:func:`closure_test` and :func:`validate_on_mc` compare an estimate with the
MC truth and give the pull.

Few events: with no sideband events (or no MC events in the region, or an
empty ABCD control region) the estimate is a one-sided Poisson upper bound at
confidence level ``cl``, flagged ``is_upper_bound``. With fewer than
``min_shape_events`` sideband events the shape is not fitted and the density
is taken as uniform over the window.

Units: M_3mu and Delta E in GeV, yields in events for the luminosity of the
input.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from iminuit import Minuit
from numpy.polynomial import legendre
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from analysis.errors import ConfigError, FitError, PhysicsError, did_you_mean
from analysis.signal_region import (
    Sidebands,
    SignalRegion,
    as_float_array,
    resolve_weights,
)

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
MassModel = Literal["exponential", "polynomial"]
DeltaEModel = Literal["flat", "linear"]
Params = Sequence[float] | NDArray[np.float64]

MASS_MODELS: tuple[str, ...] = ("exponential", "polynomial")
DELTA_E_MODELS: tuple[str, ...] = ("flat", "linear")


@dataclass
class BackgroundEstimate:
    """Expected background yield in the signal region.

    Attributes:
        value: expected yield (events). When ``is_upper_bound`` is True, this is
            the upper bound at confidence level ``details["cl"]``.
        uncertainty: one-standard-deviation uncertainty of ``value`` (events);
            0.0 for an upper bound, which already covers the Poisson
            fluctuation.
        method: ``"sideband_fit"``, ``"mc"`` or ``"abcd"``.
        n_sideband: raw (unweighted) number of candidates the estimate rests
            on: sideband candidates for ``"sideband_fit"``, MC candidates in
            the region for ``"mc"``, candidates in control region C for
            ``"abcd"``.
        is_upper_bound: True when no candidates were available and ``value``
            is a Poisson upper bound rather than an estimate.
        details: method-specific numbers (fitted shape, ratios, counts).
    """

    value: float
    uncertainty: float
    method: str
    n_sideband: int
    is_upper_bound: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the estimate as JSON-ready plain types."""
        return {
            "value": self.value,
            "uncertainty": self.uncertainty,
            "method": self.method,
            "n_sideband": self.n_sideband,
            "is_upper_bound": self.is_upper_bound,
            "details": self.details,
        }


def poisson_upper_limit(n_observed: int, cl: float = 0.90) -> float:
    """Return the one-sided upper limit on a Poisson mean after ``n_observed`` events.

    Uses the classical (Garwood) bound ``chi2.ppf(cl, 2 n + 2) / 2``. For zero
    events this is ``-ln(1 - cl)``, 2.303 at 90% CL.

    Raises:
        ConfigError: ``cl`` is not in (0, 1) or ``n_observed`` is negative.
    """
    _check_cl(cl)
    if n_observed < 0:
        raise ConfigError(f"observed count must be >= 0, got {n_observed}")
    return float(0.5 * stats.chi2.ppf(cl, 2 * n_observed + 2))


def _check_cl(cl: float) -> None:
    if not (0.0 < cl < 1.0):
        raise ConfigError(f"confidence level must be in (0, 1), got {cl}")


# ---------------------------------------------------------------------------
# Background shapes on the analysis window
# ---------------------------------------------------------------------------


class _AxisShape:
    """Normalised density on a window [low, high] with free parameters."""

    parameters: tuple[str, ...] = ()

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def density(self, x: FloatArray, params: Params) -> FloatArray:
        raise NotImplementedError

    def probability(self, a: float, b: float, params: Params) -> float:
        """Return the integral of the density over [a, b]."""
        raise NotImplementedError

    def limits(self) -> list[tuple[float, float]]:
        return []

    def is_positive(self, params: Params) -> bool:
        return True


class _Exponential(_AxisShape):
    """exp(slope * (x - x_mid)); slope in 1/GeV, negative for a falling shape."""

    parameters = ("slope",)

    def _primitive(self, a: float, b: float, slope: float) -> float:
        mid = 0.5 * (self.low + self.high)
        if abs(slope * (b - a)) < 1e-9:
            return (b - a) * math.exp(slope * (a - mid))
        return math.exp(slope * (a - mid)) * math.expm1(slope * (b - a)) / slope

    def density(self, x: FloatArray, params: Params) -> FloatArray:
        (slope,) = params
        mid = 0.5 * (self.low + self.high)
        norm = self._primitive(self.low, self.high, slope)
        return np.exp(slope * (x - mid)) / norm

    def probability(self, a: float, b: float, params: Params) -> float:
        (slope,) = params
        return self._primitive(a, b, slope) / self._primitive(
            self.low, self.high, slope
        )

    def limits(self) -> list[tuple[float, float]]:
        # 200 / window width allows a falling or rising factor of e^200 across
        # the window, far beyond any physical background.
        bound = 200.0 / (self.high - self.low)
        return [(-bound, bound)]


class _Legendre(_AxisShape):
    """1 + sum_k c_k P_k(t) with t mapped from the window onto [-1, 1].

    Every P_k with k >= 1 integrates to zero over [-1, 1], so the density
    ``(1 + sum c_k P_k) / width`` is normalised for any coefficients.
    """

    def __init__(self, low: float, high: float, degree: int, prefix: str) -> None:
        super().__init__(low, high)
        self.degree = degree
        self.parameters = tuple(f"{prefix}{k}" for k in range(1, degree + 1))
        self._grid = np.linspace(-1.0, 1.0, 201)

    def _t(self, x: FloatArray | float) -> FloatArray:
        return np.asarray(
            2.0 * (np.asarray(x) - self.low) / (self.high - self.low) - 1.0
        )

    def density(self, x: FloatArray, params: Params) -> FloatArray:
        series = legendre.legval(self._t(x), [1.0, *params])
        return np.asarray(series / (self.high - self.low))

    def probability(self, a: float, b: float, params: Params) -> float:
        primitive = legendre.legint([1.0, *params])
        ends = legendre.legval(self._t(np.array([a, b])), primitive)
        return float((ends[1] - ends[0]) / 2.0)

    def limits(self) -> list[tuple[float, float]]:
        return [(-1.0, 1.0)] * self.degree

    def is_positive(self, params: Params) -> bool:
        return bool(np.all(legendre.legval(self._grid, [1.0, *params]) > 0.0))


def _mass_shape(model: str, low: float, high: float, degree: int) -> _AxisShape:
    if model == "exponential":
        return _Exponential(low, high)
    if model == "polynomial":
        if degree < 1:
            raise ConfigError(f"mass_degree must be >= 1, got {degree}")
        return _Legendre(low, high, degree, "mass_c")
    raise ConfigError(
        f"unknown background mass model {model!r}; choose one of "
        f"{', '.join(MASS_MODELS)}.{did_you_mean(model, MASS_MODELS)}"
    )


def _delta_e_shape(model: str, low: float, high: float) -> _AxisShape:
    if model == "flat":
        return _Legendre(low, high, 0, "delta_e_c")
    if model == "linear":
        return _Legendre(low, high, 1, "delta_e_c")
    raise ConfigError(
        f"unknown background Delta E model {model!r}; choose one of "
        f"{', '.join(DELTA_E_MODELS)}.{did_you_mean(model, DELTA_E_MODELS)}"
    )


class _ProductShape:
    """f(M) * g(Delta E) on the window; g is absent for a 1D region."""

    def __init__(self, mass: _AxisShape, delta_e: _AxisShape | None) -> None:
        self.mass = mass
        self.delta_e = delta_e
        self.n_mass = len(mass.parameters)
        extra = () if delta_e is None else delta_e.parameters
        self.parameters: tuple[str, ...] = (*mass.parameters, *extra)

    def _split(self, params: Params) -> tuple[Params, Params]:
        return params[: self.n_mass], params[self.n_mass :]

    def density(
        self, m: FloatArray, de: FloatArray | None, params: Params
    ) -> FloatArray:
        pm, pd = self._split(params)
        value = self.mass.density(m, pm)
        if self.delta_e is not None:
            assert de is not None
            value = value * self.delta_e.density(de, pd)
        return value

    def box_probability(
        self,
        box_m: tuple[float, float],
        box_de: tuple[float, float] | None,
        params: Params,
    ) -> float:
        pm, pd = self._split(params)
        value = self.mass.probability(box_m[0], box_m[1], pm)
        if self.delta_e is not None:
            assert box_de is not None
            value *= self.delta_e.probability(box_de[0], box_de[1], pd)
        return value

    def is_positive(self, params: Params) -> bool:
        pm, pd = self._split(params)
        positive = self.mass.is_positive(pm)
        if self.delta_e is not None:
            positive = positive and self.delta_e.is_positive(pd)
        return positive

    def limits(self) -> list[tuple[float, float]]:
        extra = [] if self.delta_e is None else self.delta_e.limits()
        return [*self.mass.limits(), *extra]


def _region_probability(
    shape: _ProductShape, region: SignalRegion, params: Params
) -> float:
    m, de, w = region.quadrature()
    return float(np.sum(w * shape.density(m, de, params)))


def _fit_sideband_shape(
    shape: _ProductShape,
    m: FloatArray,
    de: FloatArray | None,
    w: FloatArray,
    box: tuple[tuple[float, float], tuple[float, float] | None],
    sample: str,
) -> tuple[FloatArray, FloatArray, dict[str, Any]]:
    # Conditional likelihood of the sideband candidates: the density divided by
    # the probability of the sidebands, 1 - P(blinded box).
    scaled = w * (w.sum() / np.sum(w**2))
    total = float(scaled.sum())

    def nll(*params: float) -> float:
        if not shape.is_positive(params):
            return 1e30
        p_sideband = 1.0 - shape.box_probability(box[0], box[1], params)
        density = shape.density(m, de, params)
        if p_sideband <= 0.0 or np.any(density <= 0.0):
            return 1e30
        return float(-np.sum(scaled * np.log(density)) + total * math.log(p_sideband))

    minuit = Minuit(nll, *([0.0] * len(shape.parameters)), name=shape.parameters)
    minuit.errordef = Minuit.LIKELIHOOD
    for name, limit in zip(shape.parameters, shape.limits(), strict=True):
        minuit.limits[name] = limit
    minuit.migrad()
    if minuit.valid:
        minuit.hesse()
    fmin = minuit.fmin
    status = {
        "valid": bool(minuit.valid),
        "edm": float(fmin.edm),
        "nfcn": int(fmin.nfcn),
        "accurate_covariance": bool(fmin.has_accurate_covar),
        "parameters_at_limit": bool(fmin.has_parameters_at_limit),
    }
    if not minuit.valid:
        raise FitError(
            f"sideband fit of the background shape in sample {sample!r} did not "
            f"converge: edm={fmin.edm:.3g}, nfcn={fmin.nfcn}, parameters at limit="
            f"{fmin.has_parameters_at_limit}; try another mass or Delta E model"
        )
    values = np.array(minuit.values, dtype=np.float64)
    covariance = np.asarray(minuit.covariance, dtype=np.float64)
    return values, covariance, status


def _ratio_gradient(
    ratio: Callable[[FloatArray], float], values: FloatArray, errors: FloatArray
) -> FloatArray:
    gradient = np.zeros_like(values)
    for i in range(values.size):
        step = 1e-3 * max(float(errors[i]), 1e-6)
        up, down = values.copy(), values.copy()
        up[i] += step
        down[i] -= step
        gradient[i] = (ratio(up) - ratio(down)) / (2.0 * step)
    return gradient


def estimate_from_sidebands(
    mass: ArrayLike,
    delta_e: ArrayLike | None,
    weights: ArrayLike | None,
    region: SignalRegion,
    sidebands: Sidebands,
    *,
    mass_model: MassModel = "exponential",
    delta_e_model: DeltaEModel = "flat",
    mass_degree: int = 1,
    cl: float = 0.90,
    min_shape_events: int = 10,
    unit_weight: float = 1.0,
    sample: str = "data",
) -> BackgroundEstimate:
    """Estimate the background in the signal region from a fit to the sidebands.

    The background density is ``f(M) * g(Delta E)``, normalised over the
    analysis window. ``f`` is ``exp(slope * M)`` (``"exponential"``) or a
    Legendre series of degree ``mass_degree`` (``"polynomial"``); ``g`` is flat
    or linear (Delta E is ignored for a 1D region). The shape is fitted to the
    sideband candidates by unbinned maximum likelihood, and the estimate is
    ``N_sideband * P(region) / P(sidebands)``, where ``P(region)`` is the
    density integrated over the region by quadrature.

    The uncertainty combines the Poisson uncertainty of the sideband yield,
    ``sqrt(sum w^2)``, with the shape parameters' HESSE covariance propagated
    through the ratio.

    Zero-sideband convention: with no sideband candidate, the estimate is the
    upper bound ``mu_up(cl) * unit_weight * P(region) / P(sidebands)`` for a
    uniform density, and ``is_upper_bound`` is True. Here ``mu_up(cl)`` is the
    one-sided Poisson upper limit for zero observed events, 2.303 at 90% CL.
    With fewer than ``min_shape_events`` sideband candidates the shape is not
    fitted but taken as uniform, and the uncertainty is the Poisson part only.

    Args:
        mass: M_3mu of all candidates (GeV).
        delta_e: Delta E of the same candidates (GeV); None for a 1D region.
        weights: per-candidate weights (1 for data), or None.
        region: the signal region.
        sidebands: the sideband definition.
        mass_model: ``"exponential"`` or ``"polynomial"``.
        delta_e_model: ``"flat"`` or ``"linear"``.
        mass_degree: degree of the polynomial mass model.
        cl: confidence level of upper bounds and of ``details["upper_limit"]``.
        min_shape_events: minimum number of sideband candidates for which the shape is
            fitted.
        unit_weight: weight of one candidate, used for the zero-event bound.
        sample: sample name used in messages.

    Returns:
        A :class:`BackgroundEstimate` with method ``"sideband_fit"``. Its
        ``details`` hold the fitted parameters and covariance, ``P(region)``,
        ``P(sidebands)``, the sideband yield and ``upper_limit``, the CL upper
        bound on the region yield from the sideband count.

    Raises:
        FitError: the sideband fit did not converge.
        ConfigError: invalid inputs or an unknown model.
    """
    _check_cl(cl)
    m = as_float_array(mass, "mass")
    de = None
    if region.ndim == 2:
        if delta_e is None:
            raise ConfigError("a 2D signal region needs delta_e values; got None")
        de = as_float_array(delta_e, "delta_e")
        if de.size != m.size:
            raise ConfigError(f"mass has {m.size} entries but delta_e has {de.size}")
    w = resolve_weights(weights, m.size, "weights")

    box = sidebands.blind_box(region)
    m_window = sidebands.mass_range
    mass_shape = _mass_shape(mass_model, m_window[0], m_window[1], mass_degree)
    de_shape = None
    if region.ndim == 2:
        assert sidebands.delta_e_range is not None
        de_shape = _delta_e_shape(delta_e_model, *sidebands.delta_e_range)
    shape = _ProductShape(mass_shape, de_shape)

    in_sideband = sidebands.mask(m, de, region)
    n_raw = int(in_sideband.sum())
    m_sb = m[in_sideband]
    de_sb = None if de is None else de[in_sideband]
    w_sb = w[in_sideband]
    yield_sb = float(w_sb.sum())
    variance_sb = float(np.sum(w_sb**2))
    if n_raw and (np.any(w_sb < 0) or yield_sb <= 0):
        raise ConfigError(
            f"sideband weights of sample {sample!r} must be >= 0 with a positive "
            f"sum, got sum {yield_sb:.4g} and minimum {float(w_sb.min()):.4g}; an "
            "unbinned sideband fit cannot use negative weights"
        )

    def ratio(params: Params) -> float:
        p_region = _region_probability(shape, region, params)
        p_sideband = 1.0 - shape.box_probability(box[0], box[1], params)
        return p_region / p_sideband

    flat = np.zeros(len(shape.parameters))
    details: dict[str, Any] = {
        "sample": sample,
        "mass_model": mass_model,
        "delta_e_model": delta_e_model if region.ndim == 2 else None,
        "sideband_yield": yield_sb,
        "cl": cl,
        "blind_box": {
            "mass": list(box[0]),
            "delta_e": None if box[1] is None else list(box[1]),
        },
    }

    if n_raw == 0:
        bound = poisson_upper_limit(0, cl) * unit_weight * ratio(flat)
        details.update(shape="uniform (no sideband candidates)", ratio=ratio(flat))
        log.warning(
            "no sideband candidates in sample %s: background in the signal region "
            "is the %.0f%% CL upper bound %.3g events",
            sample,
            100 * cl,
            bound,
        )
        return BackgroundEstimate(
            value=bound,
            uncertainty=0.0,
            method="sideband_fit",
            n_sideband=0,
            is_upper_bound=True,
            details=details,
        )

    if n_raw < min_shape_events or not shape.parameters:
        values = flat
        covariance = np.zeros((flat.size, flat.size))
        if shape.parameters:
            details["shape"] = (
                f"uniform ({n_raw} < {min_shape_events} sideband candidates)"
            )
            log.warning(
                "only %d sideband candidates in sample %s: background shape taken "
                "as uniform, without a shape uncertainty",
                n_raw,
                sample,
            )
        else:
            details["shape"] = "uniform"
    else:
        values, covariance, status = _fit_sideband_shape(
            shape, m_sb, de_sb, w_sb, box, sample
        )
        details["shape"] = "fitted"
        details["fit_status"] = status

    r = ratio(values)
    value = yield_sb * r
    shape_variance = 0.0
    if covariance.any():
        errors = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        gradient = _ratio_gradient(ratio, values, errors)
        shape_variance = float(yield_sb**2 * gradient @ covariance @ gradient)
    uncertainty = math.sqrt(variance_sb * r**2 + shape_variance)
    mean_weight = yield_sb / n_raw
    details.update(
        parameters=dict(zip(shape.parameters, values.tolist(), strict=True)),
        covariance=covariance.tolist(),
        ratio=r,
        p_region=_region_probability(shape, region, values),
        p_sideband=1.0 - shape.box_probability(box[0], box[1], values),
        statistical_uncertainty=math.sqrt(variance_sb) * r,
        shape_uncertainty=math.sqrt(shape_variance),
        upper_limit=poisson_upper_limit(n_raw, cl) * mean_weight * r,
    )
    log.info(
        "sideband estimate for %s: %.3g +- %.3g events in the signal region from "
        "%d sideband candidates (ratio %.4g)",
        sample,
        value,
        uncertainty,
        n_raw,
        r,
    )
    return BackgroundEstimate(
        value=value,
        uncertainty=uncertainty,
        method="sideband_fit",
        n_sideband=n_raw,
        is_upper_bound=False,
        details=details,
    )


def _mean_weight(w: FloatArray, unit_weight: float | None) -> float:
    if unit_weight is not None:
        return unit_weight
    return float(w.mean()) if w.size else 1.0


def estimate_from_mc(
    mass: ArrayLike,
    delta_e: ArrayLike | None,
    weights: ArrayLike | None,
    region: SignalRegion,
    *,
    cl: float = 0.90,
    unit_weight: float | None = None,
) -> BackgroundEstimate:
    """Sum the background MC inside the signal region.

    Args:
        mass: M_3mu of the background MC candidates (GeV).
        delta_e: their Delta E (GeV); None for a 1D region.
        weights: per-candidate weights already scaled to the data luminosity,
            or None for unit weights.
        region: the signal region.
        cl: confidence level of the bound used when no candidate is inside.
        unit_weight: weight of one MC candidate for that bound; None takes the
            mean weight of the input.

    Returns:
        A :class:`BackgroundEstimate` with method ``"mc"``: ``sum w`` with
        uncertainty ``sqrt(sum w^2)``, or, with no candidate inside, the upper
        bound ``mu_up(cl) * unit_weight``.

    Raises:
        ConfigError: invalid inputs.
    """
    _check_cl(cl)
    m = as_float_array(mass, "mass")
    de = None if delta_e is None else as_float_array(delta_e, "delta_e")
    w = resolve_weights(weights, m.size, "weights")
    inside = region.contains(m, de)
    n_inside = int(inside.sum())
    details: dict[str, Any] = {"cl": cl, "n_mc_in_region": n_inside}

    if n_inside == 0:
        bound = poisson_upper_limit(0, cl) * _mean_weight(w, unit_weight)
        log.warning(
            "no background MC candidates in the signal region: %.0f%% CL upper "
            "bound %.3g events",
            100 * cl,
            bound,
        )
        return BackgroundEstimate(
            bound, 0.0, "mc", 0, is_upper_bound=True, details=details
        )

    value = float(w[inside].sum())
    uncertainty = math.sqrt(float(np.sum(w[inside] ** 2)))
    details["upper_limit"] = poisson_upper_limit(n_inside, cl) * value / n_inside
    log.info(
        "MC estimate: %.3g +- %.3g events from %d MC candidates",
        value,
        uncertainty,
        n_inside,
    )
    return BackgroundEstimate(value, uncertainty, "mc", n_inside, details=details)


def estimate_abcd(
    in_region: ArrayLike,
    in_sideband: ArrayLike,
    bdt: ArrayLike,
    weights: ArrayLike | None,
    cut: float,
    loose: float,
    *,
    cl: float = 0.90,
    unit_weight: float | None = None,
) -> BackgroundEstimate:
    """Estimate the background with the ABCD method in (region, BDT output).

    A is the signal region with ``bdt > cut``, B the signal region with
    ``loose < bdt <= cut``, C the sidebands with ``bdt > cut`` and D the
    sidebands with ``loose < bdt <= cut``. If the BDT output does not depend
    on the position in (M, Delta E), ``N_A = N_B * N_C / N_D``. The relative
    uncertainty is the quadrature sum of those of N_B, N_C and N_D, each
    ``sqrt(sum w^2) / sum w``.

    When B or C is empty, its count is replaced by the CL Poisson upper bound
    times ``unit_weight`` and the result is flagged as an upper bound.

    Args:
        in_region: mask of candidates in the signal region.
        in_sideband: mask of candidates in the sidebands (disjoint from the
            region).
        bdt: BDT output per candidate.
        weights: per-candidate weights, or None for unit weights.
        cut: BDT cut of the analysis (signal-like side is ``bdt > cut``).
        loose: lower edge of the loose BDT band, below ``cut``.
        cl: confidence level of the bounds for empty regions.
        unit_weight: weight of one candidate for those bounds; None takes the
            mean weight of the input.

    Returns:
        A :class:`BackgroundEstimate` with method ``"abcd"``; ``details`` contains
        the yields and raw counts of A (truth, for closure on MC), B, C and D.

    Raises:
        ConfigError: masks of different lengths, overlapping region and
            sidebands, or ``loose >= cut``.
        PhysicsError: control region D is empty, so the transfer factor
            N_C / N_D is undefined; lower ``loose``.
    """
    _check_cl(cl)
    score = as_float_array(bdt, "bdt")
    region_mask = np.asarray(in_region, dtype=bool)
    sideband_mask = np.asarray(in_sideband, dtype=bool)
    if region_mask.shape != score.shape or sideband_mask.shape != score.shape:
        raise ConfigError(
            f"in_region {region_mask.shape}, in_sideband {sideband_mask.shape} and "
            f"bdt {score.shape} must have the same length"
        )
    overlap = int((region_mask & sideband_mask).sum())
    if overlap:
        raise ConfigError(
            f"{overlap} candidates are in both the signal region and the sidebands; "
            "the ABCD regions must be disjoint"
        )
    if not loose < cut:
        raise ConfigError(f"loose BDT edge {loose} must be below the cut {cut}")
    w = resolve_weights(weights, score.size, "weights")

    tight = score > cut
    band = (score > loose) & (score <= cut)
    masks = {
        "A": region_mask & tight,
        "B": region_mask & band,
        "C": sideband_mask & tight,
        "D": sideband_mask & band,
    }
    yields = {k: float(w[v].sum()) for k, v in masks.items()}
    variances = {k: float(np.sum(w[v] ** 2)) for k, v in masks.items()}
    counts = {k: int(v.sum()) for k, v in masks.items()}
    details: dict[str, Any] = {
        "cut": cut,
        "loose": loose,
        "cl": cl,
        "yields": yields,
        "counts": counts,
    }

    if counts["D"] == 0:
        raise PhysicsError(
            f"ABCD control region D (sidebands, {loose} < bdt <= {cut}) is empty, so "
            "N_C / N_D is undefined; lower the loose BDT edge"
        )

    one_event = _mean_weight(w, unit_weight)
    bounded = []
    for name in ("B", "C"):
        if counts[name] == 0:
            yields[name] = poisson_upper_limit(0, cl) * one_event
            bounded.append(name)
    value = yields["B"] * yields["C"] / yields["D"]
    details["transfer_factor"] = yields["C"] / yields["D"]

    if bounded:
        details["upper_bound_regions"] = bounded
        log.warning(
            "ABCD region(s) %s empty: background is the %.0f%% CL upper bound %.3g",
            ", ".join(bounded),
            100 * cl,
            value,
        )
        return BackgroundEstimate(value, 0.0, "abcd", counts["C"], True, details)

    relative2 = sum(variances[k] / yields[k] ** 2 for k in ("B", "C", "D"))
    uncertainty = value * math.sqrt(relative2)
    log.info(
        "ABCD estimate: %.3g +- %.3g events (N_B=%.3g, N_C=%.3g, N_D=%.3g)",
        value,
        uncertainty,
        yields["B"],
        yields["C"],
        yields["D"],
    )
    return BackgroundEstimate(value, uncertainty, "abcd", counts["C"], False, details)


def closure_test(
    estimate: BackgroundEstimate,
    truth: BackgroundEstimate,
    *,
    max_pull: float = 2.0,
) -> dict[str, Any]:
    """Compare an estimate with the MC truth in the signal region.

    The pull is ``(estimate - truth) / sqrt(sigma_estimate^2 + sigma_truth^2)``,
    which assumes the two are independent. That holds when the estimate uses
    only candidates outside the truth's region (sidebands, loose BDT band). For
    an upper-bound estimate the test passes when the truth does not exceed the
    bound, and the pull is None.

    Args:
        estimate: the estimate under test, computed on MC.
        truth: the MC yield in the signal region (:func:`estimate_from_mc`).
        max_pull: largest absolute pull that passes.

    Returns:
        ``method``, ``estimate``, ``estimate_uncertainty``, ``truth``,
        ``truth_uncertainty``, ``ratio`` (estimate / truth, None for zero
        truth), ``pull``, ``max_pull`` and ``passed``.
    """
    combined = math.hypot(estimate.uncertainty, truth.uncertainty)
    pull: float | None = None
    if estimate.is_upper_bound:
        passed = truth.value <= estimate.value
    elif combined > 0:
        pull = (estimate.value - truth.value) / combined
        passed = abs(pull) <= max_pull
    else:
        passed = math.isclose(estimate.value, truth.value)
    result = {
        "method": estimate.method,
        "estimate": estimate.value,
        "estimate_uncertainty": estimate.uncertainty,
        "estimate_is_upper_bound": estimate.is_upper_bound,
        "truth": truth.value,
        "truth_uncertainty": truth.uncertainty,
        "truth_is_upper_bound": truth.is_upper_bound,
        "ratio": estimate.value / truth.value if truth.value > 0 else None,
        "pull": pull,
        "max_pull": max_pull,
        "passed": bool(passed),
    }
    level = logging.INFO if passed else logging.WARNING
    log.log(level, "closure of %s on MC: %s", estimate.method, result)
    return result


def validate_on_mc(
    mass: ArrayLike,
    delta_e: ArrayLike | None,
    weights: ArrayLike | None,
    region: SignalRegion,
    sidebands: Sidebands,
    *,
    bdt: ArrayLike | None = None,
    cut: float | None = None,
    loose: float | None = None,
    mass_model: MassModel = "exponential",
    delta_e_model: DeltaEModel = "flat",
    max_pull: float = 2.0,
    cl: float = 0.90,
) -> dict[str, Any]:
    """Run the sideband (and, with a BDT, the ABCD) estimate on MC against its truth.

    Without ``bdt`` all candidates are used as given (apply the BDT cut first).
    With ``bdt``, ``cut`` and ``loose``, the sideband estimate and the truth
    use ``bdt > cut`` and the ABCD estimate uses the loose band as well.

    Returns:
        ``{"truth": ..., "sideband_fit": closure dict, "abcd": closure dict or
        None}``, with the estimates' ``to_dict()`` under ``"estimates"``.

    Raises:
        ConfigError: ``bdt`` given without ``cut`` and ``loose``.
    """
    m = as_float_array(mass, "mass")
    de = None if delta_e is None else as_float_array(delta_e, "delta_e")
    w = resolve_weights(weights, m.size, "weights")
    selected = np.ones(m.size, dtype=bool)
    score = None
    if bdt is not None:
        if cut is None or loose is None:
            raise ConfigError("validate_on_mc with bdt needs both cut and loose")
        score = as_float_array(bdt, "bdt")
        selected = score > cut

    def pick(values: FloatArray | None) -> FloatArray | None:
        return None if values is None else values[selected]

    m_sel, de_sel = m[selected], pick(de)
    truth = estimate_from_mc(m_sel, de_sel, w[selected], region, cl=cl)
    sideband = estimate_from_sidebands(
        m_sel,
        de_sel,
        w[selected],
        region,
        sidebands,
        mass_model=mass_model,
        delta_e_model=delta_e_model,
        cl=cl,
        unit_weight=float(w.mean()) if w.size else 1.0,
        sample="background MC",
    )
    result: dict[str, Any] = {
        "truth": truth.to_dict(),
        "sideband_fit": closure_test(sideband, truth, max_pull=max_pull),
        "abcd": None,
        "estimates": {"sideband_fit": sideband.to_dict()},
    }
    if score is not None and cut is not None and loose is not None:
        abcd = estimate_abcd(
            region.contains(m, de),
            sidebands.mask(m, de, region),
            score,
            w,
            cut,
            loose,
            cl=cl,
        )
        result["abcd"] = closure_test(abcd, truth, max_pull=max_pull)
        result["estimates"]["abcd"] = abcd.to_dict()
    return result
