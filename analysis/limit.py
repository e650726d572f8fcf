"""CLs upper limit on the signal yield and the branching fraction, with pyhf.

The statistical model (:mod:`analysis.limit_model`) is a counting experiment
in the signal region, with one bin or a few bins. The signal yield is ``mu *
signal_reference``, with ``mu`` the parameter of interest (POI). The
background has its uncertainty, and the systematic uncertainties on the
signal are modifiers. The limit comes from a scan of CLs over ``mu`` with the test
statistic q~_mu, either from toys (:mod:`analysis.limit_toys`, the default) or
from pyhf's asymptotic formulae.

The signal yield at the reference branching fraction ``B_ref`` is
``eps * 2 * L * sigma(ee -> tau tau) * B_ref`` (two taus per event), so the
branching-fraction limit is ``B_UL = mu_UL * B_ref = N_UL / (2 L sigma eps)``.
Luminosities are in fb^-1 and cross-sections in nb, with 1 nb = 10^6 fb.

With no background and no systematic uncertainty, zero observed events give
the textbook 2.303 events at 90% CL. With an uncertainty on the signal
efficiency the toy limit can come out lower: the toys sample the auxiliary
measurement around the conditional fit to the data, which pulls the
efficiency down when nothing is seen. pyhf's ``ToyCalculator`` does the same.
With a 10% efficiency uncertainty and 0.002 +- 0.001 background events,
CLs at 2.2 events was 0.0974 here (20,000 toys) and 0.1005 +- 0.006 with
pyhf (2,500 toys), so the limit is about 2.2 events.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyhf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.errors import ConfigError, PhysicsError
from analysis.limit_fit import FloatArray, ToyData
from analysis.limit_model import (
    LimitInputs,
    bin_array,
    build_workspace,
    counting_model,
    default_poi_max,
    reduce_toy_variations,
    validate_workspace,
    write_workspace,
)
from analysis.limit_toys import ToyScan, scan_cls
from analysis.outputs import atomic_path

__all__ = [
    "LimitInputs",
    "LimitResult",
    "branching_fraction_limit",
    "build_workspace",
    "counting_model",
    "default_poi_max",
    "plot_cls_scan",
    "pyhf_model",
    "pyhf_toy_cls",
    "reduce_toy_variations",
    "signal_reference_yield",
    "upper_limit",
    "write_workspace",
]

log = logging.getLogger(__name__)

FB_PER_NB = 1e6
# With fewer toys per point, CLs+b at the crossing (about 0.1 CLb) would rest
# on ten toys or fewer.
MIN_TOYS = 100

Calculator = Literal["toybased", "asymptotic"]


# ---------------------------------------------------------------------------
# yields and branching fraction


def signal_reference_yield(
    efficiency: float,
    luminosity_fb: float,
    cross_section_nb: float,
    br_reference: float,
) -> float:
    """Compute the expected signal events at the reference branching fraction.

    ``N = eps * 2 * L * sigma * B_ref``: every e+e- -> tau+ tau- event has two
    taus that can decay to three muons.

    Args:
        efficiency: signal efficiency in the signal region, in (0, 1].
        luminosity_fb: integrated luminosity in fb^-1.
        cross_section_nb: e+e- -> tau+ tau- cross-section in nb.
        br_reference: branching fraction at which the signal is normalised.

    Returns:
        Expected signal events.

    Raises:
        ConfigError: an argument is not finite or out of range.
    """
    _check_normalisation(efficiency, luminosity_fb, cross_section_nb)
    if not (math.isfinite(br_reference) and br_reference > 0):
        raise ConfigError(
            f"br_reference is {br_reference!r}: expected a branching fraction > 0."
        )
    return (
        efficiency * 2.0 * luminosity_fb * cross_section_nb * FB_PER_NB * br_reference
    )


def branching_fraction_limit(
    n_upper: float,
    efficiency: float,
    luminosity_fb: float,
    cross_section_nb: float,
) -> float:
    """Convert an upper limit on signal events to one on the branching fraction.

    ``B_UL = N_UL / (2 L sigma eps)`` with ``L`` in fb^-1 and ``sigma``
    converted from nb to fb (1 nb = 10^6 fb).

    Args:
        n_upper: upper limit on the signal events.
        efficiency: signal efficiency in (0, 1].
        luminosity_fb: integrated luminosity in fb^-1.
        cross_section_nb: e+e- -> tau+ tau- cross-section in nb.

    Returns:
        Upper limit on the branching fraction.

    Raises:
        ConfigError: an argument is not finite or out of range.
    """
    _check_normalisation(efficiency, luminosity_fb, cross_section_nb)
    if not (math.isfinite(n_upper) and n_upper >= 0):
        raise ConfigError(f"n_upper is {n_upper!r}: expected signal events >= 0.")
    return n_upper / (2.0 * luminosity_fb * cross_section_nb * FB_PER_NB * efficiency)


def _check_normalisation(
    efficiency: float, luminosity_fb: float, cross_section_nb: float
) -> None:
    if not (math.isfinite(efficiency) and 0 < efficiency <= 1):
        raise ConfigError(f"efficiency is {efficiency!r}: expected a value in (0, 1].")
    if not (math.isfinite(luminosity_fb) and luminosity_fb > 0):
        raise ConfigError(f"luminosity is {luminosity_fb!r} fb^-1: expected > 0.")
    if not (math.isfinite(cross_section_nb) and cross_section_nb > 0):
        raise ConfigError(f"cross-section is {cross_section_nb!r} nb: expected > 0.")


# ---------------------------------------------------------------------------
# CLs scan and upper limit


@dataclass
class LimitResult:
    """Upper limit on the POI ``mu`` and the CLs scan behind it.

    Attributes:
        observed: observed upper limit on ``mu``; None when blinded.
        expected: expected upper limits at -2, -1, 0 (median), +1, +2 sigma.
        poi_values: scanned ``mu`` values, shape (n,).
        cls_observed: observed CLs per ``mu``; None when blinded.
        cls_expected: expected CLs at -2..+2 sigma per ``mu``, shape (5, n).
        calculator: ``"toybased"`` or ``"asymptotic"``.
        n_toys: toys per hypothesis and scan point (0 for asymptotic).
        cl: confidence level, for example 0.90.
        seed: seed of the toys.
        signal_reference: expected signal events at ``mu = 1``, summed over
            bins; multiplies a limit on ``mu`` into one on signal events.
        observed_toy_error: standard error of ``observed`` from the finite
            number of toys (binomial errors of CLs+b and CLb at the crossing,
            divided by the slope of ln CLs); None for asymptotic or blinded.
    """

    observed: float | None
    expected: tuple[float, float, float, float, float]
    poi_values: np.ndarray
    cls_observed: np.ndarray | None
    cls_expected: np.ndarray
    calculator: str
    n_toys: int
    cl: float
    seed: int
    signal_reference: float = 1.0
    observed_toy_error: float | None = None

    @property
    def observed_events(self) -> float | None:
        """Observed upper limit on signal events, ``observed * signal_reference``."""
        return None if self.observed is None else self.observed * self.signal_reference

    @property
    def expected_events(self) -> tuple[float, ...]:
        """Expected upper limits on signal events at -2..+2 sigma."""
        return tuple(e * self.signal_reference for e in self.expected)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready dict of floats, lists and text."""
        return {
            "observed": self.observed,
            "expected": list(self.expected),
            "observed_events": self.observed_events,
            "expected_events": list(self.expected_events),
            "observed_toy_error": self.observed_toy_error,
            "poi_values": np.asarray(self.poi_values).tolist(),
            "cls_observed": (
                None
                if self.cls_observed is None
                else np.asarray(self.cls_observed).tolist()
            ),
            "cls_expected": np.asarray(self.cls_expected).tolist(),
            "calculator": self.calculator,
            "n_toys": self.n_toys,
            "cl": self.cl,
            "seed": self.seed,
            "signal_reference": self.signal_reference,
        }


