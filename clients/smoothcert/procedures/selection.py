"""Selection sized to the evidence: the candidate class c_A of the sequential procedures, from
as few selection samples as its votes need (at most n0).

CERTIFY (Cohen, Rosenfeld and Kolter, ICML 2019) picks c_A as the top class of n0 noisy samples
drawn apart from the n estimation samples; its guarantee needs only that c_A is a function of
samples independent of the estimation ones, not how many were drawn or when drawing stopped.
So the selection samples may be drawn in looks, stopping as soon as the top class is the only
plausible majority class: its Clopper-Pearson lower bound at ``SELECTION_LEVEL`` exceeds 1/2.
The estimation samples are drawn afresh after selection has stopped, so every guarantee of the
procedure that follows holds as it does with a fixed n0.

What the rule can cost is power, never validity: a wrong pick makes the procedure abstain (or
certify a smaller radius), it cannot make a false certificate more likely than alpha.
"""

from __future__ import annotations

import numpy as np

from ..bounds import lower_confidence_bound
from .base import look_schedule

# The first selection look and the level of the stopping test. With 0.01, seven or eight
# unanimous votes stop selection (0.01 ** (1 / 8) = 0.56 > 1/2).
SELECTION_FIRST = 8
SELECTION_LEVEL = 0.01


def selection_schedule(cap: int, first: int = SELECTION_FIRST) -> tuple[int, ...]:
    """The selection looks: first, 2 first, 4 first, ..., cap (the request's n0): fixed
    before any sample is drawn."""
    return look_schedule(first, cap)


def selection_stops(counts: np.ndarray, level: float = SELECTION_LEVEL) -> bool:
    """Whether selection may stop at these (cumulative) selection counts: the top class's
    one-sided Clopper-Pearson lower bound at ``level`` exceeds 1/2, so no other class can hold
    a majority of the votes unless that bound failed.

    Guarantee (power, not validity): if some class c has P[f(x + noise) = c] >= 1/2, the
    probability that selection stops on another class is at most ``level`` per look, so at
    most ``level`` times the number of selection looks (the union bound). Whatever it picks,
    the estimation samples drawn afterwards are fresh, so the procedure's own guarantee holds.
    """
    n = int(np.sum(counts))
    if n == 0:
        return False
    top = int(np.max(counts))
    return lower_confidence_bound(top, n, level) > 0.5


def selection_problems(counts: np.ndarray, cap: int, first: int = SELECTION_FIRST,
                       level: float = SELECTION_LEVEL) -> list[str]:  # fmt: skip
    """What a verifier can recheck of a selection that stopped at ``sum(counts)`` samples:
    that this is one of the selection looks, at most the cap, and that the rule allowed
    stopping there (the top class's bound above 1/2) unless it is the cap. (Whether the rule
    already held at an earlier look needs the counts of that look, which are not kept.)"""
    n = int(np.sum(counts))
    schedule = selection_schedule(cap, first)
    if n not in schedule:
        return [f"{n} selection samples is not a selection look of {list(schedule)}"]
    if n < cap and not selection_stops(counts, level):
        return [f"selection stopped at {n} samples, where its rule (the top class's lower "
                f"bound at {level} above 1/2) does not hold"]  # fmt: skip
    return []
