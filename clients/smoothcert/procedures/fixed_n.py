"""CERTIFY (Cohen, Rosenfeld and Kolter, ICML 2019, Algorithm 1 / ``Smooth.certify`` of the
reference ``core.py``), for any noise family."""

from __future__ import annotations

import math

import numpy as np

from ..bounds import lower_confidence_bound
from ..errors import NumericalError
from ..families import NoiseFamily
from .base import ABSTAIN, ABSTAINED, CERTIFIED, Outcome, Procedure, check_look


def certify(
    selection_counts: np.ndarray, estimation_counts: np.ndarray, family: NoiseFamily,
    scale: float, alpha: float,
) -> Outcome:  # fmt: skip
    """CERTIFY: ``selection_counts`` come from n0 noisy samples and only pick the candidate
    class c_A; ``estimation_counts`` come from n further, independent samples. With p_A_lower
    the (1 - alpha) Clopper-Pearson lower bound on P[f(x + noise) = c_A], the result is c_A with
    the family's radius of p_A_lower (Gaussian: sigma * Phi^-1(p_A_lower), an L2 radius;
    uniform: 2 lambda (p_A_lower - 1/2), an L1 radius), or ABSTAIN when p_A_lower < 1/2. A
    radius that is not a finite number raises NumericalError: no certificate.

    Guarantee: with probability at least 1 - alpha over the noise, if a class is returned,
    the smoothed classifier g predicts it at every x' within the radius of x in the family's
    norm.
    """
    candidate = int(np.argmax(selection_counts))
    n = int(np.sum(estimation_counts))
    count = int(estimation_counts[candidate])
    p_a_lower = lower_confidence_bound(count, n, alpha)
    if p_a_lower < 0.5:
        return Outcome(ABSTAINED, ABSTAIN, candidate, 0.0, p_a_lower, 0.0, alpha)
    radius = family.radius(p_a_lower, scale)
    if not math.isfinite(radius):
        raise NumericalError(
            f"the {family.name} radius for scale={scale!r}, k={count}, n={n}, alpha={alpha!r} "
            f"came out as {radius!r}; no certificate was made"
        )
    return Outcome(CERTIFIED, candidate, candidate, radius, p_a_lower, 0.0, alpha)


class FixedN(Procedure):
    """Exactly n estimation samples, one look: CERTIFY."""

    name = "fixed_n"

    def look(self, plan, schedule, k, selection, counts) -> Outcome:
        check_look(schedule, k, counts)
        return certify(selection, counts, plan.family, plan.scale, plan.alpha)


PROCEDURE = FixedN()
