"""Batched maximum-likelihood fits of a binned counting model.

Fits every dataset of a set (observed data or thousands of toys) at once with
a projected Newton method in numpy, and evaluates the test statistic q~_mu
(arXiv:1007.1727, eq. 16) exactly as pyhf's ``qmu_tilde`` defines it.

The model is the one :func:`analysis.limit.build_workspace` writes as pyhf
JSON, for bins ``b``::

    nu_b = mu * s_b * (1 + sum_j beta_j v_jb) * prod_k kappa_k**alpha_k
           + b_b * gamma_b

with Gaussian constraints on ``alpha_k`` (pyhf ``normsys`` with
``hi = kappa``, ``lo = 1 / kappa``), on ``beta_j`` (``histosys``, symmetric
relative variations ``v_j``) and a Poisson constraint with ``tau_b =
(b_b / sigma_b)**2`` on ``gamma_b`` (``shapesys``).

Two exact reductions keep the fits small. Every ``alpha_k`` scales all bins by
the same factor, so the likelihood depends on them only through ``sum_k alpha_k
ln kappa_k``, and profiling the others out leaves one Gaussian parameter
``theta`` with log-width ``sqrt(sum_k ln(kappa_k)**2)``. Each ``gamma_b`` is
profiled in closed form as the root of a quadratic. A fit then has at most
``2 + n_histosys`` free parameters.

NOTE: pyhf bounds every ``alpha_k`` to [-5, 5]; here the combined ``theta`` is
bounded to [-5, 5] instead. The two differ only for toys with pulls near 5
sigma, and agree exactly with a single normsys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

# pyhf's default bounds for normsys, histosys and shapesys parameters.
PULL_BOUND = 5.0
GAMMA_BOUNDS = (1e-10, 10.0)

_MAX_ITERATIONS = 100
_CONVERGED_DECREASE = 1e-10  # predicted decrease of -ln L at which a fit stops
_MAX_HALVINGS = 20


@dataclass(frozen=True)
class CountingModel:
    """Expected yields and constraints of a binned counting model.

    Attributes:
        signal: expected signal events per bin at ``mu = 1``, shape (n_bins,).
        background: expected background events per bin, shape (n_bins,).
        shapesys_tau: ``(b / sigma_b)**2`` per bin, the scale of the Poisson
            constraint on the background; 0 where the background is known
            exactly.
        lognormal_log_kappa: ``ln(kappa_k)`` of every log-normal (normsys)
            uncertainty on the signal, shape (n_lognormal,).
        histosys_variations: relative 1-sigma signal variations per bin, shape
            (n_histosys, n_bins).
        mu_upper: upper bound of the POI in every fit.
        lognormal_names: pyhf modifier names of the normsys uncertainties.
        histosys_names: pyhf modifier names of the histosys variations.
        shapesys_name: pyhf modifier name of the background uncertainty.
    """

    signal: FloatArray
    background: FloatArray
    shapesys_tau: FloatArray
    lognormal_log_kappa: FloatArray
    histosys_variations: FloatArray
    mu_upper: float
    lognormal_names: tuple[str, ...] = ()
    histosys_names: tuple[str, ...] = ()
    shapesys_name: str = "background_uncertainty"

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return int(self.signal.shape[0])

    @property
    def n_lognormal(self) -> int:
        """Number of log-normal (normsys) signal uncertainties."""
        return int(self.lognormal_log_kappa.shape[0])

    @property
    def n_histosys(self) -> int:
        """Number of histosys signal variations."""
        return int(self.histosys_variations.shape[0])

    @cached_property
    def lognormal_width(self) -> float:
        """Log-width of the combined log-normal factor, ``sqrt(sum ln(kappa)**2)``."""
        return float(np.sqrt(np.sum(self.lognormal_log_kappa**2)))


@dataclass(frozen=True)
class ToyData:
    """Observed or pseudo-data: counts and auxiliary measurements per toy.

    Attributes:
        main: event counts, shape (n_toys, n_bins).
        lognormal_aux: auxiliary data of the normsys parameters, (n_toys, K).
        histosys_aux: auxiliary data of the histosys parameters, (n_toys, J).
        shapesys_aux: auxiliary counts of the shapesys constraints, (n_toys,
            n_bins); ignored in bins whose ``shapesys_tau`` is 0.
    """

    main: FloatArray
    lognormal_aux: FloatArray
    histosys_aux: FloatArray
    shapesys_aux: FloatArray

    @property
    def n_toys(self) -> int:
        """Number of datasets."""
        return int(self.main.shape[0])

    @classmethod
    def observed(cls, model: CountingModel, counts: FloatArray) -> ToyData:
        """Build one dataset of observed ``counts`` with nominal auxiliary data."""
        return cls(
            main=np.asarray(counts, dtype=float).reshape(1, model.n_bins),
            lognormal_aux=np.zeros((1, model.n_lognormal)),
            histosys_aux=np.zeros((1, model.n_histosys)),
            shapesys_aux=model.shapesys_tau.reshape(1, model.n_bins).copy(),
        )

    def take(self, index: NDArray[np.intp]) -> ToyData:
        """Return the datasets at ``index``."""
        return ToyData(
            self.main[index],
            self.lognormal_aux[index],
            self.histosys_aux[index],
            self.shapesys_aux[index],
        )


@dataclass(frozen=True)
class FitResult:
    """Best-fit parameters and ``-ln L`` of every dataset of one fit.

    ``theta`` is the combined log-normal pull in units of its width (zeros
    when the model has no normsys), ``beta`` the histosys pulls (n_toys, J),
    ``gamma`` the profiled shapesys factors (n_toys, n_bins). ``nll`` omits
    terms that depend on the data only, so only differences between fits of
    the same data are meaningful.
    """

    mu: FloatArray
    theta: FloatArray
    beta: FloatArray
    gamma: FloatArray
    nll: FloatArray
    converged: NDArray[np.bool_]


# ---------------------------------------------------------------------------
# likelihood


@dataclass(frozen=True)
class _Reduced:
    # Data with the normsys auxiliary values folded into the one theta_aux.
    main: FloatArray
    theta_aux: FloatArray
    beta_aux: FloatArray
    shapesys_aux: FloatArray


def _reduce(model: CountingModel, data: ToyData) -> _Reduced:
    width = model.lognormal_width
    if model.n_lognormal and width > 0:
        theta_aux = data.lognormal_aux @ model.lognormal_log_kappa / width
    else:
        theta_aux = np.zeros(data.n_toys)
    return _Reduced(data.main, theta_aux, data.histosys_aux, data.shapesys_aux)


def _signal(
    model: CountingModel, theta: FloatArray, beta: FloatArray
) -> tuple[FloatArray, FloatArray]:
    # Signal per bin at mu = 1, (n, n_bins), and the log-normal factor, (n,).
    factor = np.exp(model.lognormal_width * theta)
    shape = 1.0 + beta @ model.histosys_variations
    return model.signal * shape * factor[:, None], factor


def _profile_gamma(
    model: CountingModel, signal_yield: FloatArray, data: _Reduced
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Profile the shapesys factors for a fixed signal yield ``t`` per bin.

    Returns gamma, (n, n_bins), and a mask of where it lies inside its bounds.
    Setting d(-ln L)/d(gamma) to zero for ``nu = t + b gamma`` and the
    constraint Poisson(m | tau gamma) gives
    ``b (b + tau) gamma**2 + ((b + tau) t - b (n + m)) gamma - m t = 0``,
    whose non-negative root is the maximum.
    """
    tau = model.shapesys_tau
    gamma = np.ones_like(signal_yield)
    interior = np.zeros(signal_yield.shape, dtype=bool)
    bins = tau > 0
    if not np.any(bins):
        return gamma, interior

    b = model.background[bins]
    t = signal_yield[:, bins]
    n = data.main[:, bins]
    m = data.shapesys_aux[:, bins]
    a2 = b * (b + tau[bins])
    a1 = (b + tau[bins]) * t - b * (n + m)
    a0 = -m * t
    root = np.sqrt(np.maximum(a1 * a1 - 4.0 * a2 * a0, 0.0))
    # The two algebraic forms of the root avoid cancellation for either sign of a1.
    with np.errstate(divide="ignore", invalid="ignore"):
        positive_a1 = np.where(a1 + root > 0, -2.0 * a0 / (a1 + root), 0.0)
    solution = np.where(a1 > 0, positive_a1, (root - a1) / (2.0 * a2))
    clipped = np.clip(solution, *GAMMA_BOUNDS)
    gamma[:, bins] = clipped
    interior[:, bins] = clipped == solution
    return gamma, interior


