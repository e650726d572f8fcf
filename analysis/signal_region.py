"""Signal shape in (M_3mu, Delta E), the elliptical signal region and sidebands.

The signal MC is fitted per axis with an unbinned maximum-likelihood fit
(iminuit): a bifurcated Gaussian or a Crystal Ball, both with a low-side tail
for the radiative loss in M_3mu and the ISR/FSR loss in Delta E. The pair's
covariance comes from the core of the signal, and its principal axes (PCA)
give the ellipse of the signal region. A 1D analysis (M_3mu only) gets an
interval instead of an ellipse, through the same :class:`SignalRegion`
protocol.

Units: M_3mu and Delta E in GeV, angles in radians. Weights are per-candidate
event weights; ``None`` means every candidate has weight 1.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from iminuit import Minuit
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

from analysis.errors import ConfigError, FitError, did_you_mean

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
ShapeModel = Literal["bifurcated_gaussian", "crystal_ball"]

SHAPE_MODELS: tuple[str, ...] = ("bifurcated_gaussian", "crystal_ball")
TAU_MASS_GEV = 1.77693
MIN_FIT_EVENTS = 20


# ---------------------------------------------------------------------------
# Input checks shared with background.py and fom.py
# ---------------------------------------------------------------------------


def as_float_array(values: ArrayLike, name: str) -> FloatArray:
    """Return ``values`` as a 1D float64 array, rejecting NaN and infinities.

    Raises:
        ConfigError: the array is not 1D or contains a non-finite entry. The
            message gives the count and the first bad index.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ConfigError(
            f"{name} must be a 1D array, got shape {array.shape}; pass one value "
            "per candidate"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ConfigError(
            f"{name} has {int(bad.sum())} non-finite values (first at index "
            f"{first}: {array[first]}); drop those candidates before this step"
        )
    return array


def resolve_weights(weights: ArrayLike | None, size: int, name: str) -> FloatArray:
    """Return per-candidate weights, ones when ``weights`` is None.

    Raises:
        ConfigError: the length differs from ``size`` or a weight is not finite.
    """
    if weights is None:
        return np.ones(size, dtype=np.float64)
    array = as_float_array(weights, name)
    if array.size != size:
        raise ConfigError(
            f"{name} has {array.size} entries but there are {size} candidates; "
            "pass one weight per candidate"
        )
    return array


def _check_same_length(mass: FloatArray, delta_e: FloatArray | None) -> None:
    if delta_e is not None and delta_e.size != mass.size:
        raise ConfigError(
            f"mass has {mass.size} entries but delta_e has {delta_e.size}; both "
            "must hold one value per candidate"
        )


def _check_interval(interval: Sequence[float], name: str) -> tuple[float, float]:
    if len(interval) != 2:
        raise ConfigError(f"{name} must be (low, high) in GeV, got {interval!r}")
    low, high = float(interval[0]), float(interval[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(
            f"{name} must be a finite interval with low < high, got ({low}, {high})"
        )
    return low, high


# ---------------------------------------------------------------------------
# One-dimensional signal models
# ---------------------------------------------------------------------------


class _AxisModel:
    """Density on the real line; truncated to the fit range by the caller."""

    name: str
    parameters: tuple[str, ...]

    def logpdf(self, x: FloatArray, params: Sequence[float]) -> FloatArray:
        raise NotImplementedError

    def cdf(self, x: FloatArray, params: Sequence[float]) -> FloatArray:
        raise NotImplementedError

    def start(self, x: FloatArray, w: FloatArray) -> dict[str, float]:
        raise NotImplementedError

    def limits(self, low: float, high: float) -> dict[str, tuple[float, float]]:
        raise NotImplementedError

    def core_sigma(self, values: Mapping[str, float]) -> float:
        raise NotImplementedError


def _weighted_quantiles(x: FloatArray, w: FloatArray, q: Sequence[float]) -> FloatArray:
    order = np.argsort(x)
    cumulative = np.cumsum(w[order])
    cumulative /= cumulative[-1]
    return np.interp(q, cumulative, x[order])


def _robust_start(x: FloatArray, w: FloatArray) -> tuple[float, float]:
    q25, q50, q75 = _weighted_quantiles(x, w, (0.25, 0.5, 0.75))
    # The interquartile range of a Gaussian is 1.349 sigma, and tails barely
    # move the quartiles, so this starts the width near the core's.
    sigma = max((q75 - q25) / 1.349, 1e-6)
    return float(q50), float(sigma)


class _BifurcatedGaussian(_AxisModel):
    name = "bifurcated_gaussian"
    parameters = ("mu", "sigma_left", "sigma_right")

    def logpdf(self, x: FloatArray, params: Sequence[float]) -> FloatArray:
        mu, left, right = params
        sigma = np.where(x < mu, left, right)
        norm = math.log(2.0 / (math.sqrt(2.0 * math.pi) * (left + right)))
        return norm - 0.5 * ((x - mu) / sigma) ** 2

    def cdf(self, x: FloatArray, params: Sequence[float]) -> FloatArray:
        mu, left, right = params
        total = left + right
        below = 2.0 * left / total * special.ndtr((x - mu) / left)
        above = left / total + 2.0 * right / total * (
            special.ndtr((x - mu) / right) - 0.5
        )
        return np.where(x < mu, below, above)

    def start(self, x: FloatArray, w: FloatArray) -> dict[str, float]:
        mu, sigma = _robust_start(x, w)
        return {"mu": mu, "sigma_left": sigma, "sigma_right": sigma}

    def limits(self, low: float, high: float) -> dict[str, tuple[float, float]]:
        width = high - low
        return {
            "mu": (low, high),
            "sigma_left": (1e-6 * width, width),
            "sigma_right": (1e-6 * width, width),
        }

    def core_sigma(self, values: Mapping[str, float]) -> float:
        return 0.5 * (values["sigma_left"] + values["sigma_right"])


class _CrystalBall(_AxisModel):
    """Gaussian core with a power-law tail on the low side (scipy's crystalball)."""

    name = "crystal_ball"
    parameters = ("mu", "sigma", "alpha", "n")

    def logpdf(self, x: FloatArray, params: Sequence[float]) -> FloatArray:
        mu, sigma, alpha, n = params
        return np.asarray(stats.crystalball.logpdf(x, alpha, n, mu, sigma))

    def cdf(self, x: FloatArray, params: Sequence[float]) -> FloatArray:
        mu, sigma, alpha, n = params
        return np.asarray(stats.crystalball.cdf(x, alpha, n, mu, sigma))

    def start(self, x: FloatArray, w: FloatArray) -> dict[str, float]:
        mu, sigma = _robust_start(x, w)
        return {"mu": mu, "sigma": sigma, "alpha": 1.5, "n": 3.0}

    def limits(self, low: float, high: float) -> dict[str, tuple[float, float]]:
        width = high - low
        return {
            "mu": (low, high),
            "sigma": (1e-6 * width, width),
            "alpha": (0.1, 10.0),
            "n": (1.01, 200.0),
        }

    def core_sigma(self, values: Mapping[str, float]) -> float:
        return values["sigma"]


_MODELS: dict[str, _AxisModel] = {
    "bifurcated_gaussian": _BifurcatedGaussian(),
    "crystal_ball": _CrystalBall(),
}


def _axis_model(name: str) -> _AxisModel:
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown signal shape model {name!r}; choose one of "
            f"{', '.join(SHAPE_MODELS)}.{did_you_mean(name, SHAPE_MODELS)}"
        ) from None


# ---------------------------------------------------------------------------
# Fit results
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisFit:
    """Result of the unbinned maximum-likelihood fit of one axis.

    Attributes:
        variable: ``"mass"`` (M_3mu) or ``"delta_e"`` (Delta E).
        model: ``"bifurcated_gaussian"`` or ``"crystal_ball"``.
        values: fitted parameters (``mu`` and widths in GeV; ``alpha`` in units
            of sigma and ``n`` dimensionless for the Crystal Ball).
        errors: HESSE uncertainties of ``values``, corrected for weights.
        covariance: parameter covariance in the order of ``values``.
        fit_range: (low, high) in GeV over which the density is normalised.
        status: Minuit status: ``valid``, ``edm``, ``nfcn``, ``min_nll``,
            ``accurate_covariance``, ``parameters_at_limit``.
        n_events: number of candidates in the fit.
        sum_weights: sum of their weights.
    """

    variable: str
    model: str
    values: dict[str, float]
    errors: dict[str, float]
    covariance: list[list[float]]
    fit_range: tuple[float, float]
    status: dict[str, Any]
    n_events: int
    sum_weights: float

    @property
    def peak(self) -> float:
        """Position of the Gaussian core (GeV)."""
        return self.values["mu"]

    @property
    def core_sigma(self) -> float:
        """Width of the Gaussian core (GeV); the mean of both sides if bifurcated."""
        return _axis_model(self.model).core_sigma(self.values)

    def pdf(self, x: ArrayLike) -> FloatArray:
        """Evaluate the fitted density (1/GeV), normalised over ``fit_range``."""
        model = _axis_model(self.model)
        params = [self.values[p] for p in model.parameters]
        points = np.asarray(x, dtype=np.float64)
        low, high = self.fit_range
        norm = _range_probability(model, params, low, high)
        inside = (points >= low) & (points <= high)
        density = np.exp(model.logpdf(points, params)) / norm
        return np.where(inside, density, 0.0)

    def bin_probabilities(self, edges: ArrayLike) -> FloatArray:
        """Return the fitted probability of each bin between consecutive ``edges``."""
        model = _axis_model(self.model)
        params = [self.values[p] for p in model.parameters]
        low, high = self.fit_range
        clipped = np.clip(np.asarray(edges, dtype=np.float64), low, high)
        norm = _range_probability(model, params, low, high)
        return np.diff(model.cdf(clipped, params)) / norm

    def to_dict(self) -> dict[str, Any]:
        """Return the fit as JSON-ready plain types."""
        return {
            "variable": self.variable,
            "model": self.model,
            "values": dict(self.values),
            "errors": dict(self.errors),
            "covariance": [list(row) for row in self.covariance],
            "fit_range": list(self.fit_range),
            "status": dict(self.status),
            "n_events": self.n_events,
            "sum_weights": self.sum_weights,
        }


@dataclass(frozen=True)
class SignalShape:
    """Fitted signal shape of one sample in M_3mu and, in 2D, Delta E.

    Attributes:
        mass: fit of M_3mu.
        delta_e: fit of Delta E, or None for a 1D (mass-only) analysis.
        center: center of the signal core (GeV), shape (1,) or (2,).
        covariance: covariance of the signal core (GeV^2), shape (1, 1) or
            (2, 2). Both come from an iteratively trimmed estimate (see
            :func:`core_moments`), so the low tails do not inflate them.
        correlation: correlation coefficient of M_3mu and Delta E in the core
            (0.0 in 1D).
        sample: name of the fitted sample, used in messages.
        core_radius: Mahalanobis radius used to trim the tails.
    """

    mass: AxisFit
    delta_e: AxisFit | None
    center: FloatArray
    covariance: FloatArray
    correlation: float
    sample: str = "signal"
    core_radius: float = 3.0

    @property
    def ndim(self) -> int:
        """Number of fitted axes: 1 (M_3mu) or 2 (M_3mu, Delta E)."""
        return 1 if self.delta_e is None else 2

    def to_dict(self) -> dict[str, Any]:
        """Return the shape as JSON-ready plain types."""
        return {
            "sample": self.sample,
            "ndim": self.ndim,
            "mass": self.mass.to_dict(),
            "delta_e": None if self.delta_e is None else self.delta_e.to_dict(),
            "center": self.center.tolist(),
            "covariance": self.covariance.tolist(),
            "correlation": self.correlation,
            "core_radius": self.core_radius,
        }


# ---------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------


def _range_probability(
    model: _AxisModel, params: Sequence[float], low: float, high: float
) -> float:
    edges = model.cdf(np.array([low, high]), params)
    return float(edges[1] - edges[0])


def _fit_axis(
    x: FloatArray,
    w: FloatArray,
    *,
    variable: str,
    model_name: str,
    fit_range: tuple[float, float] | None,
    sample: str,
    ncall: int | None,
) -> AxisFit:
    model = _axis_model(model_name)
    if fit_range is None:
        low, high = float(x.min()), float(x.max())
    else:
        low, high = _check_interval(fit_range, f"{variable} fit range")
    keep = (x >= low) & (x <= high)
    x, w = x[keep], w[keep]
    if x.size < MIN_FIT_EVENTS:
        raise FitError(
            f"cannot fit {variable} of sample {sample!r}: {x.size} candidates in "
            f"[{low}, {high}] GeV, at least {MIN_FIT_EVENTS} are needed; loosen "
            "the selection or widen the fit range"
        )
    if np.any(w < 0):
        raise FitError(
            f"cannot fit {variable} of sample {sample!r}: {int((w < 0).sum())} "
            "negative weights; an unbinned likelihood needs weights >= 0"
        )

    # Scaling weights by sum(w)/sum(w^2) makes the HESSE errors those of the
    # effective number of events (the usual first-order weighted-fit correction).
    scaled = w * (w.sum() / np.sum(w**2))

    def nll(*params: float) -> float:
        norm = _range_probability(model, params, low, high)
        if not norm > 0.0:
            return 1e30
        return float(
            -np.sum(scaled * model.logpdf(x, params)) + scaled.sum() * math.log(norm)
        )

    start = model.start(x, w)
    minuit = Minuit(nll, *[start[p] for p in model.parameters], name=model.parameters)
    minuit.errordef = Minuit.LIKELIHOOD
    for name, limit in model.limits(low, high).items():
        minuit.limits[name] = limit
    minuit.migrad(ncall=ncall)
    if minuit.valid:
        minuit.hesse()

    fmin = minuit.fmin
    status = {
        "valid": bool(minuit.valid),
        "edm": float(fmin.edm),
        "nfcn": int(fmin.nfcn),
        "min_nll": float(fmin.fval),
        "accurate_covariance": bool(fmin.has_accurate_covar),
        "parameters_at_limit": bool(fmin.has_parameters_at_limit),
        "call_limit_reached": bool(fmin.has_reached_call_limit),
        "edm_above_max": bool(fmin.is_above_max_edm),
    }
    if not minuit.valid:
        raise FitError(
            f"{model_name} fit of {variable} in sample {sample!r} did not converge: "
            f"edm={fmin.edm:.3g}, nfcn={fmin.nfcn}, call limit reached="
            f"{fmin.has_reached_call_limit}, edm above max={fmin.is_above_max_edm}, "
            f"parameters at limit={fmin.has_parameters_at_limit}; check the fit "
            f"range [{low}, {high}] GeV or try the other model"
        )
    if not fmin.has_accurate_covar or fmin.has_parameters_at_limit:
        log.warning(
            "%s fit of %s in sample %s: accurate covariance=%s, parameters at "
            "limit=%s; treat the errors with care",
            model_name,
            variable,
            sample,
            fmin.has_accurate_covar,
            fmin.has_parameters_at_limit,
        )

    values = {p: float(minuit.values[p]) for p in model.parameters}
    errors = {p: float(minuit.errors[p]) for p in model.parameters}
    covariance = np.asarray(minuit.covariance, dtype=np.float64).tolist()
    log.debug(
        "%s fit of %s in %s: %s +- %s", model_name, variable, sample, values, errors
    )
    return AxisFit(
        variable=variable,
        model=model_name,
        values=values,
        errors=errors,
        covariance=covariance,
        fit_range=(low, high),
        status=status,
        n_events=int(x.size),
        sum_weights=float(w.sum()),
    )


def core_moments(
    points: ArrayLike,
    weights: ArrayLike | None,
    start_center: ArrayLike,
    start_covariance: ArrayLike,
    *,
    radius: float = 3.0,
    max_iterations: int = 200,
    tolerance: float = 1e-7,
) -> tuple[FloatArray, FloatArray]:
    """Estimate the center and covariance of a Gaussian core under non-Gaussian tails.

    Iterates: keep the candidates within Mahalanobis distance ``radius`` of
    the current center under the current covariance, take their weighted mean
    and second moment, and divide the moment by the fraction of a Gaussian's
    variance that survives that cut. For ``d`` dimensions the fraction is
    ``F_{d+2}(r^2) / F_d(r^2)`` with ``F_k`` the chi-square CDF, so a pure
    Gaussian returns its own mean and covariance while tails beyond the radius
    barely move either.

    Args:
        points: candidates, shape (n, d) with d = 1 or 2, in GeV.
        weights: per-candidate weights, or None for unit weights.
        start_center: starting center (GeV), shape (d,); the fitted peaks.
        start_covariance: starting covariance, shape (d, d); a diagonal of the
            fitted core widths squared.
        radius: Mahalanobis radius of the core, in standard deviations.
        max_iterations: iteration limit.
        tolerance: relative change of the covariance at which to stop.

    Returns:
        The core center (GeV), shape (d,), and covariance (GeV^2), shape (d, d).

    Raises:
        FitError: fewer than 10 candidates inside the core, or the covariance
            became singular.
    """
    data = np.asarray(points, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    dim = data.shape[1]
    w = resolve_weights(weights, data.shape[0], "weights")
    mean = np.asarray(start_center, dtype=np.float64).reshape(dim)
    cov = np.asarray(start_covariance, dtype=np.float64).reshape(dim, dim)
    k2 = radius**2
    kept_fraction = stats.chi2.cdf(k2, dim + 2) / stats.chi2.cdf(k2, dim)
    change = math.inf

    for _ in range(max_iterations):
        try:
            inverse = np.linalg.inv(cov)
        except np.linalg.LinAlgError as err:
            raise FitError(f"core covariance became singular: {cov.tolist()}") from err
        offsets = data - mean
        distance2 = np.einsum("ni,ij,nj->n", offsets, inverse, offsets)
        inside = distance2 <= k2
        if inside.sum() < 10:
            raise FitError(
                f"only {int(inside.sum())} candidates within {radius} sigma of the "
                f"signal core at {mean.tolist()} GeV; at least 10 are needed"
            )
        wi = w[inside]
        mean = np.average(data[inside], axis=0, weights=wi)
        centred = data[inside] - mean
        moment = np.einsum("n,ni,nj->ij", wi, centred, centred) / wi.sum()
        updated = moment / kept_fraction
        change = float(np.max(np.abs(updated - cov)) / np.max(np.abs(updated)))
        cov = updated
        if change < tolerance:
            break
    else:
        log.warning(
            "core covariance did not settle within %d iterations; last relative "
            "change %.2g",
            max_iterations,
            change,
        )
    return mean, cov


def fit_signal_shape(
    mass: ArrayLike,
    delta_e: ArrayLike | None,
    weights: ArrayLike | None = None,
    *,
    model: ShapeModel = "bifurcated_gaussian",
    sample: str = "signal",
    mass_range: tuple[float, float] | None = None,
    delta_e_range: tuple[float, float] | None = None,
    core_radius: float = 3.0,
    ncall: int | None = None,
) -> SignalShape:
    """Fit the signal shape per axis and estimate the core covariance of the pair.

    Each axis gets an unbinned maximum-likelihood fit with iminuit (MIGRAD then
    HESSE) of ``model``, normalised over its fit range. Weighted fits scale the
    weights by sum(w)/sum(w^2), so the errors are those of the effective number
    of events. The center and covariance of (M_3mu, Delta E) come from
    :func:`core_moments`, which starts from the fitted peaks and core widths.
    The center is the core's mean, which can differ from a bifurcated
    Gaussian's ``mu`` by a fraction of the width.

    Args:
        mass: M_3mu of the signal candidates (GeV).
        delta_e: Delta E of the same candidates (GeV), or None for a 1D fit.
        weights: per-candidate weights (>= 0), or None for unit weights.
        model: ``"bifurcated_gaussian"`` (peak, left and right widths) or
            ``"crystal_ball"`` (peak, width, tail start ``alpha``, tail power
            ``n``, tail on the low side).
        sample: sample name used in log and error messages.
        mass_range: fit range of M_3mu (GeV); None uses the data's extent.
        delta_e_range: fit range of Delta E (GeV); None uses the data's extent.
        core_radius: Mahalanobis radius (standard deviations) of the core that
            sets the covariance.
        ncall: MIGRAD call limit; None lets iminuit choose.

    Returns:
        The fitted :class:`SignalShape`.

    Raises:
        FitError: a fit did not converge (the message names the sample, the
            axis and the Minuit status), or too few candidates to fit.
        ConfigError: invalid inputs (non-finite values, unknown model,
            mismatched lengths).
    """
    _axis_model(model)
    m = as_float_array(mass, "mass")
    de = None if delta_e is None else as_float_array(delta_e, "delta_e")
    _check_same_length(m, de)
    w = resolve_weights(weights, m.size, "weights")
    if core_radius <= 0:
        raise ConfigError(
            f"core_radius must be > 0 standard deviations, got {core_radius}"
        )

    mass_fit = _fit_axis(
        m,
        w,
        variable="mass",
        model_name=model,
        fit_range=mass_range,
        sample=sample,
        ncall=ncall,
    )
    delta_e_fit = None
    if de is not None:
        delta_e_fit = _fit_axis(
            de,
            w,
            variable="delta_e",
            model_name=model,
            fit_range=delta_e_range,
            sample=sample,
            ncall=ncall,
        )

    fits = [mass_fit] if delta_e_fit is None else [mass_fit, delta_e_fit]
    center = np.array([f.peak for f in fits])
    start = np.diag([f.core_sigma**2 for f in fits])
    points = m[:, None] if de is None else np.column_stack([m, de])
    center, cov = core_moments(points, w, center, start, radius=core_radius)
    correlation = 0.0
    if de is not None:
        correlation = float(cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1]))

    log.info(
        "signal shape of %s (%s): M peak %.5f GeV, core sigma %.4f GeV%s",
        sample,
        model,
        mass_fit.peak,
        math.sqrt(cov[0, 0]),
        ""
        if delta_e_fit is None
        else f"; Delta E peak {delta_e_fit.peak:.4f} GeV, core sigma "
        f"{math.sqrt(cov[1, 1]):.4f} GeV, correlation {correlation:.3f}",
    )
    return SignalShape(
        mass=mass_fit,
        delta_e=delta_e_fit,
        center=center,
        covariance=cov,
        correlation=correlation,
        sample=sample,
        core_radius=core_radius,
    )


# ---------------------------------------------------------------------------
# Signal regions
# ---------------------------------------------------------------------------


@runtime_checkable
class SignalRegion(Protocol):
    """A signal region in M_3mu (1D) or in the (M_3mu, Delta E) plane (2D)."""

    @property
    def ndim(self) -> int:
        """Number of axes the region cuts on."""
        ...

    def contains(self, mass: ArrayLike, delta_e: ArrayLike | None = None) -> BoolArray:
        """Return a mask of the candidates inside the region."""
        ...

    def bounding_box(self) -> tuple[tuple[float, float], tuple[float, float] | None]:
        """Return the (M, Delta E) extent of the region in GeV."""
        ...

    def quadrature(
        self, n_points: int = 48
    ) -> tuple[FloatArray, FloatArray | None, FloatArray]:
        """Return nodes and weights that integrate a smooth density over the region."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Return the region as JSON-ready plain types."""
        ...


@dataclass(frozen=True)
class EllipseRegion:
    """Elliptical signal region in the (M_3mu, Delta E) plane.

    Attributes:
        center: (M, Delta E) of the center in GeV.
        semi_axes: semi-axes (GeV) along the major and the minor principal axis.
        angle: angle (radians) of the major axis from the M_3mu axis, counter-
            clockwise, in (-pi/2, pi/2].
        n_sigma: size in standard deviations along the principal axes, or None
            when the ellipse was given directly.
    """

    center: tuple[float, float]
    semi_axes: tuple[float, float]
    angle: float
    n_sigma: float | None = None

    def __post_init__(self) -> None:
        if not all(
            math.isfinite(v) for v in (*self.center, *self.semi_axes, self.angle)
        ):
            raise ConfigError(f"ellipse values must be finite, got {self!r}")
        if min(self.semi_axes) <= 0:
            raise ConfigError(
                f"ellipse semi-axes must be > 0 GeV, got {self.semi_axes}"
            )

    @classmethod
    def from_covariance(
        cls, center: ArrayLike, covariance: ArrayLike, n_sigma: float
    ) -> EllipseRegion:
        """Build the ellipse of ``n_sigma`` standard deviations of a 2D covariance.

        The principal axes are the eigenvectors of ``covariance``; the semi-axes
        are ``n_sigma * sqrt(eigenvalue)``. The ellipse is the set of points with
        Mahalanobis distance at most ``n_sigma``, so it contains a fraction
        ``1 - exp(-n_sigma^2 / 2)`` of a 2D Gaussian.

        Raises:
            ConfigError: ``n_sigma`` <= 0 or the covariance is not positive
                definite.
        """
        _check_n_sigma(n_sigma)
        cov = np.asarray(covariance, dtype=np.float64).reshape(2, 2)
        eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (cov + cov.T))
        if eigenvalues[0] <= 0:
            raise ConfigError(
                f"signal covariance {cov.tolist()} GeV^2 is not positive definite "
                f"(eigenvalues {eigenvalues.tolist()}); refit the signal shape"
            )
        major = eigenvectors[:, 1]
        angle = math.atan2(major[1], major[0])
        if angle <= -math.pi / 2:
            angle += math.pi
        elif angle > math.pi / 2:
            angle -= math.pi
        semi = n_sigma * np.sqrt(eigenvalues[::-1])
        c = np.asarray(center, dtype=np.float64).reshape(2)
        return cls(
            center=(float(c[0]), float(c[1])),
            semi_axes=(float(semi[0]), float(semi[1])),
            angle=float(angle),
            n_sigma=float(n_sigma),
        )

    @property
    def ndim(self) -> int:
        """Number of axes the region cuts on: 2."""
        return 2

    @property
    def area(self) -> float:
        """Area of the ellipse in GeV^2."""
        return math.pi * self.semi_axes[0] * self.semi_axes[1]

    def _to_principal(
        self, mass: FloatArray, delta_e: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        dm, dde = mass - self.center[0], delta_e - self.center[1]
        return cos * dm + sin * dde, -sin * dm + cos * dde

    def contains(self, mass: ArrayLike, delta_e: ArrayLike | None = None) -> BoolArray:
        """Return True for candidates inside the ellipse (boundary included).

        Raises:
            ConfigError: ``delta_e`` is None; a 2D region needs both axes.
        """
        if delta_e is None:
            raise ConfigError(
                "the elliptical signal region needs delta_e as well as mass; use an "
                "IntervalRegion for a mass-only analysis"
            )
        m = np.asarray(mass, dtype=np.float64)
        de = np.asarray(delta_e, dtype=np.float64)
        u, v = self._to_principal(m, de)
        return np.asarray(
            (u / self.semi_axes[0]) ** 2 + (v / self.semi_axes[1]) ** 2 <= 1.0
        )

    def boundary(self, n_points: int = 200) -> tuple[FloatArray, FloatArray]:
        """Return ``n_points`` (M, Delta E) points on the ellipse, closed, in GeV."""
        phi = np.linspace(0.0, 2.0 * math.pi, n_points)
        return self._from_unit(np.cos(phi), np.sin(phi))

    def _from_unit(self, x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        u, v = self.semi_axes[0] * x, self.semi_axes[1] * y
        return self.center[0] + cos * u - sin * v, self.center[1] + sin * u + cos * v

    def bounding_box(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Return the (M, Delta E) extent of the ellipse in GeV."""
        a, b = self.semi_axes
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        half_m = math.hypot(a * cos, b * sin)
        half_de = math.hypot(a * sin, b * cos)
        return (
            (self.center[0] - half_m, self.center[0] + half_m),
            (self.center[1] - half_de, self.center[1] + half_de),
        )

    def quadrature(
        self, n_points: int = 48
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Return nodes and weights integrating a smooth density over the ellipse.

        Polar coordinates on the unit disc mapped onto the ellipse: Gauss-Legendre
        in the radius and the trapezoid rule in the angle, which converges
        exponentially for smooth periodic integrands. ``sum(w * f(m, de))``
        approximates the integral of ``f`` over the ellipse.
        """
        nodes, gl_weights = gauss_legendre(n_points)
        r = 0.5 * (nodes + 1.0)
        r_weights = 0.5 * gl_weights
        n_angle = 2 * n_points
        phi = 2.0 * math.pi * np.arange(n_angle) / n_angle
        rr, pp = np.meshgrid(r, phi, indexing="ij")
        m, de = self._from_unit((rr * np.cos(pp)).ravel(), (rr * np.sin(pp)).ravel())
        jacobian = self.semi_axes[0] * self.semi_axes[1]
        weights = (
            r_weights[:, None] * r[:, None] * np.full(n_angle, 2.0 * math.pi / n_angle)
        )
        return m, de, (weights * jacobian).ravel()

    def to_dict(self) -> dict[str, Any]:
        """Return the ellipse as JSON-ready plain types (``kind`` = ``"ellipse"``)."""
        return {
            "kind": "ellipse",
            "center": list(self.center),
            "semi_axes": list(self.semi_axes),
            "angle": self.angle,
            "n_sigma": self.n_sigma,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EllipseRegion:
        """Rebuild an ellipse from :meth:`to_dict` output.

        Raises:
            ConfigError: a key is missing or ``kind`` is not ``"ellipse"``.
        """
        _check_kind(data, "ellipse", ("center", "semi_axes", "angle"))
        return cls(
            center=(float(data["center"][0]), float(data["center"][1])),
            semi_axes=(float(data["semi_axes"][0]), float(data["semi_axes"][1])),
            angle=float(data["angle"]),
            n_sigma=None if data.get("n_sigma") is None else float(data["n_sigma"]),
        )


@dataclass(frozen=True)
class IntervalRegion:
    """Signal region of a 1D analysis: an interval in M_3mu (GeV).

    Attributes:
        low: lower edge in GeV (included).
        high: upper edge in GeV (included).
        n_sigma: half-width in standard deviations, or None when the interval
            was given directly.
    """

    low: float
    high: float
    n_sigma: float | None = None

    def __post_init__(self) -> None:
        _check_interval((self.low, self.high), "signal region interval")

    @property
    def ndim(self) -> int:
        """Number of axes the region cuts on: 1."""
        return 1

    @property
    def width(self) -> float:
        """Width of the interval in GeV."""
        return self.high - self.low

    def contains(self, mass: ArrayLike, delta_e: ArrayLike | None = None) -> BoolArray:
        """Return True for candidates with low <= M <= high; ``delta_e`` is ignored."""
        m = np.asarray(mass, dtype=np.float64)
        return np.asarray((m >= self.low) & (m <= self.high))

    def bounding_box(self) -> tuple[tuple[float, float], None]:
        """Return ((low, high), None)."""
        return (self.low, self.high), None

    def quadrature(self, n_points: int = 48) -> tuple[FloatArray, None, FloatArray]:
        """Return Gauss-Legendre nodes and weights on [low, high]."""
        nodes, weights = gauss_legendre(n_points)
        half = 0.5 * self.width
        return self.low + half * (nodes + 1.0), None, half * weights

    def to_dict(self) -> dict[str, Any]:
        """Return the interval as JSON-ready plain types (``kind`` = ``"interval"``)."""
        return {
            "kind": "interval",
            "low": self.low,
            "high": self.high,
            "n_sigma": self.n_sigma,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntervalRegion:
        """Rebuild an interval from :meth:`to_dict` output.

        Raises:
            ConfigError: a key is missing or ``kind`` is not ``"interval"``.
        """
        _check_kind(data, "interval", ("low", "high"))
        return cls(
            low=float(data["low"]),
            high=float(data["high"]),
            n_sigma=None if data.get("n_sigma") is None else float(data["n_sigma"]),
        )


@functools.lru_cache(maxsize=16)
def gauss_legendre(n_points: int) -> tuple[FloatArray, FloatArray]:
    """Return the Gauss-Legendre nodes and weights on [-1, 1], cached per order."""
    nodes, weights = np.polynomial.legendre.leggauss(n_points)
    nodes.flags.writeable = False
    weights.flags.writeable = False
    return nodes, weights


def _check_kind(data: Mapping[str, Any], kind: str, keys: Sequence[str]) -> None:
    if data.get("kind") != kind:
        raise ConfigError(
            f"expected a region of kind {kind!r}, got kind {data.get('kind')!r}"
        )
    missing = [k for k in keys if k not in data]
    if missing:
        raise ConfigError(
            f"{kind} region is missing {', '.join(missing)}; found keys "
            f"{sorted(data)}.{did_you_mean(missing[0], data)}"
        )


def _check_n_sigma(n_sigma: float) -> None:
    if not (math.isfinite(n_sigma) and n_sigma > 0):
        raise ConfigError(f"n_sigma must be a finite number > 0, got {n_sigma}")


def region_from_dict(data: Mapping[str, Any]) -> EllipseRegion | IntervalRegion:
    """Rebuild an ellipse or an interval from its ``to_dict`` output.

    Raises:
        ConfigError: ``kind`` is neither ``"ellipse"`` nor ``"interval"``.
    """
    kind = data.get("kind")
    if kind == "ellipse":
        return EllipseRegion.from_dict(data)
    if kind == "interval":
        return IntervalRegion.from_dict(data)
    raise ConfigError(
        f"unknown signal region kind {kind!r}; expected 'ellipse' or 'interval'."
        f"{did_you_mean(str(kind), ('ellipse', 'interval'))}"
    )


def make_signal_region(
    shape: SignalShape, n_sigma: float
) -> EllipseRegion | IntervalRegion:
    """Build the signal region of ``n_sigma`` standard deviations around the peak.

    In 2D, the ellipse's axes come from the PCA of the core covariance: semi-
    axes ``n_sigma * sqrt(eigenvalue)``, rotated by the angle of the major
    eigenvector. In 1D, the interval is ``peak +- n_sigma * sigma_core``.

    Raises:
        ConfigError: ``n_sigma`` <= 0 or not finite.
    """
    _check_n_sigma(n_sigma)
    if shape.ndim == 1:
        half = n_sigma * math.sqrt(float(shape.covariance[0, 0]))
        center = float(shape.center[0])
        return IntervalRegion(center - half, center + half, n_sigma=float(n_sigma))
    return EllipseRegion.from_covariance(shape.center, shape.covariance, n_sigma)


# ---------------------------------------------------------------------------
# Sidebands
# ---------------------------------------------------------------------------

Rectangle = tuple[tuple[float, float], tuple[float, float] | None]


@dataclass(frozen=True)
class Sidebands:
    """Sideband definition: the analysis window minus a blinded box around the region.

    The blinded box is the bounding box of the signal region, widened by
    ``mass_gap`` and ``delta_e_gap`` on each side. The sidebands are the rest
    of the window: bands in M_3mu on both sides of the box (over the full
    Delta E range) and bands in Delta E above and below it. In 1D only the mass
    bands exist and Delta E is ignored.

    Attributes:
        mass_range: analysis window in M_3mu (GeV).
        delta_e_range: analysis window in Delta E (GeV); ignored in 1D.
        mass_gap: extra blinded width (GeV) on each side of the region in M_3mu.
        delta_e_gap: extra blinded width (GeV) on each side in Delta E.
    """

    mass_range: tuple[float, float] = (1.3, 2.2)
    delta_e_range: tuple[float, float] | None = (-1.0, 0.5)
    mass_gap: float = 0.0
    delta_e_gap: float = 0.0

    def __post_init__(self) -> None:
        _check_interval(self.mass_range, "sideband mass_range")
        if self.delta_e_range is not None:
            _check_interval(self.delta_e_range, "sideband delta_e_range")
        for name in ("mass_gap", "delta_e_gap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"sideband {name} must be >= 0 GeV, got {value}")

    def blind_box(self, region: SignalRegion) -> Rectangle:
        """Return the blinded (M, Delta E) box around ``region``, in GeV.

        Raises:
            ConfigError: the box does not fit inside the analysis window, which
                would leave a sideband on one side only or none at all.
        """
        (m_low, m_high), de_box = region.bounding_box()
        box_m = (m_low - self.mass_gap, m_high + self.mass_gap)
        _check_inside(box_m, self.mass_range, "M_3mu")
        if region.ndim == 1:
            return box_m, None
        if self.delta_e_range is None:
            raise ConfigError(
                "sidebands of a 2D signal region need delta_e_range; set it, for "
                "example (-1.0, 0.5) GeV"
            )
        assert de_box is not None
        box_de = (de_box[0] - self.delta_e_gap, de_box[1] + self.delta_e_gap)
        _check_inside(box_de, self.delta_e_range, "Delta E")
        return box_m, box_de

    def bands(self, region: SignalRegion) -> list[Rectangle]:
        """Return the sideband rectangles ((M low, high), (Delta E low, high)) in GeV.

        In 2D: left and right bands over the full Delta E range, then the bands
        below and above the box within its M range. In 1D: the two M bands with
        None for Delta E.
        """
        box_m, box_de = self.blind_box(region)
        m_low, m_high = self.mass_range
        if box_de is None or self.delta_e_range is None:
            return [((m_low, box_m[0]), None), ((box_m[1], m_high), None)]
        de_low, de_high = self.delta_e_range
        return [
            ((m_low, box_m[0]), (de_low, de_high)),
            ((box_m[1], m_high), (de_low, de_high)),
            (box_m, (de_low, box_de[0])),
            (box_m, (box_de[1], de_high)),
        ]

    def in_window(
        self, mass: ArrayLike, delta_e: ArrayLike | None, region: SignalRegion
    ) -> BoolArray:
        """Return True for candidates inside the analysis window."""
        m = np.asarray(mass, dtype=np.float64)
        inside = (m >= self.mass_range[0]) & (m <= self.mass_range[1])
        if region.ndim == 2:
            de = _need_delta_e(delta_e)
            assert self.delta_e_range is not None
            inside &= (de >= self.delta_e_range[0]) & (de <= self.delta_e_range[1])
        return np.asarray(inside)

    def mask(
        self, mass: ArrayLike, delta_e: ArrayLike | None, region: SignalRegion
    ) -> BoolArray:
        """Return True for candidates in the sidebands of ``region``.

        A candidate is in the sidebands when it is inside the analysis window and
        outside the blinded box. Such candidates are never inside the region.

        Raises:
            ConfigError: the blinded box does not fit the window, or a 2D region
                and ``delta_e`` is None.
        """
        box_m, box_de = self.blind_box(region)
        m = np.asarray(mass, dtype=np.float64)
        in_box = (m >= box_m[0]) & (m <= box_m[1])
        if box_de is not None:
            de = _need_delta_e(delta_e)
            in_box &= (de >= box_de[0]) & (de <= box_de[1])
        return np.asarray(self.in_window(mass, delta_e, region) & ~in_box)

    def to_dict(self) -> dict[str, Any]:
        """Return the definition as JSON-ready plain types."""
        return {
            "mass_range": list(self.mass_range),
            "delta_e_range": None
            if self.delta_e_range is None
            else list(self.delta_e_range),
            "mass_gap": self.mass_gap,
            "delta_e_gap": self.delta_e_gap,
        }


def _need_delta_e(delta_e: ArrayLike | None) -> FloatArray:
    if delta_e is None:
        raise ConfigError("a 2D signal region needs delta_e values; got None")
    return np.asarray(delta_e, dtype=np.float64)


def _check_inside(
    box: tuple[float, float], window: tuple[float, float], axis: str
) -> None:
    if box[0] <= window[0] or box[1] >= window[1]:
        raise ConfigError(
            f"blinded {axis} range [{box[0]:.4f}, {box[1]:.4f}] GeV does not fit "
            f"inside the sideband window [{window[0]}, {window[1]}] GeV; shrink "
            "the signal region or the gap, or widen the window"
        )


# ---------------------------------------------------------------------------
# Plots (implemented in analysis.region_plots, which imports matplotlib)
# ---------------------------------------------------------------------------


def plot_signal_fit(
    shape: SignalShape,
    mass: ArrayLike,
    delta_e: ArrayLike | None,
    weights: ArrayLike | None,
    path: str | Path,
) -> Path:
    """Plot data, fitted model and pulls for each axis; return the written path."""
    from analysis.region_plots import plot_signal_fit as _plot

    return _plot(shape, mass, delta_e, weights, path)


def plot_signal_region(
    region: SignalRegion,
    sidebands: Sidebands | None,
    signal: tuple[ArrayLike, ArrayLike | None],
    background: tuple[ArrayLike, ArrayLike | None] | None,
    path: str | Path,
) -> Path:
    """Plot the (M, Delta E) plane with region and sidebands; in 1D the M histogram."""
    from analysis.region_plots import plot_signal_region as _plot

    return _plot(region, sidebands, signal, background, path)
