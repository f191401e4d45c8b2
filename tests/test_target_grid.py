"""The target-radius test's format v3 look grid (looks 5/4 apart, 1/3 of alpha on the first
look that can certify, the rest evenly): its levels against an independent computation, its
validity by simulation at the null's boundary (with a control that the simulation catches an
invalid rule), the verifier recomputing v3 and v2 schedules, and the probability that the
union bound's looks certify at the null's boundary computed exactly (bench/exact_spending.py,
checked against enumeration)."""

from __future__ import annotations

import itertools
import math
import statistics
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binomtest

from smoothcert import procedures
from smoothcert.bounds import lower_confidence_bound
from smoothcert.families import FAMILIES
from smoothcert.procedures import Plan, look_schedule
from smoothcert.procedures.target_radius import (
    certifying_counts,
    target_levels,
    target_levels_v2,
    target_radius_look,
    target_schedule,
    target_schedule_v2,
)

GAUSSIAN = FAMILIES["gaussian"]
PHI = statistics.NormalDist()


def independent_grid(first, cap, target, sigma, alpha):
    """The v3 grid from its definition, by a plain scan: looks ceil(5/4 * previous) in exact
    rationals; n* the least s whose chain s, ..., cap gives its first look a level (alpha / 3,
    or alpha for a single look) at which s unanimous votes beat Phi(r / sigma)."""
    threshold = PHI.cdf(target / sigma)

    def chain(s):
        looks = [s]
        while looks[-1] < cap:
            looks.append(
                min(cap, max(looks[-1] + 1, math.ceil(Fraction(looks[-1]) * Fraction(5, 4))))
            )
        return looks

    start = next((s for s in range(1, cap + 1)
                  if s * math.log(threshold) < math.log(alpha * max(1 / 3, 1 / len(chain(s))))),
                 None)  # fmt: skip
    if start is None:
        return None, None
    prefix = []
    while first < start and first < cap:
        prefix.append(first)
        first = max(first + 1, math.ceil(Fraction(first) * Fraction(5, 4)))
    certifying = chain(start)
    m = len(certifying)
    first_share = max(Fraction(1, 3), Fraction(1, m))
    shares = [first_share] + [(1 - first_share) / (m - 1)] * (m - 1)
    return (*prefix, *certifying), [0] * len(prefix) + [alpha * float(s) for s in shares]


PLANS = [(first, cap, target, sigma, alpha)
         for first in (16, 64) for cap in (1000, 10_000, 100_000)
         for target, sigma in ((0.25, 0.25), (0.5, 0.25), (0.75, 0.25), (0.25, 0.5), (1.0, 0.5),
                               (0.1, 0.5))
         for alpha in (0.001, 0.05)]  # fmt: skip


@pytest.mark.parametrize("first, cap, target, sigma, alpha", PLANS)
def test_v3_grid_and_levels_against_their_definition(first, cap, target, sigma, alpha):
    schedule = target_schedule(first, cap, target, GAUSSIAN, sigma, alpha)
    levels = target_levels(schedule, target, GAUSSIAN, sigma, alpha)
    # the levels sum to at most alpha, in exact arithmetic on the floats themselves
    assert sum(Fraction(v) for v in levels) <= Fraction(alpha)
    expected, expected_levels = independent_grid(first, cap, target, sigma, alpha)
    if expected is None:  # unreachable: the doubling schedule and no alpha anywhere
        assert schedule == look_schedule(first, cap) and not any(levels)
        return
    assert schedule == expected
    assert levels == pytest.approx(expected_levels, rel=1e-9)
    assert sum(levels) == pytest.approx(alpha, rel=1e-9)
    # unanimous votes certify at the first look with alpha (n*): the fewest that can
    k = next(i for i, v in enumerate(levels) if v)
    n = schedule[k]
    assert target_radius_look(n, n, k + 1, schedule, target, GAUSSIAN, sigma, alpha).decision == (
        "certified"
    )
    assert target_radius_look(
        n - 1, n, k + 1, schedule, target, GAUSSIAN, sigma, alpha
    ).decision != ("certified") or lower_confidence_bound(n - 1, n, levels[k]) > PHI.cdf(
        target / sigma
    )