def expected_yields(model: CountingModel, result: FitResult) -> FloatArray:
    """Return the expected events per bin at fitted parameters, (n_toys, n_bins)."""
    signal, _ = _signal(model, result.theta, result.beta)
    return result.mu[:, None] * signal + model.background * result.gamma


@dataclass(frozen=True)
class _Point:
    # Model quantities at one parameter point of every toy.
    nll: FloatArray
    nu: FloatArray
    signal: FloatArray
    factor: FloatArray
    gamma: FloatArray
    interior: NDArray[np.bool_]


def _evaluate(
    model: CountingModel,
    data: _Reduced,
    mu: FloatArray,
    theta: FloatArray,
    beta: FloatArray,
) -> _Point:
    signal, factor = _signal(model, theta, beta)
    gamma, interior = _profile_gamma(model, mu[:, None] * signal, data)
    nu = mu[:, None] * signal + model.background * gamma
    n = data.main

    with np.errstate(divide="ignore", invalid="ignore"):
        main = np.where(nu > 0, nu - special.xlogy(n, nu), np.inf)
    # An empty bin with nothing expected has probability 1.
    main = np.where((nu == 0) & (n == 0), 0.0, main)
    nll = main.sum(axis=1)

    nll = nll + 0.5 * (theta - data.theta_aux) ** 2
    nll = nll + 0.5 * np.sum((beta - data.beta_aux) ** 2, axis=1)
    bins = model.shapesys_tau > 0
    if np.any(bins):
        rate = gamma[:, bins] * model.shapesys_tau[bins]
        aux = rate - special.xlogy(data.shapesys_aux[:, bins], rate)
        nll = nll + aux.sum(axis=1)
    return _Point(nll, nu, signal, factor, gamma, interior)


