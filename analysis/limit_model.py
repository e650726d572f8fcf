"""Statistical model of the signal region: inputs, pyhf workspace, toy model.

:class:`LimitInputs` contains the yields, the observation and the uncertainties;
:func:`build_workspace` turns them into a pyhf JSON workspace and
:func:`counting_model` into the same model for the vectorised toy fits.

Modifiers in the workspace:

- ``mu``: normfactor on the signal, bounded to ``[0, poi_upper]``.
- every signal and normalisation systematic: a normsys on the signal with
  ``hi = 1 + sigma`` and ``lo = 1 / (1 + sigma)``, a log-normal uncertainty
  (the ``lnN`` convention of CMS combine) that pyhf's default interpolation
  turns into the smooth factor ``(1 + sigma)**alpha``.
- every principal component of a set of toy variations: a histosys on the
  signal with ``hi = s (1 + v)``, ``lo = s (1 - v)``.
- ``background_uncertainty``: a shapesys on the background, a Poisson
  constraint equivalent to a sideband measurement of ``(b / sigma_b)**2``
  events.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyhf
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from analysis.errors import ConfigError, PhysicsError
from analysis.limit_fit import CountingModel, FloatArray
from analysis.outputs import write_json

log = logging.getLogger(__name__)

CHANNEL = "signal_region"
POI = "mu"
BACKGROUND_MODIFIER = "background_uncertainty"

BinValues = float | Sequence[float] | NDArray[np.float64]


@dataclass(frozen=True)
class LimitInputs:
    """Yields, observation and uncertainties of the signal region.

    Per-bin fields take a float for a one-bin counting model or a sequence
    with one value per bin.

    Attributes:
        signal_reference: expected signal events at ``mu = 1``, usually from
            :func:`analysis.limit.signal_reference_yield`. With 1 the POI is
            the signal count.
        background: expected background events (>= 0).
        background_uncertainty: absolute uncertainty on the background in
            events; 0 means the background is known exactly. A nonzero value
            needs a nonzero background in that bin.
        observed: observed events, or None when the signal region is blinded
            (only expected limits are computed).
        signal_systematics: name -> relative uncertainty on the signal
            efficiency (0.03 = 3%), for example tracking, muon ID or the
            signal resolution window. An entry of 0 adds no modifier.
        normalisation_systematics: name -> relative uncertainty on the
            normalisation (luminosity, cross-section).
        toy_variations: name -> relative signal variations, shape (n_toys,
            n_bins), for example muon-ID correction toys; each is reduced to
            principal components by :func:`reduce_toy_variations`.
        variance_fraction: fraction of the toy variance that the principal
            components of each ``toy_variations`` entry must explain.

    Raises:
        ConfigError: a value is negative, not finite, of the wrong shape, or a
            systematic name is empty or used twice.
        PhysicsError: no signal is expected in any bin.
    """

    signal_reference: BinValues
    background: BinValues
    background_uncertainty: BinValues
    observed: int | Sequence[int] | None
    signal_systematics: dict[str, float] = field(default_factory=dict)
    normalisation_systematics: dict[str, float] = field(default_factory=dict)
    toy_variations: dict[str, np.ndarray] = field(default_factory=dict)
    variance_fraction: float = 0.98

    def __post_init__(self) -> None:
        n_bins = self._check_yields()
        self._check_systematics(n_bins)

    def _check_yields(self) -> int:
        signal = bin_array("signal_reference", self.signal_reference)
        n_bins = signal.size
        background = bin_array("background", self.background, n_bins)
        uncertainty = bin_array(
            "background_uncertainty", self.background_uncertainty, n_bins
        )
        if signal.sum() <= 0:
            raise PhysicsError(
                f"signal_reference is {self.signal_reference!r}: no signal is "
                "expected, so no limit can be set. Check the efficiency, "
                "luminosity and cross-section that produced it."
            )

        unconstrained = (uncertainty > 0) & (background == 0)
        if np.any(unconstrained):
            raise ConfigError(
                f"background_uncertainty is {self.background_uncertainty!r} where "
                f"the background is 0 (bins {np.flatnonzero(unconstrained).tolist()})"
                ": a Poisson-constrained background needs a nonzero estimate. "
                "Pass the background estimate with its uncertainty, or 0 for both."
            )

        if self.observed is not None:
            counts = bin_array("observed", self.observed, n_bins)
            if np.any(counts != np.round(counts)):
                raise ConfigError(
                    f"observed is {self.observed!r}: event counts must be "
                    "whole numbers."
                )
        return n_bins

    def _check_systematics(self, n_bins: int) -> None:
        for group in ("signal_systematics", "normalisation_systematics"):
            for name, value in getattr(self, group).items():
                _check_name(group, name)
                if not (math.isfinite(value) and value >= 0):
                    raise ConfigError(
                        f"{group}[{name!r}] is {value!r}: expected a relative "
                        "uncertainty >= 0 (0.03 for 3%)."
                    )

        for name, toys in self.toy_variations.items():
            _check_name("toy_variations", name)
            array = np.asarray(toys, dtype=float)
            if array.ndim != 2 or array.shape[1] != n_bins or array.shape[0] < 2:
                raise ConfigError(
                    f"toy_variations[{name!r}] has shape {array.shape}: expected "
                    f"(n_toys >= 2, {n_bins}) relative variations, one column "
                    "per signal-region bin."
                )
            if not np.all(np.isfinite(array)):
                raise ConfigError(
                    f"toy_variations[{name!r}] contains NaN or infinite values."
                )
        if not 0 < self.variance_fraction <= 1:
            raise ConfigError(
                f"variance_fraction is {self.variance_fraction!r}: expected a "
                "fraction in (0, 1], for example 0.98."
            )

        names = [
            *self.signal_systematics,
            *self.normalisation_systematics,
            *self.toy_variations,
        ]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(
                f"systematic names {duplicates} appear in more than one of "
                "signal_systematics, normalisation_systematics and "
                "toy_variations; give each uncertainty one name."
            )

    @property
    def n_bins(self) -> int:
        """Number of signal-region bins."""
        return int(np.atleast_1d(np.asarray(self.signal_reference)).size)

    @property
    def signal_total(self) -> float:
        """Expected signal events at ``mu = 1``, summed over bins."""
        return float(np.sum(self.signal_reference))


def bin_array(name: str, value: ArrayLike, n_bins: int | None = None) -> FloatArray:
    """Convert a per-bin input to a 1-D float array, checking its length and sign.

    Raises:
        ConfigError: ``value`` is not a number or flat sequence, has another
            length than ``n_bins``, or has negative or non-finite entries.
    """
    try:
        array = np.atleast_1d(np.asarray(value, dtype=float))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} is {value!r}: expected a number per bin.") from err
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(
            f"{name} is {value!r}: expected a number or a flat sequence, one "
            "value per bin."
        )
    if n_bins is not None and array.size != n_bins:
        raise ConfigError(
            f"{name} has length {array.size} but signal_reference has {n_bins} "
            "bins; give every per-bin input one value per bin."
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ConfigError(f"{name} is {value!r}: expected finite values >= 0.")
    return array


def _check_name(group: str, name: object) -> None:
    reserved = {POI, BACKGROUND_MODIFIER}
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"{group} has the name {name!r}: expected a non-empty string."
        )
    if name in reserved:
        raise ConfigError(
            f"{group} uses the name {name!r}, which the workspace reserves for "
            f"{'the POI' if name == POI else 'the background'}; rename it."
        )


# ---------------------------------------------------------------------------
# systematic uncertainties


def reduce_toy_variations(
    toys: np.ndarray, variance_fraction: float = 0.98
) -> np.ndarray:
    """Reduce toy variations to the principal components that explain their variance.

    Principal component analysis of the toys around their mean: the
    eigenvectors of the sample covariance, largest eigenvalue first, each
    scaled to its 1-sigma size ``sqrt(eigenvalue)``. It keeps the minimum
    number of leading components whose eigenvalues add up to
    ``variance_fraction`` of the total variance. Each component's largest
    entry is made positive, so the output does not depend on the sign
    convention of the SVD.

    NOTE: the toy mean is subtracted but not applied to the nominal signal;
    a nonzero mean is logged as a warning.

    Args:
        toys: relative variations, shape (n_toys, n_bins).
        variance_fraction: fraction of the total variance to explain, in (0, 1].

    Returns:
        Principal variations, shape (n_components, n_bins); (0, n_bins) when
        the toys do not vary.

    Raises:
        ConfigError: ``toys`` is not 2-D with at least two rows, or
            ``variance_fraction`` is out of range.
    """
    array = np.asarray(toys, dtype=float)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ConfigError(
            f"toy variations have shape {array.shape}: expected (n_toys >= 2, n_bins)."
        )
    if not 0 < variance_fraction <= 1:
        raise ConfigError(
            f"variance_fraction is {variance_fraction!r}: expected a value in (0, 1]."
        )

    n_toys, n_bins = array.shape
    mean = array.mean(axis=0)
    spread = array.std(axis=0, ddof=1)
    shifted = np.abs(mean) > 3 * spread / math.sqrt(n_toys)
    if np.any(shifted):
        log.warning(
            "toy variations have a mean of %s, more than 3 standard errors from 0 "
            "in bins %s; the nominal signal is not shifted",
            np.round(mean, 5).tolist(),
            np.flatnonzero(shifted).tolist(),
        )

    _, singular, vectors = np.linalg.svd(array - mean, full_matrices=False)
    eigenvalues = singular**2 / (n_toys - 1)
    total = eigenvalues.sum()
    if total <= 0:
        log.warning("toy variations do not vary; no modifier is added")
        return np.zeros((0, n_bins))

    explained = np.cumsum(eigenvalues) / total
    # Rounding can leave the full sum a hair below 1.
    n_keep = int(np.searchsorted(explained, variance_fraction - 1e-12) + 1)
    n_keep = min(n_keep, eigenvalues.size)
    components = vectors[:n_keep] * np.sqrt(eigenvalues[:n_keep])[:, None]
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(n_keep), largest])
    log.debug(
        "PCA of %d toys in %d bins: %d components explain %.4f of the variance",
        n_toys,
        n_bins,
        n_keep,
        explained[n_keep - 1],
    )
    return np.asarray(components * signs[:, None])


@dataclass(frozen=True)
class _Modifiers:
    lognormal: list[tuple[str, float]]  # name, relative uncertainty
    histosys: list[tuple[str, FloatArray]]  # name, relative 1-sigma variation


def _plan_modifiers(inputs: LimitInputs) -> _Modifiers:
    lognormal = [
        (name, float(value))
        for group in (inputs.signal_systematics, inputs.normalisation_systematics)
        for name, value in group.items()
        if value > 0
    ]
    histosys: list[tuple[str, FloatArray]] = []
    for name, toys in inputs.toy_variations.items():
        components = reduce_toy_variations(toys, inputs.variance_fraction)
        histosys.extend((f"{name}_pc{i}", c) for i, c in enumerate(components))

    names = [n for n, _ in lognormal] + [n for n, _ in histosys]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError(
            f"modifier names {clashes} occur twice: a systematic is named like a "
            "principal component '<toy name>_pc<i>'. Rename the systematic."
        )
    return _Modifiers(lognormal, histosys)


# ---------------------------------------------------------------------------
# workspace


def default_poi_max(inputs: LimitInputs, cl: float = 0.90) -> float:
    """Estimate a POI scan range that contains the observed and expected limits.

    The estimate starts from a count ``n``: the larger of the observed count
    and the 99% quantile of the background-only count, with the background
    raised by 2 sigma. The CLs limit for ``n`` events and no background,
    ``chi2.ppf(cl, 2 (n + 1)) / 2``, bounds the limit for any known
    background. At large counts ``n - b_low + 4 sqrt(n + 1) + 3`` is smaller
    and replaces it, with ``b_low`` the background lowered by 2 sigma. That
    number of events times ``1.2 (1 + 2 sigma_signal)``, divided by the
    expected signal, is the range. It is an estimate, so
    :func:`analysis.limit.upper_limit` raises when CLs does not cross
    ``1 - cl`` inside the scan.

    Returns:
        The largest POI value to scan.
    """
    background = float(np.sum(inputs.background))
    sigma_b = float(np.sqrt(np.sum(np.square(inputs.background_uncertainty))))
    observed = 0.0 if inputs.observed is None else float(np.sum(inputs.observed))
    n_high = max(observed, float(stats.poisson.ppf(0.99, background + 2 * sigma_b)))
    zero_background = stats.chi2.ppf(cl, 2 * (n_high + 1)) / 2
    large_counts = max(n_high - max(background - 2 * sigma_b, 0.0), 0.0)
    events = min(zero_background, large_counts + 4 * math.sqrt(n_high + 1) + 3)

    relative = [*inputs.signal_systematics.values()]
    relative += [*inputs.normalisation_systematics.values()]
    for toys in inputs.toy_variations.values():
        relative.append(float(np.max(np.std(np.asarray(toys), axis=0))))
    sigma_s = math.sqrt(sum(r * r for r in relative))
    return float(1.2 * events * (1 + 2 * sigma_s) / inputs.signal_total)


def build_workspace(inputs: LimitInputs, *, poi_upper: float | None = None) -> dict:
    """Build the pyhf JSON workspace of the signal-region counting model.

    Channel ``signal_region`` with the samples ``signal`` and ``background``,
    POI ``mu``, and one measurement ``upper_limit``. For a blinded signal
    region the observations are the background-only Asimov counts (the
    nominal background), so ``pyhf cls`` on the file reports the expected
    CLs as observed.

    Args:
        inputs: yields, observation and uncertainties.
        poi_upper: upper bound of ``mu`` in fits; by default 10 times
            :func:`default_poi_max`.

    Returns:
        The workspace as a JSON-ready dict, validated against pyhf's schema.

    Raises:
        ConfigError: the inputs give an invalid workspace.
    """
    signal = bin_array("signal_reference", inputs.signal_reference)
    n_bins = signal.size
    background = bin_array("background", inputs.background, n_bins)
    uncertainty = bin_array(
        "background_uncertainty", inputs.background_uncertainty, n_bins
    )
    modifiers = _plan_modifiers(inputs)
    upper = poi_upper if poi_upper is not None else 10 * default_poi_max(inputs)

    signal_modifiers: list[dict[str, Any]] = [
        {"name": POI, "type": "normfactor", "data": None}
    ]
    for name, sigma in modifiers.lognormal:
        signal_modifiers.append(
            {
                "name": name,
                "type": "normsys",
                "data": {"hi": 1 + sigma, "lo": 1 / (1 + sigma)},
            }
        )
    for name, variation in modifiers.histosys:
        signal_modifiers.append(
            {
                "name": name,
                "type": "histosys",
                "data": {
                    "hi_data": (signal * (1 + variation)).tolist(),
                    "lo_data": (signal * (1 - variation)).tolist(),
                },
            }
        )
    background_modifiers: list[dict[str, Any]] = []
    if np.any(uncertainty > 0):
        background_modifiers.append(
            {
                "name": BACKGROUND_MODIFIER,
                "type": "shapesys",
                "data": uncertainty.tolist(),
            }
        )

    if inputs.observed is None:
        observations = background.tolist()
    else:
        observations = bin_array("observed", inputs.observed, n_bins).tolist()
    spec = {
        "channels": [
            {
                "name": CHANNEL,
                "samples": [
                    {
                        "name": "signal",
                        "data": signal.tolist(),
                        "modifiers": signal_modifiers,
                    },
                    {
                        "name": "background",
                        "data": background.tolist(),
                        "modifiers": background_modifiers,
                    },
                ],
            }
        ],
        "observations": [{"name": CHANNEL, "data": observations}],
        "measurements": [
            {
                "name": "upper_limit",
                "config": {
                    "poi": POI,
                    "parameters": [{"name": POI, "bounds": [[0.0, float(upper)]]}],
                },
            }
        ],
        "version": "1.0.0",
    }
    validate_workspace(spec)
    return spec


def validate_workspace(spec: Mapping[str, Any]) -> pyhf.Workspace:
    """Validate ``spec`` against pyhf's schema and return it as a Workspace.

    Raises:
        ConfigError: the workspace is invalid; pyhf's error is chained.
    """
    try:
        return pyhf.Workspace(dict(spec))
    except pyhf.exceptions.InvalidSpecification as err:
        raise ConfigError(f"the pyhf workspace is invalid: {err}") from err


def write_workspace(spec: dict, path: Path) -> Path:
    """Write a workspace as pyhf JSON, atomically, after validating it.

    The file is accepted by ``pyhf cls``.

    Returns:
        The path written.

    Raises:
        ConfigError: ``spec`` is not a valid pyhf workspace.
        OutputError: the file could not be written.
    """
    validate_workspace(spec)
    written = write_json(path, spec)
    log.info("wrote pyhf workspace %s", written)
    return written


def counting_model(
    inputs: LimitInputs, *, poi_upper: float | None = None
) -> CountingModel:
    """Build the model of :func:`build_workspace` for the vectorised toy fits."""
    signal = bin_array("signal_reference", inputs.signal_reference)
    background = bin_array("background", inputs.background, signal.size)
    uncertainty = bin_array(
        "background_uncertainty", inputs.background_uncertainty, signal.size
    )
    modifiers = _plan_modifiers(inputs)
    with np.errstate(divide="ignore"):
        tau = np.where(
            (uncertainty > 0) & (background > 0),
            (background / np.where(uncertainty > 0, uncertainty, 1.0)) ** 2,
            0.0,
        )
    if modifiers.histosys:
        variations = np.array([v for _, v in modifiers.histosys], dtype=float)
    else:
        variations = np.zeros((0, signal.size))
    upper = poi_upper if poi_upper is not None else 10 * default_poi_max(inputs)
    return CountingModel(
        signal=signal,
        background=background,
        shapesys_tau=tau,
        lognormal_log_kappa=np.log1p([s for _, s in modifiers.lognormal]),
        histosys_variations=variations,
        mu_upper=float(upper),
        lognormal_names=tuple(n for n, _ in modifiers.lognormal),
        histosys_names=tuple(n for n, _ in modifiers.histosys),
        shapesys_name=BACKGROUND_MODIFIER,
    )
