"""Toy-based CLs for counting models of one or a few bins, vectorised.

pyhf's ``ToyCalculator`` fits every pseudo-experiment (toy) with scipy in a
Python loop, tens of milliseconds per toy (bench/bench_limit.py), so 10,000
toys at 41 scan points would take hours. Here all toys of a scan point are
fitted at once by :mod:`analysis.limit_fit`.

Toys are generated as pyhf 0.7.6 generates them. The nuisance parameters are
set to their conditional maximum-likelihood values in a fit to the observed
data, at the tested POI for s+b toys and at POI 0 for background-only toys.
Both the counts and the auxiliary measurements are sampled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from analysis.limit_fit import (
    CountingModel,
    FitResult,
    FloatArray,
    ToyData,
    expected_yields,
    fit,
    qtilde,
)

log = logging.getLogger(__name__)

# Percentiles of the normal distribution at -2, -1, 0, +1 and +2 sigma, the
# values pyhf 0.7.6 uses for the expected CLs band.
NORMAL_PERCENTILES = (2.27501319, 15.86552539, 50.0, 84.13447461, 97.72498681)

# Test statistics closer than this to the observed value count as equal. The
# fits stop when the predicted decrease of -ln L is below 1e-10, so smaller
# differences of q~ are rounding. Toys with the same counts as the observed
# data must tie with it.
TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ToyScan:
    """CLs values from toys at every tested POI value.

    ``cls_expected`` has shape (5, n_points) for -2, -1, 0, +1, +2 sigma,
    computed as pyhf 0.7.6 does: the CLs of every background-only toy, then
    the percentiles in ``NORMAL_PERCENTILES``.
    """

    poi_values: FloatArray
    clsb_observed: FloatArray
    clb_observed: FloatArray
    cls_observed: FloatArray
    cls_expected: FloatArray
    n_toys: int


@dataclass(frozen=True)
class ToyRandomNumbers:
    """Random numbers of a set of toys, drawn once per scan.

    Uniforms for the Poisson counts, standard normals for the Gaussian
    auxiliary data. They are reused at every POI value, so the toys of neighbouring scan
    points are strongly correlated (common random numbers) and the CLs curve
    is smooth.
    """

    main: FloatArray
    lognormal: FloatArray
    histosys: FloatArray
    shapesys: FloatArray


def draw_random_numbers(
    model: CountingModel, n_toys: int, rng: np.random.Generator
) -> ToyRandomNumbers:
    """Draw the random numbers of ``n_toys`` toys of ``model`` from ``rng``."""
    return ToyRandomNumbers(
        main=rng.random((n_toys, model.n_bins)),
        lognormal=rng.standard_normal((n_toys, model.n_lognormal)),
        histosys=rng.standard_normal((n_toys, model.n_histosys)),
        shapesys=rng.random((n_toys, model.n_bins)),
    )


def poisson_quantile(uniform: FloatArray, rate: float) -> FloatArray:
    """Return the Poisson(``rate``) quantiles of ``uniform`` (inverse-CDF sampling).

    Uses a table of the CDF over ``rate +- (12 sqrt(rate) + 20)``, which misses
    a probability below 1e-30; above a rate of 1e7 the normal approximation
    is used instead.
    """
    if rate <= 0:
        return np.zeros_like(uniform)
    if rate > 1e7:
        return np.maximum(
            np.round(rate + math.sqrt(rate) * stats.norm.ppf(uniform)), 0.0
        )
    spread = 12.0 * math.sqrt(rate) + 20.0
    k_low = max(0, math.floor(rate - spread))
    k = np.arange(k_low, math.ceil(rate + spread) + 1)
    cdf = stats.poisson.cdf(k, rate)
    return (k_low + np.searchsorted(cdf, uniform, side="right")).astype(float)


def generate_toys(
    model: CountingModel,
    generating: FitResult,
    uniforms: ToyRandomNumbers,
) -> ToyData:
    """Sample toys from the model at the parameters of a one-dataset fit.

    Counts are Poisson with the fitted yields, normsys and histosys auxiliary
    data Normal(fitted pull, 1), shapesys auxiliary counts Poisson(gamma tau).
    The normsys pulls are recovered from the combined ``theta`` as the
    constrained optimum ``alpha_k = theta * ln(kappa_k) / width`` (the
    observed auxiliary data are 0).
    """
    nu = expected_yields(model, generating)[0]
    theta = generating.theta[0]
    beta = generating.beta[0]

    main = np.empty_like(uniforms.main)
    shapesys_aux = np.zeros_like(uniforms.shapesys)
    for b in range(model.n_bins):
        main[:, b] = poisson_quantile(uniforms.main[:, b], float(nu[b]))
        tau = float(model.shapesys_tau[b])
        if tau > 0:
            rate = float(generating.gamma[0, b]) * tau
            shapesys_aux[:, b] = poisson_quantile(uniforms.shapesys[:, b], rate)

    width = model.lognormal_width
    if model.n_lognormal and width > 0:
        alpha = theta * model.lognormal_log_kappa / width
    else:
        alpha = np.zeros(model.n_lognormal)
    return ToyData(
        main=main,
        lognormal_aux=alpha + uniforms.lognormal,
        histosys_aux=beta + uniforms.histosys,
        shapesys_aux=shapesys_aux,
    )


def _unique_datasets(
    model: CountingModel, data: ToyData
) -> tuple[ToyData, NDArray[np.intp] | None]:
    """Merge identical datasets when all data are counts.

    Without Gaussian auxiliary data a toy is a handful of integers, so a few
    dozen distinct datasets stand for thousands of toys and each is fitted
    once. Returns the distinct datasets and the index that maps them back, or
    the data unchanged and None.
    """
    if model.n_lognormal or model.n_histosys:
        return data, None
    values = np.concatenate([data.main, data.shapesys_aux], axis=1)
    if np.any(values != np.round(values)):
        return data, None
    rows = values.astype(np.int64)
    # One integer per row (mixed radix) sorts far faster than np.unique(axis=0).
    radix = rows.max(axis=0) + 1
    if float(np.prod(radix.astype(float))) < 2.0**62:
        places = np.concatenate([[1], np.cumprod(radix[:-1])])
        _, first, inverse = np.unique(
            rows @ places, return_index=True, return_inverse=True
        )
        unique_rows = rows[first]
    else:
        unique_rows, inverse = np.unique(rows, axis=0, return_inverse=True)
    unique = unique_rows.astype(float)
    n_bins = model.n_bins
    merged = ToyData(
        main=unique[:, :n_bins],
        lognormal_aux=np.zeros((unique.shape[0], 0)),
        histosys_aux=np.zeros((unique.shape[0], 0)),
        shapesys_aux=unique[:, n_bins:],
    )
    return merged, inverse.reshape(-1)


def _expand(values: FloatArray, inverse: NDArray[np.intp] | None) -> FloatArray:
    return values if inverse is None else values[inverse]


def cls_from_samples(
    q_observed: float, q_signal: FloatArray, q_background: FloatArray
) -> tuple[float, float, float, FloatArray]:
    """Return CLs+b, CLb, CLs of the observed test statistic and the expected CLs.

    ``CLs+b = P(q >= q_obs | s+b)`` and ``CLb = P(q >= q_obs | b)``, counted
    over the toys with ``TIE_TOLERANCE``. The expected CLs at -2..+2 sigma are
    the ``NORMAL_PERCENTILES`` of the CLs of every background-only toy (linear
    interpolation), as pyhf 0.7.6 computes them. Where no background-only toy
    reaches ``q_obs`` (CLb = 0), CLs is reported as 0.
    """
    signal_sorted = np.sort(q_signal)
    background_sorted = np.sort(q_background)

    def tail(sorted_q: FloatArray, values: FloatArray) -> FloatArray:
        below = np.searchsorted(sorted_q, values - TIE_TOLERANCE, side="left")
        return (sorted_q.size - below) / sorted_q.size

    observed = np.array([q_observed])
    clsb = float(tail(signal_sorted, observed)[0])
    clb = float(tail(background_sorted, observed)[0])
    cls = clsb / clb if clb > 0 else 0.0

    background_clsb = tail(signal_sorted, q_background)
    background_clb = tail(background_sorted, q_background)
    background_cls = background_clsb / background_clb
    expected = np.percentile(background_cls, NORMAL_PERCENTILES)
    return clsb, clb, cls, np.asarray(expected, dtype=float)


def scan_cls(
    model: CountingModel,
    observed: ToyData,
    poi_values: FloatArray,
    *,
    n_toys: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> ToyScan:
    """Compute observed and expected CLs from toys at every POI value.

    Background-only toys are generated once, from the fit to ``observed`` at
    POI 0, and their free fits are reused at every POI value. Signal-plus-
    background toys are generated at each POI value from the conditional fit
    to ``observed``, with the same random numbers at every POI value. At
    POI 0 both hypotheses coincide and CLs is 1 without toys.

    Args:
        model: the counting model.
        observed: one dataset, the observed data (or background-only Asimov
            data for a blinded signal region).
        poi_values: POI values to test, shape (n_points,).
        n_toys: toys per hypothesis and POI value.
        seed: seed of the numpy Generator; equal seeds give equal results.
        progress: called with (points done, points total) after each point.

    Returns:
        The CLs values at every POI value.
    """
    sequence = np.random.SeedSequence(seed)
    background_rng, signal_rng = (np.random.default_rng(s) for s in sequence.spawn(2))
    background_uniforms = draw_random_numbers(model, n_toys, background_rng)
    signal_uniforms = draw_random_numbers(model, n_toys, signal_rng)

    observed_free = fit(model, observed)
    background_fit = fit(model, observed, mu_fixed=0.0)
    background_toys = generate_toys(model, background_fit, background_uniforms)
    background_unique, background_inverse = _unique_datasets(model, background_toys)
    background_free = fit(model, background_unique)
    log.debug(
        "background-only toys: %d datasets, %d distinct",
        n_toys,
        background_unique.n_toys,
    )

    n_points = poi_values.size
    clsb = np.ones(n_points)
    clb = np.ones(n_points)
    cls = np.ones(n_points)
    expected = np.ones((5, n_points))
    for index, poi in enumerate(poi_values):
        if poi > 0:
            q_observed = float(
                qtilde(model, observed, float(poi), free_fit=observed_free)[0]
            )
            generating = fit(model, observed, mu_fixed=float(poi))
            signal_toys = generate_toys(model, generating, signal_uniforms)
            signal_unique, signal_inverse = _unique_datasets(model, signal_toys)
            q_signal = _expand(qtilde(model, signal_unique, float(poi)), signal_inverse)
            q_background = _expand(
                qtilde(model, background_unique, float(poi), free_fit=background_free),
                background_inverse,
            )
            clsb[index], clb[index], cls[index], expected[:, index] = cls_from_samples(
                q_observed, q_signal, q_background
            )
            log.debug(
                "poi %.4g: q_obs %.4g, CLs+b %.4g, CLb %.4g, CLs %.4g",
                poi,
                q_observed,
                clsb[index],
                clb[index],
                cls[index],
            )
        if progress is not None:
            progress(index + 1, n_points)
    return ToyScan(poi_values, clsb, clb, cls, expected, n_toys)
