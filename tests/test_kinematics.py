"""Kinematics of the generator against closed-form results."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import kinematics as kin

M_TAU = 1.77693
M_PI = 0.13957039
M_MU = 0.1056583755


def test_two_body_momentum_matches_closed_form() -> None:
    # tau -> pi nu: p* = (m_tau^2 - m_pi^2) / (2 m_tau) for a massless neutrino.
    expected = (M_TAU**2 - M_PI**2) / (2 * M_TAU)
    assert kin.two_body_momentum(M_TAU, M_PI, 0.0) == pytest.approx(expected, rel=1e-12)


def test_two_body_decay_conserves_four_momentum() -> None:
    rng = np.random.default_rng(1)
    parent = kin.four_vectors(rng.normal(0, 3, (1000, 3)), M_TAU)
    first, second = kin.decay_two_body(parent, M_PI, 0.0, rng)
    # Rounding of doubles only: 1e-9 GeV.
    np.testing.assert_allclose(first + second, parent, atol=1e-9)
    np.testing.assert_allclose(kin.invariant_mass(first), M_PI, atol=1e-6)


def test_boost_preserves_invariant_mass() -> None:
    rng = np.random.default_rng(2)
    p4 = kin.four_vectors(rng.normal(0, 1, (500, 3)), 0.5)
    beta = rng.uniform(-0.5, 0.5, (500, 3))
    np.testing.assert_allclose(kin.invariant_mass(kin.boost(p4, beta)), 0.5, atol=1e-9)


def test_three_body_decay_conserves_and_fills_dalitz_uniformly() -> None:
    rng = np.random.default_rng(3)
    n = 200_000
    parent = np.tile([0.0, 0.0, 0.0, M_TAU], (n, 1))
    a, b, c = kin.decay_three_body(parent, (M_MU, M_MU, M_MU), rng)
    np.testing.assert_allclose(a + b + c, parent, atol=1e-9)

    # For uniform phase space the m12^2 density is proportional to the
    # Dalitz-plot width at that m12^2, i.e. to q(M -> m12 m3) * p(m12 -> m1 m2)
    # / m12. Compare histogram and analytic shape (4 sigma per bin, Poisson).
    m12 = kin.invariant_mass(a + b)
    edges = np.linspace((2 * M_MU) ** 2, (M_TAU - M_MU) ** 2, 21)
    counts, _ = np.histogram(m12**2, edges)
    centres = np.sqrt(0.5 * (edges[1:] + edges[:-1]))
    width = (
        kin.two_body_momentum(M_TAU, centres, M_MU)
        * kin.two_body_momentum(centres, M_MU, M_MU)
        / centres
    )
    expected = width / width.sum() * n
    inner = slice(1, -1)  # edge bins hold the steep threshold behaviour
    pulls = (counts[inner] - expected[inner]) / np.sqrt(expected[inner])
    assert np.max(np.abs(pulls)) < 4.0


def test_thrust_back_to_back_is_one() -> None:
    p = np.array([[1.0, 2.0, 0.5]])
    assert kin.thrust([p, -p])[0] == pytest.approx(1.0)


def test_thrust_mercedes_is_two_thirds() -> None:
    # Three equal momenta at 120 degrees in a plane: T = 2/3 exactly.
    angles = np.deg2rad([0.0, 120.0, 240.0])
    momenta = [np.array([[np.cos(a), np.sin(a), 0.0]]) for a in angles]
    assert kin.thrust(momenta)[0] == pytest.approx(2.0 / 3.0)