def _derivatives(
    model: CountingModel,
    data: _Reduced,
    mu: FloatArray,
    theta: FloatArray,
    beta: FloatArray,
    point: _Point,
) -> tuple[FloatArray, FloatArray]:
    """Return gradient and Hessian of the gamma-profiled -ln L in (mu, theta, beta).

    The parameter order is mu, then theta when the model has normsys
    uncertainties, then the histosys pulls. The Hessian includes the Schur
    complement of the profiled gamma in bins where it is inside its bounds.
    """
    n = data.main
    nu = point.nu
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(n > 0, n / nu, 0.0)
        curvature = np.where(n > 0, ratio / nu, 0.0)
    weight = 1.0 - ratio

    width = model.lognormal_width
    has_theta = model.n_lognormal > 0
    first_beta = 2 if has_theta else 1
    signal_nominal_e = model.signal * point.factor[:, None]

    # d(nu_b)/d(parameter), shape (n, n_bins, n_parameters).
    columns = [point.signal]
    if has_theta:
        columns.append(mu[:, None] * width * point.signal)
    for j in range(model.n_histosys):
        columns.append(mu[:, None] * signal_nominal_e * model.histosys_variations[j])
    jacobian = np.stack(columns, axis=2)

    jacobian_t = jacobian.transpose(0, 2, 1)
    gradient = np.matmul(jacobian_t, weight[:, :, None])[:, :, 0]
    hessian = np.matmul(jacobian_t * curvature[:, None, :], jacobian)

    # Second derivatives of nu, weighted by (1 - n / nu) and summed over bins.
    weighted_signal = np.sum(weight * point.signal, axis=1)
    weighted_variation = (weight * signal_nominal_e) @ model.histosys_variations.T
    if has_theta:
        hessian[:, 0, 1] += width * weighted_signal
        hessian[:, 1, 0] += width * weighted_signal
        hessian[:, 1, 1] += mu * width**2 * weighted_signal
    for j in range(model.n_histosys):
        column = first_beta + j
        hessian[:, 0, column] += weighted_variation[:, j]
        hessian[:, column, 0] += weighted_variation[:, j]
        if has_theta:
            cross = mu * width * weighted_variation[:, j]
            hessian[:, 1, column] += cross
            hessian[:, column, 1] += cross

    # Gaussian constraints.
    if has_theta:
        gradient[:, 1] += theta - data.theta_aux
        hessian[:, 1, 1] += 1.0
    for j in range(model.n_histosys):
        column = first_beta + j
        gradient[:, column] += beta[:, j] - data.beta_aux[:, j]
        hessian[:, column, column] += 1.0

    # Profiling gamma removes its coupling to the other parameters.
    if np.any(model.shapesys_tau > 0):
        background = model.background
        cross_gamma = curvature[:, :, None] * background[None, :, None] * jacobian
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma_curvature = curvature * background**2 + np.where(
                data.shapesys_aux > 0, data.shapesys_aux / point.gamma**2, 0.0
            )
            use = point.interior & (gamma_curvature > 0)
            inverse = np.where(use, 1.0 / gamma_curvature, 0.0)
        cross_t = cross_gamma.transpose(0, 2, 1)
        hessian -= np.matmul(cross_t * inverse[:, None, :], cross_gamma)
    return gradient, hessian


