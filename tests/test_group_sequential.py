"""The exact group-sequential boundary (smoothcert.group_sequential) and format v4's
target-radius test built on it, against values computed independently: every path of a small
schedule enumerated in exact rational arithmetic, the bench's own crossing programme (no cut
tails, no nudge), and the union bound's counts it must never exceed."""

from __future__ import annotations

import itertools
import math
import time
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import norm
from test_target_grid import random_plans

from smoothcert import group_sequential, procedures
from smoothcert.families import FAMILIES
from smoothcert.group_sequential import MARGIN, rejecting_counts
from smoothcert.procedures import Plan
from smoothcert.procedures.target_radius import (
    certifying_counts,
    exact_counts,
    target_levels,
    target_radius_look,
    target_schedule,
)

GAUSSIAN = FAMILIES["gaussian"]


def crossing_by_look(schedule, counts, p: Fraction) -> list[Fraction]:
    """P(the votes reach counts[j] at some look j <= k), for each k, by enumerating every
    sequence of per-look vote increments (binomial weights in exact rationals)."""
    sizes = np.diff((0, *schedule)).tolist()
    by_look = [Fraction(0)] * len(schedule)
    for increments in itertools.product(*(range(d + 1) for d in sizes)):
        weight = math.prod(math.comb(d, j) * p**j * (1 - p) ** (d - j)
                           for d, j in zip(sizes, increments, strict=True))  # fmt: skip
        votes = itertools.accumulate(increments)
        first = next((k for k, (v, c) in enumerate(zip(votes, counts, strict=True)) if v >= c),
                     None)  # fmt: skip
        if first is not None:
            for k in range(first, len(schedule)):
                by_look[k] += weight
    return by_look


@pytest.mark.parametrize("threshold", [0.35, 0.6])
def test_the_boundary_against_every_path(threshold):
    """Through each look the exact crossing probability stays within the running sum of the
    levels, and each count is the fewest that does: one vote fewer at that look would exceed
    it (the counts are not capped here: the ceiling is n + 1, never)."""
    schedule, levels = (4, 6, 8, 10, 12), (0.0, 0.01, 0.02, 0.02, 0.05)
    counts = rejecting_counts(schedule, levels, threshold, tuple(n + 1 for n in schedule))
    assert counts[0] == schedule[0] + 1  # no level, never
    p = Fraction(threshold)
    budget = list(itertools.accumulate(Fraction(v) for v in levels))
    crossed = crossing_by_look(schedule, counts, p)
    assert all(c <= b for c, b in zip(crossed, budget, strict=True)), (counts, crossed)
    assert crossed[-1] > Fraction(sum(levels)) / 2  # it spends most of it
    for k, (n, c) in enumerate(zip(schedule, counts, strict=True)):
        if levels[k] and 0 < c <= n:
            fewer = list(counts)
            fewer[k] -= 1
            assert crossing_by_look(schedule, fewer, p)[k] > (1 - MARGIN) * budget[k], (k, c)
    # below the threshold the same counts cross less often (the worst null is the threshold)
    assert crossing_by_look(schedule, counts, p - Fraction(1, 20))[-1] < crossed[-1]


def test_the_ceiling_caps_every_count():
    schedule, levels = (4, 6, 8, 10, 12), (0.0, 0.01, 0.02, 0.02, 0.05)
    free = rejecting_counts(schedule, levels, 0.35, tuple(n + 1 for n in schedule))
    ceiling = (5, 5, 6, 7, 8)
    capped = rejecting_counts(schedule, levels, 0.35, ceiling)
    assert all(c <= m for c, m in zip(capped, ceiling, strict=True))
    assert capped != free


@pytest.mark.parametrize("target, sigma, alpha", [(0.25, 0.25, 0.001), (0.75, 0.25, 0.001),
                                                  (0.5, 0.5, 0.05), (0.1, 0.5, 0.01),
                                                  (1.5, 0.5, 1e-6)])  # fmt: skip
def test_v4_counts_spend_at_most_alpha_and_more_than_v3(exact_spending, target, sigma, alpha):
    """At p_A equal to the threshold, the bench's crossing programme (its own code, nothing
    cut) puts v4's counts within alpha, and above v3's union-bound counts; no v4 count exceeds
    v3's."""
    schedule = target_schedule(64, 100_000, target, GAUSSIAN, sigma, alpha)
    v3 = certifying_counts(schedule, target, GAUSSIAN, sigma, alpha)
    v4 = exact_counts(schedule, target, GAUSSIAN, sigma, alpha)
    assert all(a <= b for a, b in zip(v4, v3, strict=True)) and v4 != v3
    threshold = norm.cdf(target / sigma)
    spent_v3 = exact_spending.crossing_probability(schedule, v3, threshold)
    spent_v4 = exact_spending.crossing_probability(schedule, v4, threshold)
    assert spent_v3 < spent_v4 <= alpha
    assert spent_v4 > 0.95 * alpha  # v3: 0.60 to 0.66 alpha (bench/exact_spending.py)


def test_v4_counts_never_exceed_v3_on_any_schedule():
    for looks, target, sigma, alpha in random_plans(40, seed=1, most_looks=30):
        v3 = certifying_counts(looks, target, GAUSSIAN, sigma, alpha)
        v4 = exact_counts(looks, target, GAUSSIAN, sigma, alpha)
        assert all(a <= b for a, b in zip(v4, v3, strict=True)), (looks, alpha, target, sigma)