def upper_limit(
    inputs: LimitInputs,
    *,
    cl: float = 0.90,
    calculator: Calculator = "toybased",
    n_toys: int = 10_000,
    seed: int = 1,
    poi_max: float | None = None,
    n_points: int = 41,
    progress: Callable[[int, int], None] | None = None,
) -> LimitResult:
    """Compute the CLs upper limit on ``mu`` by a scan over ``mu``.

    CLs is computed at ``n_points`` values of ``mu`` from 0 to ``poi_max``
    with the test statistic q~_mu, and the limit is where CLs crosses
    ``1 - cl``, interpolated linearly in ln CLs between the two scan points
    around the first crossing. The same is done for each expected CLs curve.

    The default calculator is ``"toybased"`` (the vectorised toys of
    :mod:`analysis.limit_toys`), because it agrees with exact Poisson limits
    within 3% at the small counts of this search. pyhf's asymptotic formulae,
    selected with ``"asymptotic"``, give limits 9-29% below the exact ones for
    backgrounds of 0.5-3 events and 0-5 observed events (measured in
    tests/test_limit.py), and suit large counts only.

    Args:
        inputs: yields, observation and uncertainties.
        cl: confidence level, in (0, 1).
        calculator: ``"toybased"`` or ``"asymptotic"``.
        n_toys: toys per hypothesis and scan point (toybased only); 10,000
            for final results.
        seed: seed of the toys; the same seed gives the same result.
        poi_max: largest ``mu`` scanned; by default :func:`default_poi_max`.
        n_points: number of scan points, including ``mu = 0``.
        progress: called with (points done, points total) after each point.

    Returns:
        The limits and the scan. With a blinded signal region (``observed``
        None) only expected limits are computed, from background-only Asimov
        data.

    Raises:
        ConfigError: an argument is out of range or ``calculator`` unknown.
        PhysicsError: CLs does not cross ``1 - cl`` inside the scan; pass a
            larger ``poi_max``.
    """
    if not 0 < cl < 1:
        raise ConfigError(f"cl is {cl!r}: expected a confidence level in (0, 1).")
    if calculator not in ("toybased", "asymptotic"):
        raise ConfigError(
            f"calculator is {calculator!r}: expected 'toybased' or 'asymptotic'."
        )
    if calculator == "toybased" and n_toys < MIN_TOYS:
        raise ConfigError(
            f"n_toys is {n_toys}: expected at least {MIN_TOYS} toys per point "
            "(10,000 for final results)."
        )
    if n_points < 3:
        raise ConfigError(f"n_points is {n_points}: expected at least 3 scan points.")
    if poi_max is None:
        poi_max = default_poi_max(inputs, cl)
    elif not (math.isfinite(poi_max) and poi_max > 0):
        raise ConfigError(f"poi_max is {poi_max!r}: expected a value > 0.")

    poi_values = np.linspace(0.0, poi_max, n_points)
    poi_upper = max(10 * default_poi_max(inputs, cl), 2 * poi_max)
    blinded = inputs.observed is None
    log.info(
        "CLs scan of %d points up to mu = %.4g with %s calculator%s%s",
        n_points,
        poi_max,
        calculator,
        f", {n_toys} toys per point, seed {seed}" if calculator == "toybased" else "",
        " (blinded: expected limits only)" if blinded else "",
    )

    toy_error: float | None = None
    if calculator == "toybased":
        model = counting_model(inputs, poi_upper=poi_upper)
        if inputs.observed is None:
            counts = model.background
        else:
            counts = bin_array("observed", inputs.observed)
        scan = scan_cls(
            model,
            ToyData.observed(model, counts),
            poi_values,
            n_toys=n_toys,
            seed=seed,
            progress=progress,
        )
        cls_observed, cls_expected = scan.cls_observed, scan.cls_expected
    else:
        cls_observed, cls_expected = _asymptotic_scan(
            inputs, poi_values, poi_upper, progress
        )

    level = 1 - cl
    expected = tuple(
        _limit_from_curve(poi_values, cls_expected[i], level, f"expected {band}")
        for i, band in enumerate(
            ("-2 sigma", "-1 sigma", "median", "+1 sigma", "+2 sigma")
        )
    )
    observed: float | None = None
    if not blinded:
        observed = _limit_from_curve(poi_values, cls_observed, level, "observed")
        if calculator == "toybased":
            toy_error = _toy_error(scan, observed, level)

    result = LimitResult(
        observed=observed,
        expected=(expected[0], expected[1], expected[2], expected[3], expected[4]),
        poi_values=poi_values,
        cls_observed=None if blinded else cls_observed,
        cls_expected=cls_expected,
        calculator=calculator,
        n_toys=n_toys if calculator == "toybased" else 0,
        cl=cl,
        seed=seed,
        signal_reference=inputs.signal_total,
        observed_toy_error=toy_error,
    )
    log.info(
        "%.0f%% CL upper limit on mu: observed %s, expected median %.4g "
        "(-1 sigma %.4g, +1 sigma %.4g); in signal events: observed %s, expected %.4g",
        100 * cl,
        "blinded" if observed is None else f"{observed:.4g}",
        expected[2],
        expected[1],
        expected[3],
        "blinded"
        if result.observed_events is None
        else f"{result.observed_events:.4g}",
        result.expected_events[2],
    )
    return result


