"""Sequential certification: decide with as few samples as the evidence needs, as pure
functions on counts, keeping CERTIFY's exact guarantee.

Both procedures look at the estimation counts at a schedule of sample sizes fixed in advance
(``look_schedule``: n_1 = first, doubling, up to the cap) and spend the failure probability
alpha over the looks, so that the Clopper-Pearson bounds at all looks hold *simultaneously*
with probability at least 1 - alpha (the union bound). A data-dependent stopping time then
picks one of those bounds; it never recomputes a fixed-n bound at a data-dependent n, which
would not be valid. This is the Bonferroni-over-stages construction of Horvath et al. (ICLR
2022, "Boosting randomized smoothing with variance reduced classifiers" / adaptive sampling,
with early abstention); see docs/architecture.md for why it was chosen over betting
confidence sequences (Voracek 2024; Waudby-Smith and Ramdas 2023).

The candidate class c_A always comes from n0 separate selection samples, as in CERTIFY.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import beta, norm

from .certify import lower_confidence_bound

FIXED_N, TARGET, ANYTIME = "fixed_n", "target_radius", "anytime"


def look_schedule(first: int, cap: int) -> tuple[int, ...]:
    """Sample sizes at which the counts are looked at: first, 2 first, 4 first, ..., cap."""
    if first < 1 or cap < 1:
        raise ValueError("first look and cap must be positive")
    looks, size = [], min(first, cap)
    while size < cap:
        looks.append(size)
        size *= 2
    looks.append(cap)
    return tuple(looks)


def anytime_alpha(look: int, alpha: float) -> float:
    """alpha_k = alpha / (k (k + 1)) for the k-th look (k = 1, 2, ...): they sum to alpha over
    any number of looks, so the anytime procedure needs no cap to be valid."""
    if look < 1:
        raise ValueError("looks are numbered from 1")
    return alpha / (look * (look + 1))


def upper_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound (Clopper and Pearson, Biometrika 1934):
    the p that solves P[Binomial(n, p) <= k] = alpha, the 1 - alpha quantile of Beta(k + 1, n - k).

    Guarantee: for every p, P[upper_confidence_bound(K, n, alpha) >= p] >= 1 - alpha when
    K ~ Binomial(n, p).

    Closed forms where they exist: 1 when k = n, and 1 - alpha ** (1 / n) when k = 0, computed
    as -expm1(log(alpha) / n) so that it keeps its relative precision (1 - alpha ** (1 / n)
    loses all of it for large n). Otherwise ``beta.isf(alpha, k + 1, n - k)``, not
    ``beta.ppf(1 - alpha, ...)``, which is off by up to 2e-5 relative at alpha = 1e-15 (as
    1 - alpha rounds). Above EXACT_SOLVE_ABOVE trials that quantile only starts a root solve on
    the binomial tail, as for the lower bound (``certify.solve_on_tail``). ValueError for bad
    arguments; BadState when the bound is not a number in [0, 1].
    """
    from .certify import EXACT_SOLVE_ABOVE, checked_bound, solve_on_tail

    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError("need 0 <= successes <= trials and trials > 0")
    if not 0 < alpha < 1:
        raise ValueError("alpha must lie in (0, 1)")
    if successes == trials:
        return 1.0
    if successes == 0:
        value = -math.expm1(math.log(alpha) / trials)
    else:
        value = float(beta.isf(alpha, successes + 1, trials - successes))
        if trials > EXACT_SOLVE_ABOVE:
            value = solve_on_tail("upper", successes, trials, alpha, value)
    return checked_bound(value, "upper", successes, trials, alpha)


@dataclass(frozen=True)
class Look:
    """What one look at the counts decided."""

    decision: str  # "certified", "abstain" or "continue"
    p_a_lower: float
    radius: float  # sigma * Phi^-1(p_a_lower) when p_a_lower >= 1/2, else 0
    look_alpha: float  # the level of this look's bound: recompute with it


def target_radius_look(
    count_a: int, n: int, look: int, looks: int, target: float, sigma: float, alpha: float
) -> Look:
    """One look of the target-radius test of H0: p_A <= Phi(target / sigma).

    At look k of K (fixed in advance), with the Clopper-Pearson lower bound at level alpha / K:
    "certified" when it exceeds Phi(target / sigma); "abstain" when the upper bound at the same
    level falls below it (more samples would almost surely not certify: early abstention,
    which costs no validity since abstaining is always safe) or at the last look; else
    "continue".

    Guarantee: if p_A <= Phi(target / sigma) for the class c_A chosen from separate selection
    samples, the probability that any look answers "certified" is at most alpha, whatever the
    stopping time (union bound over the K looks). A "certified" answer carries the radius of
    its bound, which is at least ``target``.
    """
    if not 1 <= look <= looks:
        raise ValueError("look must lie in [1, looks]")
    if not (target > 0 and sigma > 0 and 0 < alpha < 0.5):
        raise ValueError("need target > 0, sigma > 0 and alpha in (0, 0.5)")
    level = alpha / looks
    threshold = norm.cdf(target / sigma)
    p_a_lower = lower_confidence_bound(count_a, n, level)
    if p_a_lower > threshold:
        return Look("certified", p_a_lower, _radius(p_a_lower, sigma), level)
    if look == looks or upper_confidence_bound(count_a, n, level) < threshold:
        return Look("abstain", p_a_lower, 0.0, level)
    return Look("continue", p_a_lower, _radius(p_a_lower, sigma), level)


def anytime_look(
    count_a: int, n: int, look: int, sigma: float, alpha: float, tolerance: float = 0.0
) -> Look:
    """One look of the anytime certificate: the Clopper-Pearson lower bound at level
    ``anytime_alpha(look, alpha)`` and its radius.

    The bounds of all looks hold simultaneously with probability at least 1 - alpha, so the
    caller may stop at any look, for any reason (a deadline, a budget, this function's
    answer), and report that look's radius.

    Guarantee: with probability at least 1 - alpha over the noise, every radius this
    procedure reports, at whatever look it stops, is a certified radius of g at x for c_A.

    The decision (a stopping rule only; it does not touch validity): "abstain" when even the
    upper bound at this level is below 1/2 (no number of samples would certify); "certified"
    when ``tolerance`` > 0 and the next look, twice the samples with the same proportion of
    votes for c_A, would raise the radius by at most ``tolerance``; else "continue".
    """
    level = anytime_alpha(look, alpha)
    p_a_lower = lower_confidence_bound(count_a, n, level)
    radius = _radius(p_a_lower, sigma)
    if upper_confidence_bound(count_a, n, level) < 0.5:
        return Look("abstain", p_a_lower, 0.0, level)
    if tolerance > 0:
        next_level = anytime_alpha(look + 1, alpha)
        projected = _radius(lower_confidence_bound(2 * count_a, 2 * n, next_level), sigma)
        if projected - radius <= tolerance:
            return Look("certified" if radius > 0 else "abstain", p_a_lower, radius, level)
    return Look("continue", p_a_lower, radius, level)


def certified(procedure: str, last: Look) -> bool:
    """Whether the last look of a sequential procedure answers with its class: a target-radius
    look that decided "certified"; an anytime look with a positive radius that did not
    decide to abstain (an anytime request may stop at any look, decided or not)."""
    if procedure == TARGET:
        return last.decision == "certified"
    return last.decision != "abstain" and last.radius > 0


def _radius(p_a_lower: float, sigma: float) -> float:
    if p_a_lower < 0.5:
        return 0.0
    if p_a_lower >= 1.0:
        return math.inf
    return float(sigma * norm.ppf(p_a_lower))
