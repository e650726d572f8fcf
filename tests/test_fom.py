"""Tests of the Punzi figure of merit, the cut scans and their plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize

from analysis.errors import ConfigError
from analysis.fom import (
    plot_joint_scan,
    plot_punzi_scan,
    punzi_fom,
    scan_cut,
    scan_cut_and_size,
    smooth_background,
    tabulate_cut,
    tabulate_cut_and_size,
)
from analysis.signal_region import TAU_MASS_GEV, fit_signal_shape, make_signal_region

SEED = 20240613
# Toy curves: efficiency 1 - c and background B0 exp(-k c) over cuts c in [0, 1).
B0, K = 50.0, 8.0


def toy_efficiency(cut: np.ndarray | float) -> np.ndarray:
    return np.asarray(1.0 - np.asarray(cut))


def toy_background(cut: np.ndarray | float) -> np.ndarray:
    return np.asarray(B0 * np.exp(-K * np.asarray(cut)))


def test_punzi_simple_by_hand() -> None:
    # 0.2 / (3/2 + sqrt(4)) = 0.2 / 3.5
    assert punzi_fom(0.2, 4.0, 3.0) == pytest.approx(0.2 / 3.5)
    # a = 1.28, the one-sided 90% quantile: 0.2 / (0.64 + 2)
    assert punzi_fom(0.2, 4.0, 1.28) == pytest.approx(0.2 / 2.64)


def test_punzi_full_by_hand() -> None:
    # a = 3, b = 1.28, B = 4:
    # 9/8 + 9 * 1.6384 / 13 + 3 * 2 + 0.64 * sqrt(1.6384 + 24 + 16)
    minimum_signal = 1.125 + 1.1342769 + 6.0 + 0.64 * math.sqrt(41.6384)
    assert punzi_fom(0.2, 4.0, 3.0, formula="full", b=1.28) == pytest.approx(
        0.2 / minimum_signal, rel=1e-7
    )
    assert punzi_fom(0.2, 4.0, 3.0, formula="full") == pytest.approx(
        punzi_fom(0.2, 4.0, 3.0, formula="full", b=3.0)
    )


def test_punzi_rejects_invalid_inputs() -> None:
    with pytest.raises(ConfigError, match="index"):
        punzi_fom([0.1, 0.2], [1.0, -1.0])
    with pytest.raises(ConfigError, match="a must be"):
        punzi_fom(0.1, 1.0, 0.0)
    with pytest.raises(ConfigError, match="full"):
        punzi_fom(0.1, 1.0, formula="fulll")  # type: ignore[arg-type]


@pytest.mark.parametrize("a", [1.28, 3.0, 5.0])
def test_scan_finds_analytic_optimum(a: float) -> None:
    cuts = np.linspace(0.0, 0.99, 991)

    result = scan_cut(cuts, toy_efficiency(cuts), toy_background(cuts), a=a)

    # d/dc [(1 - c) / (a/2 + s)] = 0 with s = sqrt(B0) exp(-K c / 2) gives
    # (1 - c) (K/2) s = a/2 + s, solved here by brentq.
    def derivative(c: float) -> float:
        s = math.sqrt(B0) * math.exp(-K * c / 2.0)
        return (1.0 - c) * 0.5 * K * s - (0.5 * a + s)

    optimum = optimize.brentq(derivative, 0.0, 0.99)
    step = cuts[1] - cuts[0]
    # The grid resolves the optimum to one step.
    assert abs(result.best_cut - optimum) <= step
    assert result.best_efficiency == pytest.approx(1.0 - result.best_cut)


def test_full_formula_scan_matches_minimiser() -> None:
    cuts = np.linspace(0.0, 0.99, 991)
    b = 1.28

    result = scan_cut(
        cuts, toy_efficiency(cuts), toy_background(cuts), a=3.0, formula="full", b=b
    )

    def negative_fom(c: float) -> float:
        root = math.sqrt(B0 * math.exp(-K * c))
        minimum = (
            9 / 8
            + 9 * b**2 / 13
            + 3 * root
            + b / 2 * math.sqrt(b**2 + 12 * root + 4 * root**2)
        )
        return -(1.0 - c) / minimum

    optimum = optimize.minimize_scalar(
        negative_fom, bounds=(0.0, 0.99), method="bounded"
    ).x
    # Bounded Brent converges to 1e-5; the grid step is 1e-3.
    assert abs(result.best_cut - optimum) <= cuts[1] - cuts[0]


def mc_counts(rng: np.random.Generator, cuts: np.ndarray, n_mc: int) -> np.ndarray:
    """Draw BDT outputs of background MC from K exp(-K x) and count above each cut."""
    bdt = rng.exponential(1.0 / K, n_mc)
    return (bdt[None, :] > cuts[:, None]).sum(axis=1).astype(np.float64)


def test_guard_skips_low_statistics_cuts() -> None:
    cuts = np.linspace(0.0, 0.99, 100)
    efficiency = toy_efficiency(cuts)
    counts = np.round(toy_background(cuts) / 0.1)
    background = counts * 0.1
    # A downward fluctuation: no MC candidate at cut 0.6, where four are expected.
    counts[60], background[60] = 0.0, 0.0

    unguarded = scan_cut(cuts, efficiency, background)
    guarded = scan_cut(
        cuts, efficiency, background, n_mc_events=counts, min_background_mc_events=10
    )

    assert unguarded.n_mc_events is None
    assert unguarded.best_index == 60
    assert guarded.n_mc_events is not None
    assert guarded.n_mc_events[guarded.best_index] >= 10
    assert not guarded.allowed[60]
    assert guarded.stability["excluded_low_mc_points"] == int((counts < 10).sum())


def test_guard_without_counts_raises() -> None:
    cuts = np.linspace(0.0, 0.9, 10)
    with pytest.raises(ConfigError, match="n_mc_events"):
        scan_cut(
            cuts, toy_efficiency(cuts), toy_background(cuts), min_background_mc_events=5
        )


def test_scan_rejects_unsorted_cuts() -> None:
    with pytest.raises(ConfigError, match="increasing"):
        scan_cut([0.5, 0.4, 0.6], [0.5, 0.6, 0.4], [1.0, 2.0, 0.5])


def test_smoothing_follows_exponential_truth() -> None:
    rng = np.random.default_rng(SEED)
    cuts = np.linspace(0.0, 1.2, 49)
    n_mc, weight = 1000, 0.05
    counts = mc_counts(rng, cuts, n_mc)

    smooth, sigma = smooth_background(cuts, counts * weight, counts, degree=1)

    truth = n_mc * weight * np.exp(-K * cuts)
    filled = counts >= 20
    # Within 3 standard deviations of the fit where the MC has statistics.
    assert np.all(np.abs(smooth[filled] - truth[filled]) < 3 * sigma[filled])
    # Beyond the last MC candidate the extrapolation of a pure exponential
    # stays within 50% of the truth.
    empty = counts == 0
    assert empty.any()
    np.testing.assert_allclose(smooth[empty], truth[empty], rtol=0.5)


def test_scan_with_smoothing_near_optimum() -> None:
    rng = np.random.default_rng(SEED + 1)
    cuts = np.linspace(0.0, 0.95, 96)
    weight = 0.05
    counts = mc_counts(rng, cuts, int(B0 / weight))

    result = scan_cut(
        cuts,
        toy_efficiency(cuts),
        counts * weight,
        a=3.0,
        n_mc_events=counts,
        smooth="exponential",
        smooth_degree=1,
    )

    def derivative(c: float) -> float:
        s = math.sqrt(B0) * math.exp(-K * c / 2.0)
        return (1.0 - c) * 0.5 * K * s - (1.5 + s)

    optimum = optimize.brentq(derivative, 0.0, 0.95)
    # The FOM is flat near its maximum, so the fitted slope's error (8.5
    # against a true 8 for this seed) moves the chosen cut by less than 0.04.
    assert abs(result.best_cut - optimum) < 0.04
    assert result.smooth == "exponential"


def test_stability_report_from_toys() -> None:
    rng = np.random.default_rng(SEED + 2)
    cuts = np.linspace(0.0, 0.95, 96)
    weight = 0.05
    counts = mc_counts(rng, cuts, int(B0 / weight))
    arguments = {
        "a": 3.0,
        "n_mc_events": counts,
        "min_background_mc_events": 10,
        "n_toys": 100,
    }

    first = scan_cut(cuts, toy_efficiency(cuts), counts * weight, **arguments)  # type: ignore[arg-type]
    second = scan_cut(cuts, toy_efficiency(cuts), counts * weight, **arguments)  # type: ignore[arg-type]

    stability = first.stability
    assert stability == second.stability
    assert stability["toys"] == 100
    low, high = stability["plateau_cut_range"]
    assert low <= first.best_cut <= high
    assert stability["fom_uncertainty_at_best"] > 0
    # A smooth toy has a broad maximum: most toys stay inside the plateau and
    # the chosen cut moves by well under 0.1.
    assert stability["toy_fraction_in_plateau"] > 0.5
    assert stability["toy_best_cut_std"] < 0.1


def test_nested_counts_survive_toys_round_trip() -> None:
    from analysis.fom import _cells_from_totals, _totals_from_cells

    rng = np.random.default_rng(SEED + 3)
    cells = rng.poisson(3.0, size=(6, 4)).astype(np.float64)
    totals = _totals_from_cells(cells)

    # Nesting: totals fall with the cut (rows) and grow with the size (columns).
    assert np.all(np.diff(totals, axis=0) <= 0)
    assert np.all(np.diff(totals, axis=1) >= 0)
    np.testing.assert_array_equal(_cells_from_totals(totals), cells)


def test_joint_scan_finds_analytic_optimum() -> None:
    cuts = np.linspace(0.0, 0.95, 191)
    sizes = np.linspace(1.0, 4.0, 61)
    cut_grid, size_grid = np.meshgrid(cuts, sizes, indexing="ij")
    # Efficiency of a 2D Gaussian inside k sigma; flat background scales with
    # the ellipse area, proportional to k^2.
    efficiency = (1.0 - cut_grid) * (1.0 - np.exp(-(size_grid**2) / 2.0))
    background = 5.0 * size_grid**2 * np.exp(-K * cut_grid)

    result = scan_cut_and_size(cuts, sizes, efficiency, background, a=3.0)

    def negative_fom(point: np.ndarray) -> float:
        c, k = point
        eps = (1.0 - c) * (1.0 - math.exp(-(k**2) / 2.0))
        return -eps / (1.5 + math.sqrt(5.0 * k**2 * math.exp(-K * c)))

    optimum = optimize.minimize(
        negative_fom, x0=[0.5, 2.0], bounds=[(0.0, 0.95), (1.0, 4.0)], method="L-BFGS-B"
    ).x
    # The grid resolves each coordinate to one step.
    assert abs(result.best_cut - optimum[0]) <= cuts[1] - cuts[0] + 1e-9
    assert abs(result.best_n_sigma - optimum[1]) <= sizes[1] - sizes[0] + 1e-9
    assert result.working_point()["n_sigma"] == result.best_n_sigma


def test_tabulate_cut_by_hand() -> None:
    signal_bdt = np.array([0.1, 0.5, 0.7, 0.9])
    background_bdt = np.array([0.05, 0.2, 0.6, 0.8])

    efficiency, background, counts = tabulate_cut(
        [0.0, 0.5, 0.75],
        signal_bdt,
        background_bdt,
        signal_weights=np.array([1.0, 1.0, 2.0, 1.0]),
        background_weights=np.array([0.5, 0.5, 0.25, 0.75]),
        n_signal_generated=10.0,
    )

    # bdt > cut passes: signal weights above 0.5 are 2 + 1, above 0.75 only 1.
    np.testing.assert_allclose(efficiency, [0.5, 0.3, 0.1])
    np.testing.assert_allclose(background, [2.0, 1.0, 0.75])
    np.testing.assert_array_equal(counts, [4, 2, 1])


def test_tabulate_grid_is_nested() -> None:
    rng = np.random.default_rng(SEED + 4)
    covariance = np.array([[0.0055**2, 0.0], [0.0, 0.018**2]])
    signal = rng.multivariate_normal([TAU_MASS_GEV, 0.0], covariance, 20_000)
    shape = fit_signal_shape(signal[:, 0], signal[:, 1])
    signal_bdt = rng.random(signal.shape[0])
    background_mass = rng.uniform(1.70, 1.85, 5000)
    background_delta_e = rng.uniform(-0.1, 0.1, 5000)
    background_bdt = rng.random(5000)
    cuts = np.array([0.0, 0.3, 0.6])
    sizes = np.array([1.0, 2.0, 3.0])

    efficiency, background, counts = tabulate_cut_and_size(
        shape,
        cuts,
        sizes,
        (signal[:, 0], signal[:, 1], signal_bdt, None),
        (background_mass, background_delta_e, background_bdt, None),
    )

    assert np.all(np.diff(counts, axis=0) <= 0)
    assert np.all(np.diff(counts, axis=1) >= 0)
    # At cut 0 every candidate passes, so the efficiency is the Gaussian
    # fraction 1 - exp(-k^2/2); 0.01 covers the fitted covariance's error.
    np.testing.assert_allclose(
        efficiency[0], 1.0 - np.exp(-(sizes**2) / 2.0), atol=0.01
    )
    region = make_signal_region(shape, 2.0)
    inside = region.contains(background_mass, background_delta_e)
    assert background[1, 1] == float((inside & (background_bdt > 0.3)).sum())


def test_scan_results_serialise_and_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED + 5)
    cuts = np.linspace(0.0, 0.95, 40)
    weight = 0.05
    counts = mc_counts(rng, cuts, int(B0 / weight))
    single = scan_cut(
        cuts,
        toy_efficiency(cuts),
        counts * weight,
        n_mc_events=counts,
        min_background_mc_events=5,
        smooth="exponential",
        n_toys=20,
    )
    sizes = np.array([1.5, 2.0, 2.5, 3.0])
    fraction = 1.0 - np.exp(-(sizes**2) / 2.0)
    joint = scan_cut_and_size(
        cuts,
        sizes,
        toy_efficiency(cuts)[:, None] * fraction[None, :],
        (counts * weight)[:, None] * sizes[None, :] ** 2,
        n_toys=0,
    )

    for result in (single, joint):
        text = json.dumps(result.to_dict())
        assert json.loads(text)["working_point"]["bdt_cut"] == result.best_cut
    paths = [
        plot_punzi_scan(single, tmp_path / "scan.png"),
        plot_joint_scan(joint, tmp_path / "joint.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        assert path.stat().st_size > 10_000, path
