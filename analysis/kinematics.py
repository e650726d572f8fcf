"""Vectorised relativistic kinematics for the ntuple generator.

Four-vectors are numpy arrays of shape ``(n, 4)`` ordered ``(px, py, pz, E)``
in GeV. Every function works on whole arrays, so a million decays take a
fraction of a second.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def two_body_momentum(mass: FloatArray | float, m1: float, m2: float) -> FloatArray:
    """Return the daughter momentum (GeV) of a two-body decay in the parent frame.

    Uses the Kallen function; masses below threshold give zero momentum.
    """
    mass = np.asarray(mass, dtype=np.float64)
    kallen = (mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)
    return np.sqrt(np.clip(kallen, 0.0, None)) / (2.0 * mass)


def isotropic_directions(n: int, rng: np.random.Generator) -> FloatArray:
    """Return ``n`` unit vectors distributed uniformly over the sphere."""
    cos_theta = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    out = np.empty((n, 3))
    out[:, 0] = sin_theta * np.cos(phi)
    out[:, 1] = sin_theta * np.sin(phi)
    out[:, 2] = cos_theta
    return out


def four_vectors(momentum: FloatArray, mass: FloatArray | float) -> FloatArray:
    """Build four-vectors from three-momenta ``(n, 3)`` and masses (GeV)."""
    out = np.empty((momentum.shape[0], 4))
    out[:, :3] = momentum
    out[:, 3] = np.sqrt(
        np.einsum("ij,ij->i", momentum, momentum) + np.asarray(mass) ** 2
    )
    return out


def boost(p4: FloatArray, beta: FloatArray) -> FloatArray:
    """Boost four-vectors ``p4`` by velocity vectors ``beta`` (shape ``(n, 3)``).

    The result is ``p4`` seen from a frame moving with ``-beta``. This takes
    momenta from a parent's rest frame into the frame where the parent moves
    with velocity ``beta``.
    """
    b2 = np.einsum("ij,ij->i", beta, beta)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = np.einsum("ij,ij->i", beta, p4[:, :3])
    safe_b2 = np.where(b2 > 0.0, b2, 1.0)
    gamma2 = np.where(b2 > 0.0, (gamma - 1.0) / safe_b2, 0.0)
    out = np.empty_like(p4)
    out[:, :3] = p4[:, :3] + (gamma2 * bp + gamma * p4[:, 3])[:, None] * beta
    out[:, 3] = gamma * (p4[:, 3] + bp)
    return out


def velocity(p4: FloatArray) -> FloatArray:
    """Return the velocity vectors ``p / E`` of four-vectors ``p4``."""
    return p4[:, :3] / p4[:, 3:4]


def invariant_mass(p4: FloatArray) -> FloatArray:
    """Return the invariant mass (GeV); tiny negative squares from rounding are 0."""
    m2 = p4[:, 3] ** 2 - np.einsum("ij,ij->i", p4[:, :3], p4[:, :3])
    return np.sqrt(np.clip(m2, 0.0, None))


def decay_two_body(
    parent: FloatArray,
    m1: float | FloatArray,
    m2: float,
    rng: np.random.Generator,
) -> tuple[FloatArray, FloatArray]:
    """Decay each parent isotropically in its rest frame into two daughters.

    Args:
        parent: parent four-vectors in the frame of interest.
        m1: mass of the first daughter (GeV), scalar or one per parent.
        m2: mass of the second daughter (GeV).
        rng: random generator.

    Returns:
        The two daughters' four-vectors in the parent's frame of interest.
    """
    n = parent.shape[0]
    mass = invariant_mass(parent)
    m1_arr = np.broadcast_to(np.asarray(m1, dtype=np.float64), (n,))
    q = _kallen_momentum(mass, m1_arr, m2)
    direction = isotropic_directions(n, rng)
    first = four_vectors(direction * q[:, None], m1_arr)
    second = four_vectors(-direction * q[:, None], m2)
    beta = velocity(parent)
    return boost(first, beta), boost(second, beta)


def _kallen_momentum(mass: FloatArray, m1: FloatArray, m2: float) -> FloatArray:
    kallen = (mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)
    return np.sqrt(np.clip(kallen, 0.0, None)) / (2.0 * mass)


def decay_three_body(
    parent: FloatArray,
    masses: tuple[float, float, float],
    rng: np.random.Generator,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Decay each parent into three daughters uniformly over phase space.

    The invariant mass ``m12`` of the first pair is drawn by rejection with
    density proportional to ``q(M -> m12 m3) * p(m12 -> m1 m2)``, which makes
    the Dalitz plot uniform; the pair then decays isotropically.
    """
    m1, m2, m3 = masses
    n = parent.shape[0]
    mass = invariant_mass(parent)
    low = m1 + m2
    high = mass - m3

    m12 = np.empty(n)
    todo = np.arange(n)
    # The density is bounded by its value with both momenta at their maxima.
    bound = two_body_momentum(mass, low, m3) * two_body_momentum(high, m1, m2)
    while todo.size:
        trial = rng.uniform(low, high[todo])
        density = _kallen_momentum(mass[todo], trial, m3) * two_body_momentum(
            trial, m1, m2
        )
        accept = rng.uniform(0.0, bound[todo]) < density
        m12[todo[accept]] = trial[accept]
        todo = todo[~accept]

    pair, third = decay_two_body(parent, m12, m3, rng)
    first, second = decay_two_body(pair, m1, m2, rng)
    return first, second, third


def thrust(momenta: list[FloatArray]) -> FloatArray:
    """Return the event thrust of a few particles per event, exactly.

    The thrust is ``max_n sum_i |p_i . n| / sum_i |p_i|``. The maximum over
    unit vectors n equals the maximum over sign choices of ``|sum_i s_i p_i|``
    with ``s_i = +-1``, which is true also when the visible momenta do not
    balance. With up to about ten particles the ``2**(k-1)`` sign choices are
    enumerated directly.

    Args:
        momenta: one ``(n, 3)`` or ``(n, 4)`` array per particle.
    """
    three = [p[:, :3] for p in momenta]
    total = np.sum([np.linalg.norm(p, axis=1) for p in three], axis=0)
    best = np.zeros(three[0].shape[0])
    k = len(three)
    for mask in range(1 << (k - 1)):
        signed = np.zeros_like(three[0])
        for i in range(k):
            signed += three[i] if mask >> i & 1 else -three[i]
        best = np.maximum(best, np.linalg.norm(signed, axis=1))
    return best / total
