"""The anytime certificate: the best radius the samples drawn so far support, at any moment
(a deadline, a budget), with the guarantee of CERTIFY.

The Bonferroni-over-looks construction of the sequential procedures (Horvath et al., ICLR
2022; see ``target_radius``): every look's Clopper-Pearson bound gets a level, the levels sum
to at most alpha over any number of looks, so the bounds of all looks hold simultaneously with
probability at least 1 - alpha and the answer may come from any look, chosen in any way: the
one where a deadline stopped sampling, or the best of them. Here alpha is spent on the
samples rather than on the looks (``anytime_levels``): a small fixed share on the first look,
the rest growing with the square of the share of the samples up to a horizon H drawn, so the
looks nearest H, the samples the time left allows, get most of it. Look sizes and H may depend on the time (the
server sizes its looks to the deadline), never on the votes. The candidate c_A comes from
separate selection samples (``selection``).

Format v2 records used level alpha / (k (k + 1)) for look k of a doubling schedule;
``AnytimeV2`` keeps that rule so that they still verify.
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import pairwise

import numpy as np

from ..bounds import lower_confidence_bound, upper_confidence_bound
from ..families import NoiseFamily
from . import base
from .base import ABSTAIN, Look, Outcome, Plan, Procedure

# alpha's share of the first look (whatever follows), and, when the horizon falls short of
# the cap (a deadline), the share kept for looks beyond the horizon.
FIRST_SHARE = Fraction(1, 50)
RESERVE = Fraction(1, 20)
# Every level is shaved by this factor, so that rounding to floats never makes them sum to
# more than alpha.
_SHAVE = 1 - 2.0**-40
# Under a deadline the first look shrinks to what the time left allows, but not below this.
MIN_FIRST_LOOK = 8


def anytime_levels(
    schedule: tuple[int, ...], alpha: float, cap: int, horizon: int = 0
) -> tuple[float, ...]:
    """The level of each look's bound, for looks of ``schedule`` (cumulative sample sizes,
    increasing) under a cap on samples and a horizon H (0: the cap).

    With n_1 the first look: a single possible look (n_1 = cap) gets alpha; otherwise look 1
    gets alpha * FIRST_SHARE and look k >= 2 gets alpha * (1 - FIRST_SHARE) * (G(n_k) -
    G(n_{k-1})) with the spending function G(n) = (1 - rho) * min(1, (n - n_1) / (H - n_1))^2
    + rho * max(0, 1 - H / n), rho = RESERVE when H < cap, else 0 (squared: a look a third of
    the way to H gets a ninth, the look that reaches H from there eight ninths). G is nondecreasing from
    G(n_1) = 0 and below 1, so the levels of any number of looks, at any sizes, sum to at most
    alpha (they telescope to alpha * (FIRST_SHARE + (1 - FIRST_SHARE) * G(n_last))).

    The level of look k depends on n_1, ..., n_k, H, the cap and alpha only, so a look sized
    to the time left (the horizon a deadline allows, fixed before the second look) keeps the
    union bound as long as sizes and H never depend on the votes.
    """
    looks = len(schedule)
    if looks == 0 or schedule[0] < 1 or schedule[-1] > cap:
        raise ValueError(f"looks {list(schedule)} must be positive and at most the cap {cap}")
    if any(b <= a for a, b in pairwise(schedule)):
        raise ValueError(f"looks {list(schedule)} must increase")
    first = schedule[0]
    horizon = horizon or cap
    if not first <= horizon <= cap:
        raise ValueError(f"the horizon {horizon} must lie between the first look {first} and "
                         f"the cap {cap}")  # fmt: skip
    if first == cap:
        return (alpha,)
    rho = RESERVE if horizon < cap else Fraction(0)

    def spent(n: int) -> Fraction:
        if n <= first:
            return Fraction(0)
        share = Fraction(1) if horizon == first else min(Fraction(n - first, horizon - first), 1)
        beyond = 1 - Fraction(horizon, n) if n > horizon else Fraction(0)
        return (1 - rho) * share**2 + rho * beyond

    shares = [FIRST_SHARE] + [
        (1 - FIRST_SHARE) * (spent(b) - spent(a)) for a, b in pairwise(schedule)
    ]
    return tuple(alpha * float(share) * _SHAVE for share in shares)


def anytime_look(
    count_a: int, n: int, look: int, schedule: tuple[int, ...], family: NoiseFamily,
    scale: float, alpha: float, cap: int, horizon: int = 0, tolerance: float = 0.0,
) -> Look:  # fmt: skip
    """Look ``look`` of ``schedule`` (its first ``look`` sizes are those made; n =
    schedule[look - 1]): the Clopper-Pearson lower bound on p_A at the level
    ``anytime_levels`` gives this look, and its radius.

    Guarantee: with probability at least 1 - alpha over the noise, every radius this
    procedure reports, at whatever look it stops and whichever look it answers with (the best
    one), is a certified radius of g at x for c_A (the union bound over the looks' levels).

    The decision (a stopping rule only; it does not touch validity): "abstain" when even the
    upper bound at this level is below 1/2 (no number of samples would certify); "certified"
    at the cap with a positive radius, and when ``tolerance`` > 0, the radius is positive and
    drawing on to the horizon (the cap once past it), with the same proportion of votes for
    c_A, would raise the radius by at most ``tolerance`` at the level such a look would get;
    else "continue" ("abstain" at the cap). A radius of 0 never meets the tolerance.
    """
    made = tuple(schedule[:look])
    if not 1 <= look <= len(schedule) or made[-1] != n:
        raise ValueError("look must lie in [1, len(schedule)] and n be that look's size")
    level = anytime_levels(made, alpha, cap, horizon)[-1]
    p_a_lower = lower_confidence_bound(count_a, n, level)
    radius = family.radius(p_a_lower, scale) if p_a_lower >= 0.5 else 0.0
    if upper_confidence_bound(count_a, n, level) < 0.5:
        return Look(base.ABSTAINED, p_a_lower, 0.0, level)
    if n >= cap:
        return Look(base.CERTIFIED if radius > 0 else base.ABSTAINED, p_a_lower, radius, level)
    if tolerance > 0 and radius > 0:
        target = (horizon or cap) if n < (horizon or cap) else cap
        target_level = anytime_levels((*made, target), alpha, cap, horizon)[-1]
        projected_count = min(target, round(count_a * target / n))
        projected = family.radius(
            max(lower_confidence_bound(projected_count, target, target_level), 0.5), scale
        )
        if projected - radius <= tolerance:
            return Look(base.CERTIFIED, p_a_lower, radius, level)
    return Look(base.CONTINUE, p_a_lower, radius, level)


def untimed_schedule(first: int, cap: int, tolerance: float) -> tuple[int, ...]:
    """The looks without a deadline: the first look, then the cap (one look at the cap gets
    almost all of alpha); with a tolerance, the doubling schedule, so that sampling can stop
    once the tolerance is met."""
    if tolerance > 0:
        return base.look_schedule(first, cap)
    return tuple(sorted({min(first, cap), cap}))


def timed_look_size(drawn: int, cap: int, first: int, fits: int, tolerance: float,
                    horizon: int = 0, looks: int = 0, calibrated: bool = False) -> int:  # fmt: skip
    """The next look's size under a deadline (0: no further look), from the samples drawn so
    far in ``looks`` looks, the cap, the first look, ``fits`` (how many more samples the time
    left allows, as measured), whether that measure comes from large draws, and the
    tolerance: never from the votes.

    The first look: ``first``, shrunk to what fits but not below MIN_FIRST_LOOK. Then all that
    fits, in one look (its level then gets nearly all of alpha, and the deadline cuts it where
    the measure was optimistic); while the time per sample is not yet measured on a large draw,
    a third of it first, to measure it. With a tolerance, at most double the samples. Past
    the horizon, a look only if it at least doubles the samples (alpha beyond the horizon is
    small); none that adds fewer than a tenth of them."""
    if drawn == 0:
        return max(1, min(first, cap, max(MIN_FIRST_LOOK, fits)))
    fits = max(fits, 0)
    if looks == 1 and not calibrated and fits // 3 >= max(1, math.ceil(drawn / 10)):
        fits //= 3
    size = min(cap, drawn + fits)
    if tolerance > 0:
        size = min(size, 2 * drawn)
    if horizon and drawn >= horizon and size < 2 * drawn:
        return 0
    if size - drawn < max(1, math.ceil(drawn / 10)):
        return 0
    return size


def best(outcomes: list[Outcome]) -> int:
    """The index of the answer to give among the outcomes of the looks made: the largest
    radius (the latest of equals), or the last look when none certifies. Any look may answer,
    since the bounds of all looks hold together (``anytime_look``)."""
    certified = [i for i, o in enumerate(outcomes) if not o.abstain and o.radius > 0]
    if not certified:
        return len(outcomes) - 1
    return max(certified, key=lambda i: (outcomes[i].radius, i))


class Anytime(Procedure):
    """The best certificate the samples drawn before the deadline (or n) support."""

    name = "anytime"
    sequential = True
    anytime = True
    timed = True
    adaptive_selection = True
    options = ("tolerance",)

    def check(self, plan: Plan) -> None:
        super().check(plan)
        if not (math.isfinite(plan.tolerance) and plan.tolerance >= 0):
            raise ValueError(f"tolerance must be a finite number >= 0, got {plan.tolerance}")

    def schedule(self, plan: Plan) -> tuple[int, ...]:
        return untimed_schedule(plan.first_look, plan.cap, plan.tolerance)

    def schedule_problems(self, plan: Plan, schedule: tuple[int, ...], timed: bool) -> list[str]:
        """Timed looks follow the clock, not the plan: a verifier can check only that they
        increase from a first look of at least MIN_FIRST_LOOK (or the cap) and at most the
        plan's, up to the cap, with the horizon between the first look and the cap."""
        if not timed:
            return super().schedule_problems(plan, schedule, timed)
        first = min(plan.first_look, plan.cap)
        if not schedule or not min(first, MIN_FIRST_LOOK) <= schedule[0] <= first:
            return [f"timed looks {list(schedule)} should start at a first look of at most "
                    f"{first}"]  # fmt: skip
        try:
            anytime_levels(schedule, plan.alpha, plan.cap, plan.horizon)
        except ValueError as exc:
            return [str(exc)]
        return []

    def look(self, plan, schedule, k, selection, counts) -> Outcome:
        """A look that does not decide to abstain answers with its radius when positive, so
        sampling may stop at any look, decided or not."""
        n = base.check_look(schedule, k, counts)
        candidate = int(np.argmax(selection))
        look = anytime_look(int(counts[candidate]), n, k, schedule, plan.family, plan.scale,
                            plan.alpha, plan.cap, plan.horizon, plan.tolerance)  # fmt: skip
        if look.decision != base.ABSTAINED and look.radius > 0:
            return Outcome(look.decision, candidate, candidate, look.radius, look.p_a_lower, 0.0,
                           look.look_alpha)  # fmt: skip
        return Outcome(look.decision, ABSTAIN, candidate, 0.0, look.p_a_lower, 0.0, look.look_alpha)


# --- format v2 (kept so that its records still verify) -------------------------------------


def anytime_alpha(look: int, alpha: float) -> float:
    """Format v2: alpha_k = alpha / (k (k + 1)) for the k-th look (k = 1, 2, ...): they sum to
    alpha over any number of looks."""
    if look < 1:
        raise ValueError("looks are numbered from 1")
    return alpha / (look * (look + 1))


def anytime_look_v2(
    count_a: int, n: int, look: int, family: NoiseFamily, scale: float, alpha: float,
    tolerance: float = 0.0,
) -> Look:  # fmt: skip
    """Format v2's look: the Clopper-Pearson lower bound at level ``anytime_alpha(look,
    alpha)`` and its radius (same guarantee as ``anytime_look``; its tolerance rule stopped
    too early and is not used to answer any more)."""
    level = anytime_alpha(look, alpha)
    p_a_lower = lower_confidence_bound(count_a, n, level)
    radius = family.radius(p_a_lower, scale)
    if upper_confidence_bound(count_a, n, level) < 0.5:
        return Look(base.ABSTAINED, p_a_lower, 0.0, level)
    return Look(base.CONTINUE, p_a_lower, radius, level)


class AnytimeV2(Anytime):
    """Format v2's anytime procedure (doubling looks, level alpha / (k (k + 1))): verifies the
    records made with it; the server no longer answers with it."""

    timed = False
    adaptive_selection = False

    def schedule(self, plan: Plan) -> tuple[int, ...]:
        return base.look_schedule(plan.first_look, plan.cap)

    def schedule_problems(self, plan, schedule, timed) -> list[str]:
        return Procedure.schedule_problems(self, plan, schedule, timed)

    def look(self, plan, schedule, k, selection, counts) -> Outcome:
        n = base.check_look(schedule, k, counts)
        candidate = int(np.argmax(selection))
        look = anytime_look_v2(int(counts[candidate]), n, k, plan.family, plan.scale, plan.alpha)
        if look.decision != base.ABSTAINED and look.radius > 0:
            return Outcome(look.decision, candidate, candidate, look.radius, look.p_a_lower, 0.0,
                           look.look_alpha)  # fmt: skip
        return Outcome(look.decision, ABSTAIN, candidate, 0.0, look.p_a_lower, 0.0, look.look_alpha)


PROCEDURE = Anytime()
PROCEDURE_V2 = AnytimeV2()
