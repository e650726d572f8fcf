"""Tests of the background estimates: sideband fit, MC, ABCD, closure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from analysis.background import (
    BackgroundEstimate,
    closure_test,
    estimate_abcd,
    estimate_from_mc,
    estimate_from_sidebands,
    poisson_upper_limit,
    validate_on_mc,
)
from analysis.errors import ConfigError, PhysicsError
from analysis.signal_region import (
    TAU_MASS_GEV,
    EllipseRegion,
    IntervalRegion,
    Sidebands,
    fit_signal_shape,
    make_signal_region,
)

SEED = 20240612
MASS_WINDOW = (1.3, 2.2)
DELTA_E_WINDOW = (-1.0, 0.5)
SLOPE = -2.0  # 1/GeV, so the background falls by a factor 6 across the window
DELTA_E_C1 = 0.4  # linear Delta E term, density 1 + c1 * t with t in [-1, 1]
COVARIANCE = np.array(
    [[0.0055**2, 0.3 * 0.0055 * 0.018], [0.3 * 0.0055 * 0.018, 0.018**2]]
)
REGION = EllipseRegion.from_covariance([TAU_MASS_GEV, 0.0], COVARIANCE, 3.0)


def mass_density(mass: float) -> float:
    low, high = MASS_WINDOW
    return SLOPE * math.exp(SLOPE * (mass - low)) / math.expm1(SLOPE * (high - low))


def delta_e_density(delta_e: float) -> float:
    low, high = DELTA_E_WINDOW
    t = 2.0 * (delta_e - low) / (high - low) - 1.0
    return (1.0 + DELTA_E_C1 * t) / (high - low)


def draw_background(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw M by inverting its CDF and Delta E by accept-reject."""
    low, high = MASS_WINDOW
    u = rng.random(n)
    mass = low + np.log1p(u * np.expm1(SLOPE * (high - low))) / SLOPE
    accepted: list[np.ndarray] = []
    while sum(a.size for a in accepted) < n:
        t = rng.uniform(-1.0, 1.0, 2 * n)
        keep = rng.random(2 * n) * (1.0 + DELTA_E_C1) < 1.0 + DELTA_E_C1 * t
        accepted.append(t[keep])
    t = np.concatenate(accepted)[:n]
    de_low, de_high = DELTA_E_WINDOW
    delta_e = de_low + 0.5 * (t + 1.0) * (de_high - de_low)
    return mass, delta_e


def true_fraction_in_ellipse(region: EllipseRegion) -> float:
    """Integrate the true density over the ellipse with scipy's dblquad.

    The Delta E limits at each M are the roots of the ellipse's quadratic, an
    independent route from the quadrature nodes the estimate uses.
    """
    a, b = region.semi_axes
    cos, sin = math.cos(region.angle), math.sin(region.angle)
    m0, de0 = region.center
    # (u/a)^2 + (v/b)^2 = 1 with u = c dm + s dde, v = -s dm + c dde, as a
    # quadratic in dde: A dde^2 + B dde + C = 0.
    quad_a = (sin / a) ** 2 + (cos / b) ** 2

    def limits(mass: float) -> tuple[float, float]:
        dm = mass - m0
        quad_b = 2.0 * dm * (cos * sin / a**2 - sin * cos / b**2)
        quad_c = (cos * dm / a) ** 2 + (sin * dm / b) ** 2 - 1.0
        root = math.sqrt(max(quad_b**2 - 4.0 * quad_a * quad_c, 0.0))
        return de0 + (-quad_b - root) / (2 * quad_a), de0 + (-quad_b + root) / (
            2 * quad_a
        )

    (m_low, m_high), _ = region.bounding_box()
    value, _ = integrate.dblquad(
        lambda de, m: mass_density(m) * delta_e_density(de),
        m_low,
        m_high,
        lambda m: limits(m)[0],
        lambda m: limits(m)[1],
        epsabs=1e-13,
        epsrel=1e-10,
    )
    return float(value)