def _asymptotic_scan(
    inputs: LimitInputs,
    poi_values: FloatArray,
    poi_upper: float,
    progress: Callable[[int, int], None] | None,
) -> tuple[FloatArray, FloatArray]:
    workspace = validate_workspace(build_workspace(inputs, poi_upper=poi_upper))
    model = workspace.model()
    data = workspace.data(model)
    observed = np.ones(poi_values.size)
    expected = np.ones((5, poi_values.size))
    for index, poi in enumerate(poi_values):
        # At mu = 0 the two hypotheses coincide, so CLs = 1.
        if poi > 0:
            cls_obs, cls_exp = pyhf.infer.hypotest(
                float(poi),
                data,
                model,
                test_stat="qtilde",
                calctype="asymptotics",
                return_expected_set=True,
            )
            observed[index] = float(cls_obs)
            expected[:, index] = np.asarray(cls_exp, dtype=float)
        if progress is not None:
            progress(index + 1, poi_values.size)
    return observed, expected


def _crossing(
    poi_values: FloatArray, cls: FloatArray, level: float
) -> tuple[float, int] | None:
    """Return the POI where CLs first falls below ``level`` and the index after it."""
    below = np.flatnonzero(cls[1:] < level) + 1
    if below.size == 0:
        return None
    i = int(below[0])
    x0, x1 = float(poi_values[i - 1]), float(poi_values[i])
    y0, y1 = float(cls[i - 1]), float(cls[i])
    if y1 > 0 and y0 > 0:
        fraction = math.log(y0 / level) / math.log(y0 / y1)
    else:
        fraction = (y0 - level) / (y0 - y1)
    return x0 + fraction * (x1 - x0), i


