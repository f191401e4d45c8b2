"""The anytime certificate: the best radius the samples drawn so far support, at any moment
(a deadline, a budget), with the guarantee of CERTIFY.

Looks at a doubling schedule fixed in advance; look k uses level alpha / (k (k + 1)), and
those levels sum to alpha over any number of looks, so the Clopper-Pearson bounds of all
looks hold simultaneously with probability at least 1 - alpha and the caller may stop at any
look, for any reason. The candidate c_A comes from n0 separate selection samples.
"""

from __future__ import annotations

import math

import numpy as np

from ..bounds import lower_confidence_bound, upper_confidence_bound
from ..families import NoiseFamily
from . import base
from .base import ABSTAIN, Look, Outcome, Plan, Procedure


def anytime_alpha(look: int, alpha: float) -> float:
    """alpha_k = alpha / (k (k + 1)) for the k-th look (k = 1, 2, ...): they sum to alpha over
    any number of looks, so the anytime procedure needs no cap to be valid."""
    if look < 1:
        raise ValueError("looks are numbered from 1")
    return alpha / (look * (look + 1))


def anytime_look(
    count_a: int, n: int, look: int, family: NoiseFamily, scale: float, alpha: float,
    tolerance: float = 0.0,
) -> Look:  # fmt: skip
    """One look: the Clopper-Pearson lower bound at level ``anytime_alpha(look, alpha)`` and
    its radius.

    Guarantee: with probability at least 1 - alpha over the noise, every radius this
    procedure reports, at whatever look it stops, is a certified radius of g at x for c_A.

    The decision (a stopping rule only; it does not touch validity): "abstain" when even the
    upper bound at this level is below 1/2 (no number of samples would certify); "certified"
    when ``tolerance`` > 0 and the next look, twice the samples with the same proportion of
    votes for c_A, would raise the radius by at most ``tolerance``; else "continue".
    """
    level = anytime_alpha(look, alpha)
    p_a_lower = lower_confidence_bound(count_a, n, level)
    radius = family.radius(p_a_lower, scale)
    if upper_confidence_bound(count_a, n, level) < 0.5:
        return Look(base.ABSTAINED, p_a_lower, 0.0, level)
    if tolerance > 0:
        next_level = anytime_alpha(look + 1, alpha)
        projected = family.radius(lower_confidence_bound(2 * count_a, 2 * n, next_level), scale)
        if projected - radius <= tolerance:
            return Look(base.CERTIFIED if radius > 0 else base.ABSTAINED, p_a_lower, radius, level)
    return Look(base.CONTINUE, p_a_lower, radius, level)


class Anytime(Procedure):
    """The best certificate the samples drawn before the deadline (or n) support."""

    name = "anytime"
    sequential = True
    anytime = True
    options = ("tolerance",)

    def check(self, plan: Plan) -> None:
        super().check(plan)
        if not (math.isfinite(plan.tolerance) and plan.tolerance >= 0):
            raise ValueError(f"tolerance must be a finite number >= 0, got {plan.tolerance}")

    def schedule(self, plan: Plan) -> tuple[int, ...]:
        return base.look_schedule(plan.first_look, plan.cap)

    def look(self, plan, schedule, k, selection, counts) -> Outcome:
        """A look that does not decide to abstain answers with its radius when positive, so
        sampling may stop at any look, decided or not."""
        n = base.check_look(schedule, k, counts)
        candidate = int(np.argmax(selection))
        look = anytime_look(
            int(counts[candidate]), n, k, plan.family, plan.scale, plan.alpha, plan.tolerance
        )
        if look.decision != base.ABSTAINED and look.radius > 0:
            return Outcome(look.decision, candidate, candidate, look.radius, look.p_a_lower, 0.0,
                           look.look_alpha)  # fmt: skip
        return Outcome(look.decision, ABSTAIN, candidate, 0.0, look.p_a_lower, 0.0, look.look_alpha)


PROCEDURE = Anytime()