@pytest.mark.parametrize(
    ("mass_model", "degree"), [("exponential", 1), ("polynomial", 2)]
)
def test_sideband_estimate_matches_truth(mass_model: str, degree: int) -> None:
    rng = np.random.default_rng(SEED)
    n_total = 5000
    mass, delta_e = draw_background(rng, n_total)

    estimate = estimate_from_sidebands(
        mass,
        delta_e,
        None,
        REGION,
        Sidebands(),
        mass_model=mass_model,  # type: ignore[arg-type]
        delta_e_model="linear",
        mass_degree=degree,
    )

    truth = n_total * true_fraction_in_ellipse(REGION)
    assert not estimate.is_upper_bound
    assert estimate.method == "sideband_fit"
    # The pull against the expected yield is N(0, 1) if the uncertainty is
    # right; 3 standard deviations keep the test stable for a fixed seed.
    assert abs(estimate.value - truth) < 3 * estimate.uncertainty, (
        estimate.value,
        truth,
    )
    assert estimate.uncertainty < 0.1 * truth


def test_sideband_fit_recovers_shape() -> None:
    rng = np.random.default_rng(SEED + 1)
    mass, delta_e = draw_background(rng, 20_000)

    estimate = estimate_from_sidebands(
        mass, delta_e, None, REGION, Sidebands(), delta_e_model="linear"
    )

    parameters = estimate.details["parameters"]
    errors = np.sqrt(np.diag(estimate.details["covariance"]))
    # Pulls of a correct fit follow N(0, 1), so |pull| < 3 fails once in 370 seeds.
    assert abs(parameters["slope"] - SLOPE) < 3 * errors[0]
    assert abs(parameters["delta_e_c1"] - DELTA_E_C1) < 3 * errors[1]


def test_sideband_uncertainty_matches_toy_spread() -> None:
    rng = np.random.default_rng(SEED + 2)
    truth_fraction = true_fraction_in_ellipse(REGION)
    pulls = []
    for _ in range(80):
        n_total = rng.poisson(800)
        mass, delta_e = draw_background(rng, n_total)
        estimate = estimate_from_sidebands(
            mass, delta_e, None, REGION, Sidebands(), delta_e_model="linear"
        )
        pulls.append((estimate.value - 800 * truth_fraction) / estimate.uncertainty)

    # With 80 toys the mean of N(0, 1) pulls has error 0.11 and their standard
    # deviation 0.08, so each bound sits 3.5 to 4 of those errors away.
    assert abs(np.mean(pulls)) < 0.4
    assert 0.7 < np.std(pulls) < 1.3


def test_sideband_estimate_for_interval() -> None:
    rng = np.random.default_rng(SEED + 3)
    mass, _ = draw_background(rng, 4000)
    region = IntervalRegion(1.75, 1.80)

    estimate = estimate_from_sidebands(mass, None, None, region, Sidebands())

    low, high = MASS_WINDOW
    fraction = math.expm1(SLOPE * 0.05) * math.exp(SLOPE * (1.75 - low))
    truth = 4000 * fraction / math.expm1(SLOPE * (high - low))
    assert abs(estimate.value - truth) < 3 * estimate.uncertainty
    assert estimate.details["delta_e_model"] is None


def test_zero_sideband_events_give_bound() -> None:
    sidebands = Sidebands()
    empty = np.array([], dtype=np.float64)

    estimate = estimate_from_sidebands(
        empty, empty, None, REGION, sidebands, unit_weight=0.5
    )

    box_m, box_de = sidebands.blind_box(REGION)
    assert box_de is not None
    sideband_area = 0.9 * 1.5 - (box_m[1] - box_m[0]) * (box_de[1] - box_de[0])
    # 90% CL Poisson upper limit for zero events is -ln(0.1) = 2.3026.
    expected = -math.log(0.1) * 0.5 * REGION.area / sideband_area
    assert estimate.is_upper_bound
    assert estimate.n_sideband == 0
    assert estimate.uncertainty == 0.0
    assert estimate.value == pytest.approx(expected, rel=1e-9)


def test_few_sideband_events_use_uniform_shape() -> None:
    sidebands = Sidebands()
    mass = np.array([1.40, 1.55, 2.00, 2.10])
    delta_e = np.array([-0.8, 0.3, -0.2, 0.1])

    estimate = estimate_from_sidebands(mass, delta_e, None, REGION, sidebands)

    box_m, box_de = sidebands.blind_box(REGION)
    assert box_de is not None
    sideband_area = 0.9 * 1.5 - (box_m[1] - box_m[0]) * (box_de[1] - box_de[0])
    ratio = REGION.area / sideband_area
    assert not estimate.is_upper_bound
    assert "uniform" in estimate.details["shape"]
    assert estimate.value == pytest.approx(4 * ratio, rel=1e-9)
    assert estimate.uncertainty == pytest.approx(2 * ratio, rel=1e-9)
    # Garwood 90% upper limit for n = 4 is 7.9936 (chi2.ppf(0.9, 10) / 2).
    assert estimate.details["upper_limit"] == pytest.approx(7.9936 * ratio, rel=1e-4)