def test_past_the_work_limit_the_counts_are_v3s_and_still_within_alpha(monkeypatch, exact_spending):
    """When the recursion would cost too much, the looks from there on take v3's counts: the
    earlier ones stay exact, and the whole still spends at most alpha (the bench's programme)."""
    plan = (target_schedule(64, 100_000, 0.5, GAUSSIAN, 0.5, 0.001), 0.5, GAUSSIAN, 0.5, 0.001)
    v3, free = certifying_counts(*plan), exact_counts(*plan)
    monkeypatch.setattr(group_sequential, "WORK_LIMIT", 10**5)
    levels, threshold = target_levels(*plan), norm.cdf(1.0)
    limited = rejecting_counts(plan[0], levels, threshold, v3)
    k = next(i for i, (a, b) in enumerate(zip(limited, free, strict=True)) if a != b)
    assert limited[:k] == free[:k] and limited[k:] == v3[k:] and any(
        a < b for a, b in zip(limited[:k], v3[:k], strict=True))  # fmt: skip
    assert exact_spending.crossing_probability(plan[0], limited, threshold) <= 0.001


@pytest.mark.parametrize("family", ["gaussian", "uniform"])
def test_clients_extreme_plans_give_counts_quickly_and_never_above_v3(family):
    """Requests choose alpha, the target and the cap: at alphas down to the smallest float,
    targets from 1e-9 to beyond reach and caps up to 10^9, the counts come back (no error, well
    under a second each here) and never above v3's; below SMALLEST_ALPHA they are v3's. (At the
    smallest float, alpha split over the looks underflowed to 0, and the schedule raised.)"""
    noise = FAMILIES[family]
    for target, alpha, cap in itertools.product((1e-9, 0.3, 2.0), (0.49, 1e-30, 1e-250, 5e-324),
                                                (64, 10**7, 10**9)):  # fmt: skip
        plan = (target_schedule(64, cap, target, noise, 0.5, alpha), target, noise, 0.5, alpha)
        started = time.perf_counter()
        v4, v3 = exact_counts(*plan), certifying_counts(*plan)
        assert time.perf_counter() - started < 5, plan[1:]
        assert all(a <= b for a, b in zip(v4, v3, strict=True)), plan[1:]
        if alpha < group_sequential.SMALLEST_ALPHA:
            assert v4 == v3


def test_v4_certifies_at_the_target_where_v3_continues():
    """A count between v4's and v3's certifies in v4 with radius target (the bound on p_A the
    threshold), continues in v3; at v3's count both certify with the Clopper-Pearson radius,
    at least the target. The verifier's entries follow the record's format."""
    target, sigma, alpha = 0.5, 0.5, 0.001
    schedule = target_schedule(64, 100_000, target, GAUSSIAN, sigma, alpha)
    v3 = certifying_counts(schedule, target, GAUSSIAN, sigma, alpha)
    v4 = exact_counts(schedule, target, GAUSSIAN, sigma, alpha)
    k = next(i for i, (a, b) in enumerate(zip(v4, v3, strict=True)) if a < b)
    n, plan = schedule[k], (schedule, target, GAUSSIAN, sigma, alpha)
    new = target_radius_look(v4[k], n, k + 1, *plan)
    assert (new.decision, new.radius, new.p_a_lower) == ("certified", target, norm.cdf(1.0))
    assert new.look_alpha == target_levels(*plan)[k]
    assert target_radius_look(v4[k], n, k + 1, *plan, version=3).decision == "continue"
    assert target_radius_look(v4[k] - 1, n, k + 1, *plan).decision != "certified"
    both = [target_radius_look(v3[k], n, k + 1, *plan, version=v) for v in (3, 4)]
    assert both[0] == both[1] and both[0].radius >= target
    request = Plan(alpha=alpha, family=GAUSSIAN, scale=sigma, cap=100_000, first_look=64,
                   target_radius=target)  # fmt: skip
    selection, counts = np.array([8, 0]), np.array([v4[k], n - v4[k]])
    decided = {v: procedures.get("target_radius", v).look(request, schedule, k + 1, selection,
                                                          counts).decision for v in (3, 4)}  # fmt: skip
    assert decided == {3: "continue", 4: "certified"}


def test_the_server_builds_the_counts_before_the_first_look_and_refuses_bad_state():
    """``looks.estimate`` builds the procedure's tables (``prepare``) before drawing; a bound
    that does not come out as a number there is bad state (no certificate), not a crash."""
    import asyncio
    from types import SimpleNamespace

    from smoothcert.errors import NumericalError
    from smoothcert.procedures.target_radius import TargetRadius
    from smoothserve.errors import BadState
    from smoothserve.looks import estimate

    prepared = []

    class Recording(TargetRadius):
        def prepare(self, plan, schedule):
            prepared.append(schedule)
            raise NumericalError("the bound came out as nan")

    async def draw(num, tally=None):
        raise AssertionError("drew before the counts were built")

    plan = Plan(alpha=0.001, family=GAUSSIAN, scale=0.25, cap=10_000, first_look=64,
                target_radius=0.5)  # fmt: skip
    with pytest.raises(BadState, match="nan"):
        asyncio.run(estimate(Recording(), plan, draw, np.array([8, 0]),
                             SimpleNamespace(deadline=None), None))  # fmt: skip
    assert prepared == [target_schedule(64, 10_000, 0.5, GAUSSIAN, 0.25, 0.001)]
    exact_counts.cache_clear()
    procedures.get("target_radius").prepare(plan, prepared[0])
    assert exact_counts.cache_info().currsize == 1
