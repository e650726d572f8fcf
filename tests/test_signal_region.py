"""Tests of the signal-shape fits, the PCA ellipse, the interval and the sidebands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import special, stats

from analysis.errors import ConfigError, FitError
from analysis.signal_region import (
    TAU_MASS_GEV,
    EllipseRegion,
    IntervalRegion,
    Sidebands,
    fit_signal_shape,
    make_signal_region,
    plot_signal_fit,
    plot_signal_region,
    region_from_dict,
)

SEED = 20240611
# M resolution ~5.5 MeV, Delta E ~18 MeV, correlation 0.3: the Belle II numbers.
SIGMA_M, SIGMA_DE, RHO = 0.0055, 0.018, 0.3
COVARIANCE = np.array(
    [
        [SIGMA_M**2, RHO * SIGMA_M * SIGMA_DE],
        [RHO * SIGMA_M * SIGMA_DE, SIGMA_DE**2],
    ]
)


def bifurcated_sample(
    rng: np.random.Generator, n: int, mu: float, left: float, right: float
) -> np.ndarray:
    """Draw from a bifurcated Gaussian: a half-normal on each side of mu."""
    on_left = rng.random(n) < left / (left + right)
    magnitude = np.abs(rng.normal(size=n))
    return np.where(on_left, mu - left * magnitude, mu + right * magnitude)


def gaussian_pairs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.multivariate_normal([TAU_MASS_GEV, 0.0], COVARIANCE, n)


def test_bifurcated_fit_recovers_parameters() -> None:
    rng = np.random.default_rng(SEED)
    truth = {"mu": TAU_MASS_GEV, "sigma_left": 0.008, "sigma_right": 0.005}
    mass = bifurcated_sample(rng, 5000, *truth.values())

    shape = fit_signal_shape(mass, None, model="bifurcated_gaussian")

    assert shape.ndim == 1
    assert shape.mass.status["valid"]
    for name, value in truth.items():
        pull = (shape.mass.values[name] - value) / shape.mass.errors[name]
        # Pulls of a correct fit follow N(0, 1), so |pull| < 3 fails once in 370 seeds.
        assert abs(pull) < 3, (name, shape.mass.values[name], value)


def test_crystal_ball_fit_recovers_parameters() -> None:
    rng = np.random.default_rng(SEED + 1)
    truth = {"mu": 0.0, "sigma": SIGMA_DE, "alpha": 1.5, "n": 3.0}
    delta_e = stats.crystalball.rvs(
        truth["alpha"],
        truth["n"],
        truth["mu"],
        truth["sigma"],
        size=5000,
        random_state=rng,
    )
    mass = rng.normal(TAU_MASS_GEV, SIGMA_M, delta_e.size)

    shape = fit_signal_shape(mass, delta_e, model="crystal_ball")

    assert shape.delta_e is not None
    for name, value in truth.items():
        pull = (shape.delta_e.values[name] - value) / shape.delta_e.errors[name]
        # Pulls of a correct fit follow N(0, 1), so |pull| < 3 fails once in 370 seeds.
        assert abs(pull) < 3, (name, shape.delta_e.values[name], value)


def test_uniform_weights_leave_fit_unchanged() -> None:
    rng = np.random.default_rng(SEED + 2)
    mass = rng.normal(TAU_MASS_GEV, SIGMA_M, 3000)

    plain = fit_signal_shape(mass, None)
    weighted = fit_signal_shape(mass, None, np.full(mass.size, 0.2))

    # Scaling by sum(w)/sum(w^2) makes constant weights equivalent to none. The
    # tolerance is MIGRAD's convergence, far below the statistical error.
    for name in plain.mass.values:
        assert weighted.mass.values[name] == pytest.approx(
            plain.mass.values[name], rel=1e-4
        )
        assert weighted.mass.errors[name] == pytest.approx(
            plain.mass.errors[name], rel=1e-2
        )


def test_fit_call_limit_raises_fit_error() -> None:
    rng = np.random.default_rng(SEED + 3)
    mass = rng.normal(TAU_MASS_GEV, SIGMA_M, 2000)

    with pytest.raises(FitError, match="did not converge") as caught:
        fit_signal_shape(mass, None, sample="tau3mu_signal_MC", ncall=5)

    message = str(caught.value)
    assert "tau3mu_signal_MC" in message
    assert "call limit reached=True" in message


def test_fit_with_too_few_events_raises() -> None:
    with pytest.raises(FitError, match="5 candidates"):
        fit_signal_shape(np.linspace(1.77, 1.78, 5), None, sample="tiny")


def test_non_finite_mass_raises_config_error() -> None:
    mass = np.array([1.77, np.nan, 1.78])
    with pytest.raises(ConfigError, match="index 1"):
        fit_signal_shape(mass, None)


def test_unknown_model_suggests_name() -> None:
    mass = np.linspace(1.76, 1.79, 100)
    with pytest.raises(ConfigError, match="crystal_ball"):
        fit_signal_shape(mass, None, model="crystalball")  # type: ignore[arg-type]


@pytest.mark.parametrize("n_sigma", [1.0, 2.0, 3.0])
def test_ellipse_holds_gaussian_fraction(n_sigma: float) -> None:
    rng = np.random.default_rng(SEED + 4)
    region = EllipseRegion.from_covariance([TAU_MASS_GEV, 0.0], COVARIANCE, n_sigma)
    points = gaussian_pairs(rng, 200_000)

    fraction = region.contains(points[:, 0], points[:, 1]).mean()

    expected = 1.0 - math.exp(-(n_sigma**2) / 2.0)
    binomial_sigma = math.sqrt(expected * (1.0 - expected) / points.shape[0])
    # Only binomial fluctuation separates the two, and 4 sigma keeps the test stable.
    assert abs(fraction - expected) < 4 * binomial_sigma


def test_ellipse_boundary_at_mahalanobis_radius() -> None:
    region = EllipseRegion.from_covariance([TAU_MASS_GEV, 0.0], COVARIANCE, 2.5)
    mass, delta_e = region.boundary(64)
    offsets = np.column_stack([mass - TAU_MASS_GEV, delta_e])

    distance2 = np.einsum("ni,ij,nj->n", offsets, np.linalg.inv(COVARIANCE), offsets)

    # The boundary is x^T C^-1 x = k^2 exactly, and 1e-9 allows for rounding.
    np.testing.assert_allclose(distance2, 2.5**2, rtol=1e-9)
    assert region.area == pytest.approx(
        math.pi * 2.5**2 * math.sqrt(np.linalg.det(COVARIANCE))
    )


def test_ellipse_quadrature_integrates_linear_function() -> None:
    region = EllipseRegion.from_covariance([TAU_MASS_GEV, 0.0], COVARIANCE, 3.0)
    mass, delta_e, weights = region.quadrature()

    # A linear function integrates to area * value at the center (symmetry).
    integral = np.sum(weights * (2.0 + 3.0 * mass - 5.0 * delta_e))
    expected = region.area * (2.0 + 3.0 * TAU_MASS_GEV)
    assert integral == pytest.approx(expected, rel=1e-12)


def test_fitted_ellipse_holds_gaussian_fraction() -> None:
    rng = np.random.default_rng(SEED + 5)
    sample = gaussian_pairs(rng, 20_000)
    shape = fit_signal_shape(sample[:, 0], sample[:, 1])
    region = make_signal_region(shape, 2.0)
    fresh = gaussian_pairs(rng, 200_000)

    fraction = region.contains(fresh[:, 0], fresh[:, 1]).mean()

    # 1 - exp(-2) = 0.8647. The covariance from 20k candidates is known to
    # about 1%, which moves the fraction by less than 0.01.
    assert fraction == pytest.approx(1.0 - math.exp(-2.0), abs=0.01)
    assert shape.correlation == pytest.approx(RHO, abs=0.03)
    assert isinstance(region, EllipseRegion)
    assert region.n_sigma == 2.0


def test_core_covariance_ignores_low_tails() -> None:
    rng = np.random.default_rng(SEED + 6)
    sample = gaussian_pairs(rng, 20_000)
    tail = rng.random(sample.shape[0]) < 0.15
    sample[tail, 0] -= rng.exponential(0.02, tail.sum())
    sample[tail, 1] -= rng.exponential(0.08, tail.sum())

    for model in ("bifurcated_gaussian", "crystal_ball"):
        shape = fit_signal_shape(sample[:, 0], sample[:, 1], model=model)  # type: ignore[arg-type]
        widths = np.sqrt(np.diag(shape.covariance))
        # Tail candidates that start inside the core widen it by a few percent.
        # The plain standard deviations are 2.1x (M) and 2.7x (Delta E) too wide.
        assert widths[0] == pytest.approx(SIGMA_M, rel=0.06), model
        assert widths[1] == pytest.approx(SIGMA_DE, rel=0.06), model
        assert shape.correlation == pytest.approx(RHO, abs=0.04), model
        assert shape.center[0] == pytest.approx(TAU_MASS_GEV, abs=0.3 * SIGMA_M)


def test_interval_holds_gaussian_fraction() -> None:
    rng = np.random.default_rng(SEED + 7)
    shape = fit_signal_shape(rng.normal(TAU_MASS_GEV, SIGMA_M, 20_000), None)
    region = make_signal_region(shape, 1.5)
    fresh = rng.normal(TAU_MASS_GEV, SIGMA_M, 200_000)

    fraction = region.contains(fresh).mean()

    assert isinstance(region, IntervalRegion)
    # A 1D Gaussian has erf(k / sqrt 2) within k sigma. 0.01 covers the 1% width error.
    assert fraction == pytest.approx(special.erf(1.5 / math.sqrt(2.0)), abs=0.01)


@pytest.mark.parametrize(
    "region",
    [
        EllipseRegion((1.777, 0.001), (0.05, 0.01), 1.2, n_sigma=2.0),
        IntervalRegion(1.75, 1.80),
    ],
)
def test_region_json_round_trip(region: EllipseRegion | IntervalRegion) -> None:
    restored = region_from_dict(json.loads(json.dumps(region.to_dict())))
    assert restored == region


def test_region_from_dict_rejects_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="ellipse"):
        region_from_dict({"kind": "elipse"})


def test_sideband_mask_excludes_blinded_box() -> None:
    rng = np.random.default_rng(SEED + 8)
    region = EllipseRegion.from_covariance([TAU_MASS_GEV, 0.0], COVARIANCE, 3.0)
    sidebands = Sidebands(mass_gap=0.01, delta_e_gap=0.02)
    mass = rng.uniform(1.2, 2.3, 50_000)
    delta_e = rng.uniform(-1.1, 0.6, 50_000)

    mask = sidebands.mask(mass, delta_e, region)

    box_m, box_de = sidebands.blind_box(region)
    assert box_de is not None
    in_box = (
        (mass >= box_m[0])
        & (mass <= box_m[1])
        & (delta_e >= box_de[0])
        & (delta_e <= box_de[1])
    )
    in_window = (mass >= 1.3) & (mass <= 2.2) & (delta_e >= -1.0) & (delta_e <= 0.5)
    assert not (mask & region.contains(mass, delta_e)).any()
    assert not (mask & in_box).any()
    assert np.array_equal(mask, in_window & ~in_box)
    band_area = sum(
        (m[1] - m[0]) * (d[1] - d[0])
        for m, d in sidebands.bands(region)
        if d is not None
    )
    assert band_area == pytest.approx(
        0.9 * 1.5 - (box_m[1] - box_m[0]) * (box_de[1] - box_de[0])
    )


def test_sidebands_reject_region_outside_window() -> None:
    region = IntervalRegion(1.60, 1.70)
    with pytest.raises(ConfigError, match="does not fit"):
        Sidebands(mass_range=(1.65, 1.90)).mask(np.array([1.8]), None, region)


def test_ellipse_needs_delta_e() -> None:
    region = EllipseRegion((1.777, 0.0), (0.05, 0.01), 0.0)
    with pytest.raises(ConfigError, match="delta_e"):
        region.contains(np.array([1.777]))


def test_cms_signal_mass_fit(shared_data: Path) -> None:
    uproot = pytest.importorskip("uproot")
    path = shared_data / "cms-tau3mu" / "TMVA_file_A.root"
    with uproot.open(path) as root_file:
        table = root_file["dataset_A/TestTree"].arrays(
            ["classID", "tripletMass"], library="np"
        )
    mass = table["tripletMass"][table["classID"] == 0].astype(np.float64)

    shape = fit_signal_shape(mass, None, sample="CMS tau3mu signal")
    region = make_signal_region(shape, 2.0)

    # Loose bounds: a resolution of 0.5-1.5% of the tau mass (9-27 MeV) and a
    # peak within 4 MeV of the tau mass cover any sane CMS calibration.
    assert shape.mass.peak == pytest.approx(TAU_MASS_GEV, abs=0.004)
    assert 0.009 < math.sqrt(shape.covariance[0, 0]) < 0.027
    # The interval is +-2 sigma of a near-Gaussian core: about 95% of signal.
    assert 0.85 < region.contains(mass).mean() < 0.97


def test_signal_plots_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED + 9)
    sample = gaussian_pairs(rng, 3000)
    shape = fit_signal_shape(sample[:, 0], sample[:, 1])
    region = make_signal_region(shape, 2.0)
    background = (rng.uniform(1.3, 2.2, 500), rng.uniform(-1.0, 0.5, 500))
    shape_1d = fit_signal_shape(sample[:, 0], None)

    paths = [
        plot_signal_fit(shape, sample[:, 0], sample[:, 1], None, tmp_path / "fit.png"),
        plot_signal_region(
            region,
            Sidebands(),
            (sample[:, 0], sample[:, 1]),
            background,
            tmp_path / "plane.png",
        ),
        plot_signal_region(
            make_signal_region(shape_1d, 2.0),
            Sidebands(mass_range=(1.65, 1.90)),
            (sample[:, 0], None),
            (rng.uniform(1.65, 1.90, 500), None),
            tmp_path / "mass.png",
        ),
    ]

    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        assert path.stat().st_size > 10_000, path
    assert not list(tmp_path.glob(".*.tmp"))
