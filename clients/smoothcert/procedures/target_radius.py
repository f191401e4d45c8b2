"""The target-radius test: is the input certified at radius r? Decided with as few samples as
the evidence needs, keeping CERTIFY's exact guarantee.

The counts are looked at on a schedule of sample sizes fixed in advance, and alpha is spent
over the looks so that the Clopper-Pearson bounds at all looks hold simultaneously with
probability at least 1 - alpha (the union bound). A data-dependent stopping time then picks
one of those bounds; it never recomputes a fixed-n bound at a data-dependent n, which would
not be valid. This is the Bonferroni-over-stages construction of Horvath et al. (ICLR 2022,
"Boosting randomized smoothing with variance reduced classifiers": adaptive sampling, with
early abstention, which format v3 replaces by projected futility), with alpha spent only on
the looks that can certify; see
docs/architecture.md for why it was chosen over betting confidence sequences (Voracek 2024;
Waudby-Smith and Ramdas 2023). The candidate c_A comes from separate selection samples, at
most n0, drawn until their votes are clear (``selection``; format v2 records: exactly n0).

The looks (format v3): from the first look, each RATIO = 5/4 times the last (rounded up), up
to the cap; from n*, the fewest samples that can certify at the level its look gets, on, the
looks spend alpha: FIRST_SHARE = 1/3 of it on n* (where unanimous votes stop; an even split
over at most three looks) and the rest evenly on the later ones (``target_levels``).
Against doubling looks with alpha split evenly, this cuts the overshoot past the samples an
input needs and lets unanimous inputs stop sooner: 1.07x to 1.30x fewer estimation samples in
simulation on the committed SmoothAdv models, certified accuracy within 0.12 points
(bench/target_grid.py). Projected futility (``PROJECTION_LEVEL``, a stopping rule) then
abstains on the inputs below the threshold, and on those so close above it that even the cap
would barely certify them: 1.3x to 2x fewer samples again at most radii in the same
simulation.

Format v4 keeps v3's looks, levels and futility and certifies with the exact group-sequential
boundary instead of the union bound (``exact_counts``): the union bound spends only 0.60 to
0.66 alpha on these looks (bench/exact_spending.py), because a path that certifies at one look
would mostly certify at the next too. Taking the running sum of v3's levels as the spending
function (Lan and DeMets 1983) and computing the crossing probability exactly (Armitage,
McPherson and Rowe 1969) gives each look a count no larger than v3's, so on the same votes v4
stops no later and certifies whenever v3 does: 1.02x to 1.05x fewer samples in simulation on
the committed models, certified accuracy the same or higher (docs/benchmarks.md). Format v3
records (``TargetRadiusV3``) and v2 records (doubling looks, alpha / m on each of the m looks
that can certify: ``target_schedule_v2``, ``target_levels_v2``, ``TargetRadiusV2``) still
verify under their own rules.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np

from ..bounds import lower_confidence_bound, upper_confidence_bound
from ..families import NoiseFamily
from ..group_sequential import rejecting_counts
from .base import (
    ABSTAIN,
    ABSTAINED,
    CERTIFIED,
    CONTINUE,
    Look,
    Outcome,
    Plan,
    Procedure,
    check_look,
    look_schedule,
)

# Format v2's test abstained early once the upper bound on p_A at this level fell below the
# threshold (a stopping rule that spends no alpha, as every abstention rule here).
EARLY_ABSTAIN_LEVEL = 0.05
# Format v3's test abstains once no later look would certify even if the votes went on coming
# at U, the upper bound on p_A at this level (projected futility). It drops the inputs that sit
# so close to the threshold that even the cap would barely certify them, which cost tens of
# thousands of samples each, and those below it. It implies v2's early abstention at the same
# level (U >= count_a / n, so U below the threshold leaves every later look short), which v3
# therefore no longer checks: at 0.05 that rule dropped inputs well above the threshold after
# an unlucky early look (p_A = 0.71 at sigma = 0.5, r = 0.25: 8 % of them, which fixed n
# certifies). 0.02 against 0.01 and 0.05 (bench/target_grid.py, docs/benchmarks.md): 1.3x to
# 2x fewer samples on average than v3's grid without it at most radii.
PROJECTION_LEVEL = 0.02
# Format v3's looks: each RATIO times the last, rounded up (bench/target_grid.py: 5/4 against
# 3/2, 7/5 and 2); FIRST_SHARE of alpha on the first look that can certify, the rest evenly on
# the later ones (1/3 against 0, 1/4 and 1/2).
RATIO = Fraction(5, 4)
FIRST_SHARE = Fraction(1, 3)
# Every level is shaved by this factor, so that rounding to floats never makes them sum to
# more than alpha.
_SHAVE = 1 - 2.0**-40


def certifying_size(level: float, threshold: float) -> int:
    """The fewest samples whose Clopper-Pearson lower bound at ``level`` can exceed
    ``threshold`` at all (every vote for c_A: level ** (1 / n) > threshold)."""
    if threshold >= 1.0 or level <= 0.0:
        return 2**62  # the threshold rounds to 1, or the level to 0: no sample count certifies
    return math.floor(math.log(level) / math.log(threshold)) + 1


def geometric_looks(first: int, cap: int, ratio: Fraction = RATIO) -> tuple[int, ...]:
    """first, ceil(first * ratio), ceil of that times ratio, ..., cap (exact integers)."""
    if first < 1 or cap < 1:
        raise ValueError("first look and cap must be positive")
    looks, size = [], min(first, cap)
    while size < cap:
        looks.append(size)
        size = max(size + 1, -(-size * ratio.numerator // ratio.denominator))
    looks.append(cap)
    return tuple(looks)


def _shares(m: int) -> tuple[Fraction, ...]:
    """alpha's share of each of m certifying looks: the first max(FIRST_SHARE, 1 / m), the
    rest evenly (so m <= 3 looks split alpha evenly); they sum to 1."""
    if m == 1:
        return (Fraction(1),)
    first = max(FIRST_SHARE, Fraction(1, m))
    return (first, *[(1 - first) / (m - 1)] * (m - 1))


def _levels(alpha: float, shares: tuple[Fraction, ...]) -> list[float]:
    """alpha times each share, as floats, shaved by 2^-40 only if their exact sum (the
    floats' own values, in rationals) would otherwise exceed alpha."""
    levels = [alpha * float(share) for share in shares]
    if sum(map(Fraction, levels)) > Fraction(alpha):
        levels = [v * _SHAVE for v in levels]
    return levels


@functools.lru_cache(maxsize=1024)  # bounded: clients choose the target radius
def certifying_start(cap: int, threshold: float, alpha: float) -> int:
    """n*: the fewest samples that can certify ``threshold`` at the level the first of the
    looks n*, RATIO n*, ..., cap gets (alpha * FIRST_SHARE, or alpha alone), found by
    bisection (a later start has no more looks, so no smaller level: the condition is
    monotone); 0 when even the cap cannot certify at alpha."""
    lo, hi = certifying_size(alpha, threshold), cap
    if lo > cap:
        return 0
    while lo < hi:
        mid = (lo + hi) // 2
        level = _levels(alpha, _shares(len(geometric_looks(mid, cap))))[0]
        if certifying_size(level, threshold) <= mid:
            hi = mid
        else:
            lo = mid + 1
    return lo


@functools.lru_cache(maxsize=1024)  # bounded: clients choose the target radius
def target_levels(
    schedule: tuple[int, ...], target: float, family: NoiseFamily, scale: float, alpha: float
) -> tuple[float, ...]:
    """The level of each look's bound (format v3). With n* = ``certifying_start`` for the
    cap (the last look), the family's threshold for ``target`` (Gaussian: Phi(target /
    sigma)) and alpha, the m looks of at least n* samples spend alpha: the first of them
    alpha * s with s = max(FIRST_SHARE, 1 / m) (all of alpha when m = 1, an even split when
    m <= 3), each later one alpha * (1 - s) / (m - 1); the looks before n*, which cannot
    certify, get 0 (they can only continue or abstain). All zeros when no look, not even the
    cap, can certify ``target``.

    The levels depend on the schedule, target, family, scale and alpha alone, fixed before any
    sample is drawn, and sum to at most alpha over any schedule: s + (m - 1) * (1 - s) / (m -
    1) = 1 exactly in rationals, and if rounding the products to floats makes their exact sum
    exceed alpha, every level is shaved by 2^-40, which brings it back below. So the union
    bound of ``target_radius_look`` holds."""
    threshold = family.threshold(target, scale)
    start = certifying_start(schedule[-1], threshold, alpha)
    able = [k for k, n in enumerate(schedule) if start and n >= start]
    levels = [0.0] * len(schedule)
    for k, level in zip(able, _levels(alpha, _shares(len(able))) if able else (), strict=True):
        levels[k] = level
    return tuple(levels)


@functools.lru_cache(maxsize=1024)  # bounded: clients choose the target radius
def certifying_counts(
    schedule: tuple[int, ...], target: float, family: NoiseFamily, scale: float, alpha: float,
    v2: bool = False,
) -> tuple[int, ...]:
    """For each look, the fewest votes for c_A that certify there (the Clopper-Pearson lower
    bound at the look's level above the threshold; the bound grows with the votes, so a
    bisection finds it), n + 1 for a look with no alpha or none that can."""
    levels = (target_levels_v2 if v2 else target_levels)(schedule, target, family, scale, alpha)
    threshold = family.threshold(target, scale)
    counts = []
    for n, level in zip(schedule, levels, strict=True):
        lo, hi = 0, n + 1
        while level and lo < hi:
            mid = (lo + hi) // 2
            if mid <= n and lower_confidence_bound(mid, n, level) > threshold:
                hi = mid
            else:
                lo = mid + 1
        counts.append(lo if level else n + 1)
    return tuple(counts)


def target_schedule(
    first: int, cap: int, target: float, family: NoiseFamily, scale: float, alpha: float
) -> tuple[int, ...]:
    """Look sizes for the test (format v3): first, RATIO first, ... (rounded up) while below
    n* (``certifying_start``; those looks can only abstain early), then n*, RATIO n*, ...,
    cap, so that an input whose votes are unanimous stops at n*. The doubling schedule when
    the target is out of reach at ``cap`` (every look abstains at once)."""
    threshold = family.threshold(target, scale)
    start = certifying_start(cap, threshold, alpha)
    if not start:
        return look_schedule(first, cap)
    prefix = [n for n in geometric_looks(first, cap) if n < start]
    return (*prefix, *geometric_looks(start, cap))


@functools.lru_cache(maxsize=1024)  # bounded: clients choose the target radius
def exact_counts(
    schedule: tuple[int, ...], target: float, family: NoiseFamily, scale: float, alpha: float
) -> tuple[int, ...]:
    """Format v4: for each look, the fewest votes for c_A that certify there, the exact
    group-sequential boundary (``group_sequential.rejecting_counts``) whose spending function is
    the running sum of format v3's levels (``target_levels``) at the worst null p_A, the family's
    threshold for ``target``, capped by v3's Clopper-Pearson counts (``certifying_counts``). So
    every count is at most v3's, and the test still spends at most alpha. Where the recursion
    would cost too much (``group_sequential.WORK_LIMIT``: 0.1 s at 10^7 samples, the later
    looks of larger caps) or alpha is below ``SMALLEST_ALPHA``, v3's counts."""
    v3 = certifying_counts(schedule, target, family, scale, alpha)
    levels = target_levels(schedule, target, family, scale, alpha)
    return rejecting_counts(schedule, levels, family.threshold(target, scale), v3)


def target_radius_look(
    count_a: int, n: int, look: int, schedule: tuple[int, ...], target: float,
    family: NoiseFamily, scale: float, alpha: float, version: int = 4,
) -> Look:  # fmt: skip
    """One look of the test of H0: p_A <= threshold(target) (Gaussian: Phi(target / sigma)).

    At look k of the schedule (fixed in advance, n = schedule[k - 1] samples), with the
    Clopper-Pearson lower bound at the look's level from ``target_levels`` (format ``version``
    2: ``target_levels_v2``): "certified" when the level is positive and the votes reach the
    look's count in ``exact_counts`` (format v4; versions 2 and 3: when the bound exceeds the
    threshold). "abstain" at the last look, or when no later look j would certify by the
    Clopper-Pearson counts (``certifying_counts``) even if the further votes came at U, the
    upper bound on p_A at ``PROJECTION_LEVEL`` (count_a + floor(U (n_j - n)) votes at look j:
    projected futility, the same rule in v3 and v4, so a v4 test stops on the same votes no
    later than v3's and certifies whenever it does); version 2: when no later look could
    certify even if every further vote went to c_A, or the upper bound at
    ``EARLY_ABSTAIN_LEVEL`` falls below the threshold (early abstention, as Horvath et al.);
    else "continue". Abstaining is always safe, so these rules cost no validity and need no
    alpha.

    Guarantee: if p_A <= threshold(target) for the class c_A chosen from separate selection
    samples, the probability that any look answers "certified" is at most alpha, whatever the
    stopping time (v4: the exact crossing probability of its counts, within the running sum of
    the levels; v2 and v3: the union bound over the looks, whose levels sum to at most alpha).
    A "certified" answer carries the larger of ``target`` and the radius of the look's
    Clopper-Pearson bound (with that bound, or the threshold when it is the larger, as the
    lower bound on p_A): for p_A <= threshold any certificate is the test's error, at most
    alpha; for p_A above it the answer errs only if a look's bound exceeds p_A, at most the
    sum of the levels, alpha.
    """
    looks = len(schedule)
    if not 1 <= look <= looks or schedule[look - 1] != n:
        raise ValueError("look must lie in [1, len(schedule)] and n be that look's size")
    if not (target > 0 and scale > 0 and 0 < alpha < 0.5):
        raise ValueError("need target > 0, scale > 0 and alpha in (0, 0.5)")
    if version not in (2, 3, 4):
        raise ValueError(f"no target-radius test of format v{version}")
    plan = (tuple(schedule), target, family, scale, alpha)
    v2 = version == 2
    levels = target_levels_v2(*plan) if v2 else target_levels(*plan)
    threshold = family.threshold(target, scale)
    level = levels[look - 1]
    # A look with no alpha reports its bound at the smallest level any look uses.
    shown = level or min((v for v in levels if v), default=alpha / looks)
    p_a_lower = lower_confidence_bound(count_a, n, shown)
    radius = family.radius(p_a_lower, scale)
    if version == 4 and level and count_a >= exact_counts(*plan)[look - 1]:
        if p_a_lower > threshold:
            return Look(CERTIFIED, p_a_lower, max(radius, target), level)
        return Look(CERTIFIED, threshold, target, level)
    if version < 4 and level and p_a_lower > threshold:
        return Look(CERTIFIED, p_a_lower, radius, level)
    later = list(zip(schedule[look:], certifying_counts(*plan, v2=v2)[look:], strict=True))
    if v2:  # every further vote to c_A; the upper bound at EARLY_ABSTAIN_LEVEL
        rate = 1.0
        hopeless = upper_confidence_bound(count_a, n, EARLY_ABSTAIN_LEVEL) < threshold
    else:
        rate, hopeless = upper_confidence_bound(count_a, n, PROJECTION_LEVEL), False
    still_possible = any(count_a + math.floor(rate * (size - n)) >= need for size, need in later)
    if look == looks or not still_possible or hopeless:
        return Look(ABSTAINED, p_a_lower, 0.0, shown)
    return Look(CONTINUE, p_a_lower, radius, shown)


class TargetRadius(Procedure):
    """Certified at ``target_radius``? Stops as soon as that is decided, at most n samples."""

    name = "target_radius"
    sequential = True
    adaptive_selection = True
    options = ("target_radius",)
    version = 4  # the record format whose rules it follows (``TargetRadiusV3``, ``V2``)

    def check(self, plan: Plan) -> None:
        super().check(plan)
        if not (math.isfinite(plan.target_radius) and plan.target_radius > 0):
            raise ValueError(f"the target-radius procedure needs target_radius > 0, got "
                             f"{plan.target_radius}")  # fmt: skip

    def schedule(self, plan: Plan) -> tuple[int, ...]:
        return target_schedule(plan.first_look, plan.cap, plan.target_radius, plan.family,
                               plan.scale, plan.alpha)  # fmt: skip

    def prepare(self, plan: Plan, schedule: tuple[int, ...]) -> None:
        if self.version == 4:  # the exact counts: up to about 0.3 s for a new (schedule, target)
            exact_counts(tuple(schedule), plan.target_radius, plan.family, plan.scale, plan.alpha)

    def look(self, plan, schedule, k, selection, counts) -> Outcome:
        n = check_look(schedule, k, counts)
        candidate = int(np.argmax(selection))
        look = target_radius_look(
            int(counts[candidate]), n, k, schedule, plan.target_radius, plan.family, plan.scale,
            plan.alpha, version=self.version,
        )  # fmt: skip
        if look.decision == CERTIFIED:
            return Outcome(CERTIFIED, candidate, candidate, look.radius, look.p_a_lower, 0.0,
                           look.look_alpha)  # fmt: skip
        return Outcome(look.decision, ABSTAIN, candidate, 0.0, look.p_a_lower, 0.0, look.look_alpha)


# --- formats v3 and v2 (kept so that their records still verify) ---------------------------


class TargetRadiusV3(TargetRadius):
    """Format v3's target-radius test (v4's looks, levels and futility, certifying where the
    Clopper-Pearson bound at the look's level exceeds the threshold): verifies the records made
    with it; the server no longer answers with it."""

    version = 3


@functools.lru_cache(maxsize=1024)  # bounded: clients choose the target radius
def target_levels_v2(
    schedule: tuple[int, ...], target: float, family: NoiseFamily, scale: float, alpha: float
) -> tuple[float, ...]:
    """Format v2: the level of each look's bound: alpha / m for the m largest looks, with m
    the most looks that can each certify ``target`` at alpha / m (a look of n samples can only if
    level ** (1 / n) exceeds the family's threshold for ``target``, Gaussian:
    Phi(target / sigma)), and 0 for the others, which can only continue or abstain.

    The levels depend on the schedule, target, family, scale and alpha alone, fixed before any
    sample is drawn, and sum to at most alpha: the union bound of ``target_radius_look``
    holds. A look that could never certify spends no alpha (the split of Horvath et al. gives
    every look alpha / K). All zeros: no look, not even n = cap, can certify ``target``."""
    threshold = family.threshold(target, scale)
    looks = len(schedule)
    for m in range(looks, 0, -1):
        eligible = [k for k, n in enumerate(schedule) if n >= certifying_size(alpha / m, threshold)]
        if len(eligible) >= m:
            chosen = set(eligible[-m:])
            return tuple(alpha / m if k in chosen else 0.0 for k in range(looks))
    return (0.0,) * looks


def target_schedule_v2(
    first: int, cap: int, target: float, family: NoiseFamily, scale: float, alpha: float
) -> tuple[int, ...]:
    """Format v2's look sizes: doubling from ``first`` while no look can certify ``target``
    yet (those looks can only abstain early), then n*, 2 n*, 4 n*, ..., cap, with n* the
    fewest samples that can certify at the level the looks from n* on get
    (``target_levels_v2``), so an input whose votes are unanimous stops at n*. Falls back to the
    plain doubling schedule when the target is out of reach at ``cap``."""
    threshold = family.threshold(target, scale)
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


class TargetRadiusV2(TargetRadius):
    """Format v2's target-radius test (doubling looks, alpha / m on each of the m looks that
    can certify): verifies the records made with it; the server no longer answers with it."""

    version = 2
    adaptive_selection = False

    def schedule(self, plan: Plan) -> tuple[int, ...]:
        return target_schedule_v2(plan.first_look, plan.cap, plan.target_radius, plan.family,
                                  plan.scale, plan.alpha)  # fmt: skip


PROCEDURE = TargetRadius()
PROCEDURE_V3 = TargetRadiusV3()
PROCEDURE_V2 = TargetRadiusV2()