def test_negative_sideband_weights_raise() -> None:
    mass = np.array([1.40, 1.55, 2.00])
    delta_e = np.array([-0.8, 0.3, -0.2])
    with pytest.raises(ConfigError, match="negative weights"):
        estimate_from_sidebands(
            mass, delta_e, np.array([1.0, -2.0, 0.5]), REGION, Sidebands()
        )


def test_poisson_upper_limit_values() -> None:
    for n_observed in (0, 1, 2, 5):
        # The classical limit is the mean whose Poisson CDF at n is 1 - CL.
        expected = optimize.brentq(
            lambda mean, n=n_observed: stats.poisson.cdf(n, mean) - 0.10, 1e-6, 50.0
        )
        assert poisson_upper_limit(n_observed, 0.90) == pytest.approx(
            expected, rel=1e-8
        )
    assert poisson_upper_limit(0, 0.90) == pytest.approx(-math.log(0.1))
    with pytest.raises(ConfigError, match="confidence level"):
        poisson_upper_limit(0, 1.5)


def test_mc_estimate_sums_weights() -> None:
    region = IntervalRegion(1.75, 1.80)
    mass = np.array([1.70, 1.76, 1.77, 1.79, 1.85])
    weights = np.array([9.0, 0.5, 1.5, 2.0, 9.0])

    estimate = estimate_from_mc(mass, None, weights, region)

    assert estimate.value == pytest.approx(4.0)
    assert estimate.uncertainty == pytest.approx(math.sqrt(0.25 + 2.25 + 4.0))
    assert estimate.n_sideband == 3
    assert not estimate.is_upper_bound


def test_mc_estimate_without_events_is_bound() -> None:
    region = IntervalRegion(1.75, 1.80)
    mass = np.array([1.70, 1.85])

    estimate = estimate_from_mc(mass, None, np.array([0.2, 0.4]), region)

    assert estimate.is_upper_bound
    # Mean weight 0.3 times the zero-event 90% limit 2.3026.
    assert estimate.value == pytest.approx(0.3 * -math.log(0.1))


def abcd_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Candidates per region: A 2, B 3, C 4, D 6, and two outside every region.
    in_region = np.array(
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool
    )
    in_sideband = np.array(
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool
    )
    bdt = np.array(
        [
            0.9,
            0.8,
            0.5,
            0.4,
            0.35,
            0.9,
            0.85,
            0.75,
            0.95,
            0.5,
            0.4,
            0.45,
            0.6,
            0.31,
            0.5,
            0.9,
            0.1,
        ]
    )
    weights = np.ones(bdt.size)
    return in_region, in_sideband, bdt, weights


def test_abcd_matches_hand_computation() -> None:
    in_region, in_sideband, bdt, weights = abcd_inputs()

    estimate = estimate_abcd(in_region, in_sideband, bdt, weights, cut=0.7, loose=0.3)

    # N_A = N_B * N_C / N_D = 3 * 4 / 6, relative error sqrt(1/3 + 1/4 + 1/6).
    assert estimate.details["counts"] == {"A": 2, "B": 3, "C": 4, "D": 6}
    assert estimate.value == pytest.approx(2.0)
    assert estimate.uncertainty == pytest.approx(2.0 * math.sqrt(1 / 3 + 1 / 4 + 1 / 6))
    assert estimate.n_sideband == 4


def test_abcd_empty_c_gives_bound() -> None:
    in_region, in_sideband, bdt, weights = abcd_inputs()
    bdt = np.where(in_sideband & (bdt > 0.7), 0.65, bdt)

    estimate = estimate_abcd(in_region, in_sideband, bdt, weights, cut=0.7, loose=0.3)

    assert estimate.is_upper_bound
    assert estimate.details["upper_bound_regions"] == ["C"]
    # N_B * 2.3026 / N_D with N_D = 10 after moving C into the loose band.
    assert estimate.value == pytest.approx(3 * -math.log(0.1) / 10)