def random_plans(count: int, seed: int, most_looks: int = 40):
    """(looks, target, sigma, alpha): random schedules up to 200,000 samples and settings."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        size = rng.integers(1, most_looks)
        looks = tuple(sorted(set(rng.integers(1, 200_000, size=size).tolist())))
        alpha = float(rng.choice([1e-6, 1e-3, 0.01, 0.2]))
        target, sigma = float(rng.uniform(0.05, 1.5)), float(rng.choice([0.12, 0.25, 0.5, 1.0]))
        yield looks, target, sigma, alpha


def test_levels_sum_below_alpha_for_any_schedule():
    """The union bound needs sum <= alpha whatever schedule reaches target_levels."""
    for looks, target, sigma, alpha in random_plans(200, seed=0):
        levels = target_levels(looks, target, GAUSSIAN, sigma, alpha)
        assert sum(Fraction(v) for v in levels) <= Fraction(alpha), (looks, alpha, target, sigma)


def decision_thresholds(schedule, target, sigma, alpha, version=4):
    """Per look: the least count that certifies and the largest that abstains, found by
    bisection on target_radius_look's own decisions (both monotone in the count)."""

    def least(pred, n):
        lo, hi = 0, n + 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if pred(mid) else (mid + 1, hi)
        return lo

    cert, abst = [], []
    for k, n in enumerate(schedule, 1):

        def decide(c, n=n, k=k):
            return target_radius_look(
                c, n, k, schedule, target, GAUSSIAN, sigma, alpha, version
            ).decision

        cert.append(least(lambda c, n=n: c <= n and decide(c) == "certified", n))
        abst.append(least(lambda c: decide(c) != "abstain", n) - 1)
    return np.array(cert), np.array(abst)


def certified_rate(p, schedule, cert, abst, runs, seed):
    rng = np.random.default_rng(seed)
    sizes = np.diff((0, *schedule))
    counts = np.cumsum(rng.binomial(sizes, p, size=(runs, len(sizes))), axis=1)
    done = (counts >= cert) | (counts <= abst)
    assert done.any(axis=1).all()
    stop = np.argmax(done, axis=1)
    return int((counts[np.arange(runs), stop] >= cert[stop]).sum())


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("target, sigma", [(0.25, 0.25), (0.5, 0.5), (0.1, 0.5)])
def test_false_certificates_stay_within_alpha(target, sigma, version):
    """p_A exactly at the threshold (the null's boundary): every certificate is false; their
    rate must not exceed alpha (one-sided binomial test at 0.001), and well above the
    threshold the test does certify (so it is not a test that never does). Format v3's union
    bound and v4's exact boundary."""
    alpha, runs = 0.05, 20_000
    schedule = target_schedule(16, 8192, target, GAUSSIAN, sigma, alpha)
    cert, abst = decision_thresholds(schedule, target, sigma, alpha, version)
    threshold = PHI.cdf(target / sigma)
    false = certified_rate(threshold, schedule, cert, abst, runs, seed=1)
    assert binomtest(false, runs, alpha, alternative="greater").pvalue > 0.001, false / runs
    assert false > 0  # the boundary is tight enough that some runs certify
    strong = certified_rate(PHI.cdf(2 * target / sigma), schedule, cert, abst, 500, seed=2)
    assert strong >= 450


def test_the_simulation_catches_an_invalid_rule():
    """Control: the same looks with the full alpha at every look (a fixed-n bound reused at a
    data-dependent stopping time) certify at the boundary more often than alpha, and the test
    above would reject it."""
    alpha, runs, target, sigma = 0.05, 20_000, 0.25, 0.25
    schedule = target_schedule(16, 8192, target, GAUSSIAN, sigma, alpha)
    threshold = PHI.cdf(target / sigma)
    cert = np.array([next(c for c in range(n + 2) if c > n or
                          lower_confidence_bound(c, n, alpha) > threshold) for n in schedule])  # fmt: skip
    abst = np.array([-1] * (len(schedule) - 1) + [cert[-1] - 1])
    false = certified_rate(threshold, schedule, cert, abst, runs, seed=1)
    assert binomtest(false, runs, alpha, alternative="greater").pvalue < 1e-6, false / runs


