"""Certified radii through a live server against a model whose exact radius is known.

For f(x) = [w.x + b > 0] the smoothed classifier is f itself and its exact certified radius
at x is |w.x + b| / ||w||: P[f(x + d) = f(x)] = Phi(|w.x + b| / (sigma ||w||)), so
sigma * Phi^-1(p_A) is exactly that distance. CERTIFY's radius is a lower bound of it
(with probability 1 - alpha), and approaches it as n grows.
"""

from __future__ import annotations

import numpy as np
from conftest import LINEAR_SHAPE, linear_weights

DISTANCES = (0.1, 0.2, 0.35, 0.5)  # signed: the points lie on both sides of the boundary


def point_at(distance: float, side: int) -> np.ndarray:
    """A point at the given L2 distance from the boundary, on the given side, inside [0, 1]."""
    w, b = linear_weights()
    x0 = np.full(LINEAR_SHAPE, 0.5, dtype=np.float64)  # on the boundary
    x = x0 + side * distance * w / np.linalg.norm(w)
    assert x.min() >= 0 and x.max() <= 1
    return x.astype(np.float32)


def true_radius(x: np.ndarray) -> float:
    w, b = linear_weights()
    return abs(float(np.sum(w.astype(np.float64) * x)) + b) / float(np.linalg.norm(w))


SAMPLE_SIZES = (1_000, 10_000, 100_000)


def test_radius_never_exceeds_truth_and_approaches_it(client) -> None:
    gaps = {n: [] for n in SAMPLE_SIZES}
    for side in (1, -1):
        for distance in DISTANCES:
            x = point_at(distance, side)
            truth = true_radius(x)
            for n in SAMPLE_SIZES:
                seed = hash((side, distance, n)) % 2**32
                r = client.predict("linear", x, n0=100, n=n, alpha=0.001, seed=seed)
                assert r.prediction == (1 if side > 0 else 0)
                assert r.radius <= truth, (distance, n, r.radius, truth)
                gaps[n].append(truth - r.radius)
    mean_gap = [float(np.mean(gaps[n])) for n in SAMPLE_SIZES]
    # The confidence bound tightens like 1/sqrt(n): the mean gap shrinks at every step.
    assert mean_gap[0] > mean_gap[1] > mean_gap[2], mean_gap
    assert mean_gap[2] < 0.01, mean_gap


def test_unseeded_radii_stay_below_truth(client) -> None:
    x = point_at(0.3, 1)
    truth = true_radius(x)
    radii = [client.predict("linear", x, n=20_000).radius for _ in range(10)]
    assert max(radii) <= truth
    assert min(radii) > 0.8 * truth
    assert len(set(radii)) > 1  # fresh noise each time


def test_point_on_the_boundary_abstains(client) -> None:
    x = np.full(LINEAR_SHAPE, 0.5, dtype=np.float32)
    r = client.predict("linear", x, n=10_000, seed=3)
    assert r.abstain and r.prediction == -1 and r.radius == 0.0 and r.label == ""
    assert r.p_a_lower < 0.5