def test_abcd_empty_d_raises() -> None:
    in_region, in_sideband, bdt, weights = abcd_inputs()
    with pytest.raises(PhysicsError, match="lower the loose BDT edge"):
        estimate_abcd(in_region, in_sideband, bdt, weights, cut=0.7, loose=0.69)


def test_abcd_rejects_bad_inputs() -> None:
    in_region, in_sideband, bdt, weights = abcd_inputs()
    with pytest.raises(ConfigError, match="below the cut"):
        estimate_abcd(in_region, in_sideband, bdt, weights, cut=0.5, loose=0.5)
    with pytest.raises(ConfigError, match="disjoint"):
        estimate_abcd(in_region, in_region, bdt, weights, cut=0.7, loose=0.3)


def test_closure_pull_by_hand() -> None:
    estimate = BackgroundEstimate(5.0, 1.0, "abcd", 10)
    truth = BackgroundEstimate(3.0, 1.0, "mc", 30)

    result = closure_test(estimate, truth, max_pull=2.0)

    assert result["pull"] == pytest.approx(2.0 / math.sqrt(2.0))
    assert result["ratio"] == pytest.approx(5.0 / 3.0)
    assert result["passed"]


def test_closure_upper_bound_passes_above_truth() -> None:
    bound = BackgroundEstimate(0.5, 0.0, "sideband_fit", 0, is_upper_bound=True)

    assert closure_test(bound, BackgroundEstimate(0.4, 0.1, "mc", 2))["passed"]
    assert not closure_test(bound, BackgroundEstimate(0.6, 0.1, "mc", 3))["passed"]


def test_validation_on_factorising_mc() -> None:
    rng = np.random.default_rng(SEED + 4)
    n_total = 60_000
    mass, delta_e = draw_background(rng, n_total)
    # BDT independent of (M, Delta E), so ABCD closes by construction.
    bdt = rng.beta(1.0, 3.0, n_total)
    weights = np.full(n_total, 0.25)
    region = EllipseRegion.from_covariance([TAU_MASS_GEV, 0.0], COVARIANCE, 5.0)

    result = validate_on_mc(
        mass,
        delta_e,
        weights,
        region,
        Sidebands(),
        bdt=bdt,
        cut=0.3,
        loose=0.1,
        delta_e_model="linear",
        max_pull=3.0,
    )

    # max_pull 3: a correct estimate fails once in 370 seeds.
    assert result["sideband_fit"]["passed"], result["sideband_fit"]
    assert result["abcd"]["passed"], result["abcd"]
    assert result["truth"]["n_sideband"] > 20


def test_cms_sidebands_real_data(shared_data: Path) -> None:
    uproot = pytest.importorskip("uproot")
    path = shared_data / "cms-tau3mu" / "TMVA_file_A.root"
    with uproot.open(path) as root_file:
        table = root_file["dataset_A/TestTree"].arrays(
            ["classID", "tripletMass"], library="np"
        )
    mass = table["tripletMass"].astype(np.float64)
    signal = mass[table["classID"] == 0]
    data = mass[table["classID"] == 1]
    region = make_signal_region(
        fit_signal_shape(signal, None, sample="CMS signal"), 2.0
    )
    assert isinstance(region, IntervalRegion)
    # The data were blinded between 1.73 and 1.82 GeV, so the gap widens the
    # blinded box to cover that range.
    gap = region.low - 1.73 + 1e-4
    sidebands = Sidebands(mass_range=(1.65, 1.90), mass_gap=gap)

    estimate = estimate_from_sidebands(
        data, None, None, region, sidebands, sample="CMS data"
    )

    # Independent check: a flat density through the sidebands, which the CMS
    # data follow to a few percent (their 10 MeV bins vary by +-8%).
    box_m, _ = sidebands.blind_box(region)
    in_sidebands = sidebands.mask(data, None, region)
    sideband_width = 0.25 - (box_m[1] - box_m[0])
    flat = in_sidebands.sum() * region.width / sideband_width
    assert estimate.n_sideband == int(in_sidebands.sum())
    assert estimate.value == pytest.approx(flat, rel=0.05)
    assert estimate.uncertainty < 0.1 * estimate.value