def test_the_verifier_recomputes_v3_and_v2_schedules():
    plan = Plan(alpha=0.001, family=GAUSSIAN, scale=0.25, cap=100_000, first_look=64,
                target_radius=0.5)  # fmt: skip
    v3, v2 = procedures.get("target_radius"), procedures.get("target_radius", version=2)
    new = target_schedule(64, 100_000, 0.5, GAUSSIAN, 0.25, 0.001)
    old = target_schedule_v2(64, 100_000, 0.5, GAUSSIAN, 0.25, 0.001)
    assert new != old
    assert v3.schedule(plan) == new and v3.schedule_problems(plan, new, False) == []
    assert v2.schedule(plan) == old and v2.schedule_problems(plan, old, False) == []
    assert v3.schedule_problems(plan, old, False) and v2.schedule_problems(plan, new, False)
    # a v2 record's look is decided with the v2 levels, a v3 record's with the v3 ones
    n = old[-4]
    counts, selection = np.array([n, 0]), np.array([8, 0])
    k = old.index(n) + 1
    assert v2.look(plan, old, k, selection, counts).bound_alpha == target_levels_v2(
        old, 0.5, GAUSSIAN, 0.25, 0.001)[k - 1]  # fmt: skip
    n = new[-4]
    k = new.index(n) + 1
    assert v3.look(plan, new, k, selection, np.array([n, 0])).bound_alpha == target_levels(
        new, 0.5, GAUSSIAN, 0.25, 0.001)[k - 1]  # fmt: skip


def test_exact_crossing_probability_against_enumeration(exact_spending):
    """The dynamic programme over lost votes against all 2^9 vote sequences, with a look that
    can never certify (its count exceeds its size)."""
    schedule, certifying, p = (3, 5, 7, 9), (4, 5, 6, 8), 0.8
    total = 0.0
    for votes in itertools.product((0, 1), repeat=schedule[-1]):
        if any(sum(votes[:n]) >= c for n, c in zip(schedule, certifying, strict=True)):
            total += math.prod(p if v else 1 - p for v in votes)
    assert exact_spending.crossing_probability(schedule, certifying, p) == pytest.approx(
        total, rel=1e-12)  # fmt: skip


@pytest.mark.parametrize("target, sigma, alpha", [(0.25, 0.25, 0.001), (0.75, 0.25, 0.001),
                                                  (0.5, 0.5, 0.05), (0.1, 0.5, 0.01)])  # fmt: skip
def test_v3_levels_spend_at_most_alpha_exactly(exact_spending, target, sigma, alpha):
    """The union bound's guarantee, computed exactly rather than simulated: at p_A equal to
    the threshold, the probability that some look of today's test reaches its certifying
    count is at most alpha (and its looks do certify: more than a tenth of alpha)."""
    schedule = target_schedule(64, 20_000, target, GAUSSIAN, sigma, alpha)
    counts = certifying_counts(schedule, target, GAUSSIAN, sigma, alpha)
    spent = exact_spending.crossing_probability(schedule, counts, PHI.cdf(target / sigma))
    assert alpha / 10 < spent <= alpha
    # the exact group-sequential counts spend at most alpha too, and more of it
    start = next(n for n, c in zip(schedule, counts, strict=True) if c <= n)
    exact = exact_spending.spending_counts(schedule, start, PHI.cdf(target / sigma), alpha, 1 / 3)
    assert spent <= exact_spending.crossing_probability(
        schedule, exact, PHI.cdf(target / sigma)) <= alpha  # fmt: skip