def _limit_from_curve(
    poi_values: FloatArray, cls: FloatArray, level: float, what: str
) -> float:
    found = _crossing(poi_values, cls, level)
    if found is None:
        raise PhysicsError(
            f"{what} CLs stays above {level:.3g} up to mu = {poi_values[-1]:.4g} "
            f"(CLs there is {cls[-1]:.3g}); rerun with a larger poi_max."
        )
    limit, index = found
    if index <= 2:
        log.warning(
            "%s limit mu = %.4g lies in the first two scan steps; a smaller "
            "poi_max would resolve it better",
            what,
            limit,
        )
    return limit


def _toy_error(scan: ToyScan, limit: float, level: float) -> float:
    poi = scan.poi_values
    found = _crossing(poi, scan.cls_observed, level)
    assert found is not None  # the limit itself came from this crossing
    _, i = found
    fraction = (limit - poi[i - 1]) / (poi[i] - poi[i - 1])
    clsb = scan.clsb_observed[i - 1] + fraction * (
        scan.clsb_observed[i] - scan.clsb_observed[i - 1]
    )
    clb = scan.clb_observed[i - 1] + fraction * (
        scan.clb_observed[i] - scan.clb_observed[i - 1]
    )
    if clsb <= 0 or clb <= 0:
        return math.inf
    n = scan.n_toys
    variance = (1 - clsb) / (n * clsb) + (1 - clb) / (n * clb)
    y0, y1 = scan.cls_observed[i - 1], scan.cls_observed[i]
    if y0 <= 0 or y1 <= 0:
        return math.inf
    slope = abs(math.log(y1 / y0)) / (poi[i] - poi[i - 1])
    return math.sqrt(variance) / slope if slope > 0 else math.inf


