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

import functools
import math
from dataclasses import dataclass

from scipy import special
from scipy.stats import norm

from .certify import EXACT_SOLVE_ABOVE, checked_bound, lower_confidence_bound, solve_on_tail

FIXED_N, TARGET, ANYTIME = "fixed_n", "target_radius", "anytime"
# The target-radius test abstains early once the upper bound on p_A at this level falls below
# the threshold. Abstaining is always safe, so the level is a stopping rule that spends no
# alpha: a larger one stops hopeless inputs sooner and rarely drops one that would certify
# (0.05 against alpha / K: a third to a half fewer samples at r = 0.5 and 0.75 on 200 test
# images, certified accuracy within one image; see docs/benchmarks.md).
EARLY_ABSTAIN_LEVEL = 0.05


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
    loses all of it for large n). Otherwise ``special.betainccinv(k + 1, n - k, alpha)`` (as ``beta.isf``, 15x faster), not
    ``beta.ppf(1 - alpha, ...)``, which is off by up to 2e-5 relative at alpha = 1e-15 (as
    1 - alpha rounds). Above EXACT_SOLVE_ABOVE trials that quantile only starts a root solve on
    the binomial tail, as for the lower bound (``certify.solve_on_tail``). ValueError for bad
    arguments; BadState when the bound is not a number in [0, 1].
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError("need 0 <= successes <= trials and trials > 0")
    if not 0 < alpha < 1:
        raise ValueError("alpha must lie in (0, 1)")
    if successes == trials:
        return 1.0
    if successes == 0:
        value = -math.expm1(math.log(alpha) / trials)
    else:
        # the 1 - alpha quantile of Beta(k + 1, n - k), by its complement: exact for tiny alpha
        value = float(special.betainccinv(successes + 1, trials - successes, alpha))
        if trials > EXACT_SOLVE_ABOVE:
            value = solve_on_tail("upper", successes, trials, alpha, value)
    return checked_bound(value, "upper", successes, trials, alpha)


def certifying_size(level: float, threshold: float) -> int:
    """The fewest samples whose Clopper-Pearson lower bound at ``level`` can exceed
    ``threshold`` at all (every vote for c_A: level ** (1 / n) > threshold)."""
    if threshold >= 1.0:
        return 2**62  # Phi(target / sigma) rounds to 1: no sample count certifies
    return math.floor(math.log(level) / math.log(threshold)) + 1


@functools.lru_cache(maxsize=1024)  # bounded: clients choose the target radius
def target_levels(
    schedule: tuple[int, ...], target: float, sigma: float, alpha: float
) -> tuple[float, ...]:
    """The level of each look's bound in the target-radius test: alpha / m for the m largest
    looks, with m the most looks that can each certify ``target`` at alpha / m (a look of n
    samples can only if level ** (1 / n) > Phi(target / sigma)), and 0 for the others, which
    can only continue or abstain.

    The levels depend on the schedule, target, sigma and alpha alone, fixed before any sample
    is drawn, and sum to at most alpha: the union bound of ``target_radius_look`` holds. A
    look that could never certify spends no alpha (the split of Horvath et al. gives every
    look alpha / K). All zeros: no look, not even n = cap, can certify ``target``."""
    threshold = norm.cdf(target / sigma)
    looks = len(schedule)
    for m in range(looks, 0, -1):
        eligible = [k for k, n in enumerate(schedule) if n >= certifying_size(alpha / m, threshold)]
        if len(eligible) >= m:
            chosen = set(eligible[-m:])
            return tuple(alpha / m if k in chosen else 0.0 for k in range(looks))
    return (0.0,) * looks


def target_schedule(
    first: int, cap: int, target: float, sigma: float, alpha: float
) -> tuple[int, ...]:
    """Look sizes for the target-radius test: doubling from ``first`` while no look can
    certify ``target`` yet (those looks can only abstain early), then n*, 2 n*, 4 n*, ..., cap,
    with n* the fewest samples that can certify at the level the looks from n* on get
    (``target_levels``), so an input whose votes are unanimous stops at n*. Falls back to the
    plain doubling schedule when the target is out of reach at ``cap``."""
    threshold = norm.cdf(target / sigma)
    if cap < certifying_size(alpha, threshold):
        return look_schedule(first, cap)
    for m in range(1, 64):
        start = certifying_size(alpha / m, threshold)
        if start > cap:
            break
        certifying = look_schedule(start, cap)
        if len(certifying) <= m:
            prefix = [n for n in look_schedule(first, cap) if n < start]
            return (*prefix, *certifying)
    return look_schedule(first, cap)


@dataclass(frozen=True)
class Look:
    """What one look at the counts decided."""

    decision: str  # "certified", "abstain" or "continue"
    p_a_lower: float
    radius: float  # sigma * Phi^-1(p_a_lower) when p_a_lower >= 1/2, else 0
    look_alpha: float  # the level of this look's bound: recompute with it


def target_radius_look(
    count_a: int, n: int, look: int, schedule: tuple[int, ...], target: float, sigma: float,
    alpha: float,
) -> Look:  # fmt: skip
    """One look of the target-radius test of H0: p_A <= Phi(target / sigma).

    At look k of the schedule (fixed in advance, n = schedule[k - 1] samples), with the
    Clopper-Pearson lower bound at the look's level from ``target_levels``: "certified" when
    the level is positive and the bound exceeds Phi(target / sigma). "abstain" at the last
    look; when no later look could certify even if every further vote went to c_A (futility);
    or when the upper bound at ``EARLY_ABSTAIN_LEVEL`` falls below the threshold (early
    abstention, as Horvath et al.); else "continue". Abstaining is always safe, so these rules cost no
    validity and need no alpha.

    Guarantee: if p_A <= Phi(target / sigma) for the class c_A chosen from separate selection
    samples, the probability that any look answers "certified" is at most alpha, whatever the
    stopping time (union bound over the looks, whose levels sum to at most alpha). A
    "certified" answer carries the radius of its bound, which is at least ``target``.
    """
    looks = len(schedule)
    if not 1 <= look <= looks or schedule[look - 1] != n:
        raise ValueError("look must lie in [1, len(schedule)] and n be that look's size")
    if not (target > 0 and sigma > 0 and 0 < alpha < 0.5):
        raise ValueError("need target > 0, sigma > 0 and alpha in (0, 0.5)")
    levels = target_levels(tuple(schedule), target, sigma, alpha)
    threshold = norm.cdf(target / sigma)
    level = levels[look - 1]
    # A look with no alpha reports its bound at the smallest level any look uses.
    shown = level or min((v for v in levels if v), default=alpha / looks)
    p_a_lower = lower_confidence_bound(count_a, n, shown)
    if level and p_a_lower > threshold:
        return Look("certified", p_a_lower, _radius(p_a_lower, sigma), level)
    still_possible = any(
        lower_confidence_bound(count_a + size - n, size, v) > threshold
        for size, v in zip(schedule[look:], levels[look:], strict=True)
        if v
    )
    if (
        look == looks
        or not still_possible
        or upper_confidence_bound(count_a, n, EARLY_ABSTAIN_LEVEL) < threshold
    ):
        return Look("abstain", p_a_lower, 0.0, shown)
    return Look("continue", p_a_lower, _radius(p_a_lower, sigma), shown)


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