# ---------------------------------------------------------------------------
# fits


def fit(
    model: CountingModel,
    data: ToyData,
    mu_fixed: float | None = None,
    start: FitResult | None = None,
) -> FitResult:
    """Maximise the likelihood of every dataset at once.

    A projected Newton method with Levenberg damping and backtracking line
    search, applied to all datasets in parallel; datasets leave the loop as
    they converge. The POI is bounded to ``[0, model.mu_upper]`` and the pulls
    to ``[-5, 5]``, pyhf's default bounds.

    Args:
        model: the counting model.
        data: datasets to fit.
        mu_fixed: POI value of a conditional fit, or None for the free fit.
        start: a fit of the same data whose pulls are the starting point;
            otherwise the pulls start at their auxiliary values.

    Returns:
        The best-fit parameters and ``-ln L`` per dataset. ``converged`` is
        False where a dataset reached the iteration limit.
    """
    reduced = _reduce(model, data)
    n_toys = data.n_toys
    has_theta = model.n_lognormal > 0

    if start is not None:
        theta = start.theta.copy()
        beta = start.beta.copy()
    else:
        theta = np.clip(reduced.theta_aux, -PULL_BOUND, PULL_BOUND)
        beta = np.clip(reduced.beta_aux, -PULL_BOUND, PULL_BOUND)
    if mu_fixed is None:
        mu = _starting_mu(model, reduced, theta, beta)
    else:
        mu = np.full(n_toys, float(mu_fixed))

    # Columns of the full parameter vector (mu, theta, beta) that this fit varies.
    first = 0 if mu_fixed is None else 1
    free_columns = list(range(first, 1 + int(has_theta) + model.n_histosys))
    converged = np.zeros(n_toys, dtype=bool)
    if not free_columns:
        point = _evaluate(model, reduced, mu, theta, beta)
        return FitResult(mu, theta, beta, point.gamma, point.nll, ~converged)

    params = _pack(mu, theta, beta, has_theta)
    n_columns = params.shape[1]
    lower = np.full(n_columns, -PULL_BOUND)
    upper = np.full(n_columns, PULL_BOUND)
    lower[0], upper[0] = 0.0, model.mu_upper
    lower, upper = lower[free_columns], upper[free_columns]
    active = np.arange(n_toys)
    for _ in range(_MAX_ITERATIONS):
        if active.size == 0:
            break
        sub = _take_reduced(reduced, active)
        x = params[active]
        mu_a, theta_a, beta_a = _unpack(x, has_theta)
        point = _evaluate(model, sub, mu_a, theta_a, beta_a)
        gradient, hessian = _derivatives(model, sub, mu_a, theta_a, beta_a, point)
        gradient = gradient[:, free_columns]
        hessian = hessian[:, free_columns][:, :, free_columns]
        _freeze_at_bounds(gradient, hessian, x[:, free_columns], lower, upper)

        step = _damped_newton_step(gradient, hessian)
        decrease = -np.einsum("np,np->n", gradient, step)
        done = decrease < 2.0 * _CONVERGED_DECREASE
        converged[active[done]] = True
        active, x, step, gradient = (
            active[~done],
            x[~done],
            step[~done],
            gradient[~done],
        )
        sub = _take_reduced(sub, np.flatnonzero(~done))

        x_new, accepted = _line_search(
            model, sub, x, step, gradient, point.nll[~done], free_columns, has_theta
        )
        params[active] = np.where(accepted[:, None], x_new, x)
        # A dataset whose line search finds no decrease counts as converged:
        # no step along its Newton direction lowers -ln L.
        converged[active[~accepted]] = True
        active = active[accepted]

    if active.size:
        log.warning(
            "%d of %d fits reached %d iterations without converging",
            active.size,
            n_toys,
            _MAX_ITERATIONS,
        )
    mu, theta, beta = _unpack(params, has_theta)
    point = _evaluate(model, reduced, mu, theta, beta)
    return FitResult(mu, theta, beta, point.gamma, point.nll, converged)


