"""The target-radius test: is the input certified at radius r? Decided with as few samples as
the evidence needs, keeping CERTIFY's exact guarantee.

The counts are looked at on a schedule of sample sizes fixed in advance, and alpha is spent
over the looks so that the Clopper-Pearson bounds at all looks hold simultaneously with
probability at least 1 - alpha (the union bound). A data-dependent stopping time then picks
one of those bounds; it never recomputes a fixed-n bound at a data-dependent n, which would
not be valid. This is the Bonferroni-over-stages construction of Horvath et al. (ICLR 2022,
"Boosting randomized smoothing with variance reduced classifiers": adaptive sampling, with
early abstention), with alpha spent only on the looks that can certify; see
docs/architecture.md for why it was chosen over betting confidence sequences (Voracek 2024;
Waudby-Smith and Ramdas 2023). The candidate c_A comes from separate selection samples, at
most n0, drawn until their votes are clear (``selection``; format v2 records: exactly n0).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..bounds import lower_confidence_bound, upper_confidence_bound
from ..families import NoiseFamily
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

# The test abstains early once the upper bound on p_A at this level falls below the
# threshold. Abstaining is always safe, so the level is a stopping rule that spends no alpha:
# a larger one stops hopeless inputs sooner and rarely drops one that would certify (0.05
# against alpha / K: a third to a half fewer samples at r = 0.5 and 0.75 on 200 test images,
# certified accuracy within one image; see docs/benchmarks.md).
EARLY_ABSTAIN_LEVEL = 0.05


def certifying_size(level: float, threshold: float) -> int:
    """The fewest samples whose Clopper-Pearson lower bound at ``level`` can exceed
    ``threshold`` at all (every vote for c_A: level ** (1 / n) > threshold)."""
    if threshold >= 1.0:
        return 2**62  # the threshold rounds to 1: no sample count certifies
    return math.floor(math.log(level) / math.log(threshold)) + 1


@functools.lru_cache(maxsize=1024)  # bounded: clients choose the target radius
def target_levels(
    schedule: tuple[int, ...], target: float, family: NoiseFamily, scale: float, alpha: float
) -> tuple[float, ...]:
    """The level of each look's bound: alpha / m for the m largest looks, with m the most
    looks that can each certify ``target`` at alpha / m (a look of n samples can only if
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


def target_schedule(
    first: int, cap: int, target: float, family: NoiseFamily, scale: float, alpha: float
) -> tuple[int, ...]:
    """Look sizes for the test: doubling from ``first`` while no look can certify ``target``
    yet (those looks can only abstain early), then n*, 2 n*, 4 n*, ..., cap, with n* the
    fewest samples that can certify at the level the looks from n* on get
    (``target_levels``), so an input whose votes are unanimous stops at n*. Falls back to the
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


def target_radius_look(
    count_a: int, n: int, look: int, schedule: tuple[int, ...], target: float,
    family: NoiseFamily, scale: float, alpha: float,
) -> Look:  # fmt: skip
    """One look of the test of H0: p_A <= threshold(target) (Gaussian: Phi(target / sigma)).

    At look k of the schedule (fixed in advance, n = schedule[k - 1] samples), with the
    Clopper-Pearson lower bound at the look's level from ``target_levels``: "certified" when
    the level is positive and the bound exceeds the threshold. "abstain" at the last look;
    when no later look could certify even if every further vote went to c_A (futility); or
    when the upper bound at ``EARLY_ABSTAIN_LEVEL`` falls below the threshold (early
    abstention, as Horvath et al.); else "continue". Abstaining is always safe, so these rules
    cost no validity and need no alpha.

    Guarantee: if p_A <= threshold(target) for the class c_A chosen from separate selection
    samples, the probability that any look answers "certified" is at most alpha, whatever the
    stopping time (union bound over the looks, whose levels sum to at most alpha). A
    "certified" answer carries the radius of its bound, which is at least ``target``.
    """
    looks = len(schedule)
    if not 1 <= look <= looks or schedule[look - 1] != n:
        raise ValueError("look must lie in [1, len(schedule)] and n be that look's size")
    if not (target > 0 and scale > 0 and 0 < alpha < 0.5):
        raise ValueError("need target > 0, scale > 0 and alpha in (0, 0.5)")
    levels = target_levels(tuple(schedule), target, family, scale, alpha)
    threshold = family.threshold(target, scale)
    level = levels[look - 1]
    # A look with no alpha reports its bound at the smallest level any look uses.
    shown = level or min((v for v in levels if v), default=alpha / looks)
    p_a_lower = lower_confidence_bound(count_a, n, shown)
    radius = family.radius(p_a_lower, scale)
    if level and p_a_lower > threshold:
        return Look(CERTIFIED, p_a_lower, radius, level)
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
        return Look(ABSTAINED, p_a_lower, 0.0, shown)
    return Look(CONTINUE, p_a_lower, radius, shown)


class TargetRadius(Procedure):
    """Certified at ``target_radius``? Stops as soon as that is decided, at most n samples."""

    name = "target_radius"
    sequential = True
    adaptive_selection = True
    options = ("target_radius",)

    def check(self, plan: Plan) -> None:
        super().check(plan)
        if not (math.isfinite(plan.target_radius) and plan.target_radius > 0):
            raise ValueError(f"the target-radius procedure needs target_radius > 0, got "
                             f"{plan.target_radius}")  # fmt: skip

    def schedule(self, plan: Plan) -> tuple[int, ...]:
        return target_schedule(plan.first_look, plan.cap, plan.target_radius, plan.family,
                               plan.scale, plan.alpha)  # fmt: skip

    def look(self, plan, schedule, k, selection, counts) -> Outcome:
        n = check_look(schedule, k, counts)
        candidate = int(np.argmax(selection))
        look = target_radius_look(
            int(counts[candidate]), n, k, schedule, plan.target_radius, plan.family, plan.scale,
            plan.alpha,
        )  # fmt: skip
        if look.decision == CERTIFIED:
            return Outcome(CERTIFIED, candidate, candidate, look.radius, look.p_a_lower, 0.0,
                           look.look_alpha)  # fmt: skip
        return Outcome(look.decision, ABSTAIN, candidate, 0.0, look.p_a_lower, 0.0, look.look_alpha)


PROCEDURE = TargetRadius()