def pyhf_toy_cls(
    inputs: LimitInputs, poi: float, *, n_toys: int, seed: int = 1
) -> tuple[float, FloatArray]:
    """Compute CLs at one POI value with pyhf's own toy calculator.

    The reference for :func:`upper_limit`'s vectorised toys: independent but
    slow, because it runs two scipy fits per toy in a Python loop. pyhf draws
    its toys from numpy's global random state; this function seeds it with
    ``seed`` and restores the earlier state afterwards.

    pyhf 0.7.6's ``ToyCalculator`` calls ``numpy.percentile(...,
    interpolation=...)``, an argument that numpy 2.4 removed; pyproject.toml
    pins ``numpy<2.4`` so that this calculator runs.

    Returns:
        The observed CLs and the expected CLs at -2..+2 sigma.
    """
    workspace = validate_workspace(build_workspace(inputs))
    model = workspace.model()
    data = workspace.data(model)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        cls_obs, cls_exp = pyhf.infer.hypotest(
            poi,
            data,
            model,
            test_stat="qtilde",
            calctype="toybased",
            ntoys=n_toys,
            track_progress=False,
            return_expected_set=True,
        )
    finally:
        np.random.set_state(state)
    return float(cls_obs), np.asarray(cls_exp, dtype=float)


def pyhf_model(
    inputs: LimitInputs, *, poi_upper: float | None = None
) -> tuple[Any, FloatArray]:
    """Return the ``pyhf.pdf.Model`` of ``inputs`` and its data vector.

    The data vector is the observed counts followed by the auxiliary data, as
    pyhf's fits take it.
    """
    workspace = validate_workspace(build_workspace(inputs, poi_upper=poi_upper))
    model = workspace.model()
    return model, np.asarray(workspace.data(model), dtype=float)


# ---------------------------------------------------------------------------
# plot


def plot_cls_scan(
    result: LimitResult,
    path: Path,
    poi_label: str = "signal events",
    poi_scale: float = 1.0,
) -> Path:
    """Plot CLs against the POI with the expected 1 and 2 sigma bands (PNG).

    The x axis shows ``mu * poi_scale``. The default label fits
    ``signal_reference = 1``, where ``mu`` is the signal count.

    Args:
        result: a limit with its scan.
        path: PNG file to write, atomically.
        poi_label: x-axis label, with its unit.
        poi_scale: factor from ``mu`` to the x axis: ``result.signal_reference``
            for signal events, or ``B_ref`` for the branching fraction.

    Returns:
        The path written.
    """
    x = np.asarray(result.poi_values) * poi_scale
    expected = np.asarray(result.cls_expected)
    level = 1 - result.cl

    figure = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.fill_between(
        x, expected[0], expected[4], color="#ffcc00", label=r"expected $\pm 2\sigma$"
    )
    axes.fill_between(
        x, expected[1], expected[3], color="#00cc00", label=r"expected $\pm 1\sigma$"
    )
    axes.plot(x, expected[2], color="black", linestyle="--", label="expected median")
    if result.cls_observed is not None:
        axes.plot(x, result.cls_observed, color="black", marker=".", label="observed")
    axes.axhline(
        level, color="red", label=f"CLs = {level:.2g} ({100 * result.cl:.0f}% CL)"
    )
    axes.set_xlim(float(x[0]), float(x[-1]))
    axes.set_ylim(0.0, 1.05)
    axes.set_xlabel(poi_label)
    axes.set_ylabel(r"CL$_s$")
    calculator = result.calculator
    if result.n_toys:
        calculator += f", {result.n_toys} toys per point"
    axes.set_title(f"CLs scan ({calculator})", fontsize="medium")
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    log.info("wrote CLs plot %s", path)
    return Path(path)