def _starting_mu(
    model: CountingModel, data: _Reduced, theta: FloatArray, beta: FloatArray
) -> FloatArray:
    signal, _ = _signal(model, theta, beta)
    gamma = np.where(
        model.shapesys_tau > 0,
        data.shapesys_aux / np.where(model.shapesys_tau > 0, model.shapesys_tau, 1.0),
        1.0,
    )
    excess = np.sum(data.main - model.background * gamma, axis=1)
    total = np.sum(signal, axis=1)
    mu = np.where(total > 0, np.maximum(excess, 0.0) / total, 0.0)
    # Bins with counts but no background need signal, or -ln L is infinite.
    needs_signal = (data.main > 0) & (model.background == 0) & (signal > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = np.where(needs_signal, data.main / signal, 0.0).max(axis=1)
    return np.clip(np.maximum(mu, needed), 0.0, model.mu_upper)


def _pack(
    mu: FloatArray, theta: FloatArray, beta: FloatArray, has_theta: bool
) -> FloatArray:
    columns = [mu[:, None]]
    if has_theta:
        columns.append(theta[:, None])
    columns.append(beta)
    return np.concatenate(columns, axis=1)


def _unpack(
    params: FloatArray, has_theta: bool
) -> tuple[FloatArray, FloatArray, FloatArray]:
    mu = params[:, 0]
    theta = params[:, 1] if has_theta else np.zeros(params.shape[0])
    beta = params[:, 2:] if has_theta else params[:, 1:]
    return mu, theta, beta


def _take_reduced(data: _Reduced, index: NDArray[np.intp]) -> _Reduced:
    return _Reduced(
        data.main[index],
        data.theta_aux[index],
        data.beta_aux[index],
        data.shapesys_aux[index],
    )


def _freeze_at_bounds(
    gradient: FloatArray,
    hessian: FloatArray,
    x: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
) -> None:
    # Projected Newton: a parameter at a bound whose gradient points outwards
    # stays where it is.
    frozen = ((x <= lower) & (gradient > 0)) | ((x >= upper) & (gradient < 0))
    for column in np.flatnonzero(np.any(frozen, axis=0)):
        rows = frozen[:, column]
        gradient[rows, column] = 0.0
        hessian[rows, column, :] = 0.0
        hessian[rows, :, column] = 0.0
        hessian[rows, column, column] = 1.0


def _damped_newton_step(gradient: FloatArray, hessian: FloatArray) -> FloatArray:
    """Solve (H + lambda I) d = -g, raising lambda until d is a descent direction."""
    identity = np.eye(gradient.shape[1])
    scale = np.maximum(np.abs(np.diagonal(hessian, axis1=1, axis2=2)).max(axis=1), 1.0)
    damping = 1e-12 * scale
    step = np.zeros_like(gradient)
    zero = ~np.any(gradient != 0, axis=1)
    pending = np.flatnonzero(~zero)
    matrix = hessian[pending] + damping[pending, None, None] * identity
    rhs = -gradient[pending]
    for _ in range(20):
        trial = np.linalg.solve(matrix, rhs[:, :, None])[:, :, 0]
        good = np.einsum("np,np->n", rhs, trial) > 0
        step[pending[good]] = trial[good]
        if np.all(good):
            return step
        pending, rhs = pending[~good], rhs[~good]
        damping[pending] = np.maximum(damping[pending] * 100.0, 1e-3 * scale[pending])
        matrix = hessian[pending] + damping[pending, None, None] * identity
    # Datasets still pending fall back to steepest descent.
    step[pending] = -gradient[pending] / scale[pending, None]
    return step


def _line_search(
    model: CountingModel,
    data: _Reduced,
    x: FloatArray,
    step: FloatArray,
    gradient: FloatArray,
    nll: FloatArray,
    free_columns: list[int],
    has_theta: bool,
) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Backtrack along ``step`` until -ln L decreases (Armijo condition)."""
    x_new = x.copy()
    accepted = np.zeros(x.shape[0], dtype=bool)
    pending = np.arange(x.shape[0])
    length = 1.0
    for _ in range(_MAX_HALVINGS):
        trial = x[pending].copy()
        trial[:, free_columns] += length * step[pending]
        trial[:, 0] = np.clip(trial[:, 0], 0.0, model.mu_upper)
        trial[:, 1:] = np.clip(trial[:, 1:], -PULL_BOUND, PULL_BOUND)

        mu, theta, beta = _unpack(trial, has_theta)
        sub = _take_reduced(data, pending)
        trial_nll = _evaluate(model, sub, mu, theta, beta).nll
        moved = trial[:, free_columns] - x[pending][:, free_columns]
        slope = np.minimum(np.einsum("np,np->n", gradient[pending], moved), 0.0)
        good = trial_nll <= nll[pending] + 1e-4 * slope
        x_new[pending[good]] = trial[good]
        accepted[pending[good]] = True
        pending = pending[~good]
        if pending.size == 0:
            break
        length *= 0.5
    return x_new, accepted


# ---------------------------------------------------------------------------
# test statistic


def qtilde(
    model: CountingModel,
    data: ToyData,
    mu_test: float,
    free_fit: FitResult | None = None,
) -> FloatArray:
    """Compute the test statistic q~_mu of every dataset.

    ``q~ = -2 ln(L(mu, theta_hat_hat) / L(mu_hat, theta_hat))`` with ``mu_hat``
    bounded below by 0, and ``q~ = 0`` where ``mu_hat > mu``, as pyhf's
    ``qmu_tilde`` defines it.

    Args:
        model: the counting model.
        data: the datasets.
        mu_test: the tested POI value.
        free_fit: a free fit of ``data``, reused across POI values; fitted here
            when None.

    Returns:
        q~_mu per dataset, shape (n_toys,).
    """
    free = free_fit if free_fit is not None else fit(model, data)
    conditional = fit(model, data, mu_fixed=mu_test, start=free)
    q = np.clip(2.0 * (conditional.nll - free.nll), 0.0, None)
    return np.where(free.mu > mu_test, 0.0, q)


def to_pyhf_data(model: CountingModel, data: ToyData, pyhf_model: Any) -> FloatArray:
    """Lay out datasets as pyhf data vectors: counts, then auxiliary data.

    The auxiliary data follow ``pyhf_model.config.auxdata_order``. Shapesys
    bins without an uncertainty, which pyhf keeps fixed, get the auxiliary
    value 1 that pyhf itself uses.

    Args:
        model: the counting model the datasets belong to.
        data: the datasets.
        pyhf_model: the ``pyhf.pdf.Model`` of the same workspace.

    Returns:
        Array of shape (n_toys, n_bins + n_auxdata) to pass to pyhf fits.

    Raises:
        KeyError: ``pyhf_model`` has a constrained parameter that ``model``
            does not know.
    """
    columns: dict[str, FloatArray] = {}
    for k, name in enumerate(model.lognormal_names):
        columns[name] = data.lognormal_aux[:, k : k + 1]
    for j, name in enumerate(model.histosys_names):
        columns[name] = data.histosys_aux[:, j : j + 1]
    fixed_bins = model.shapesys_tau <= 0
    columns[model.shapesys_name] = np.where(fixed_bins, 1.0, data.shapesys_aux)
    parts = [data.main] + [columns[name] for name in pyhf_model.config.auxdata_order]
    return np.concatenate(parts, axis=1)
