"""Selection sized to the evidence (issue 23, problem 5): the sequential procedures draw
selection samples until the top class is clear, at most n0, apart from the estimation
samples. The rule against values computed here, its cost in power and the procedure's
validity by simulation, what the verifier rechecks, and the live server."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, norm
from test_linear_radius import point_at

from smoothcert.families import FAMILIES
from smoothcert.procedures.selection import (
    SELECTION_LEVEL,
    selection_problems,
    selection_schedule,
    selection_stops,
)
from smoothcert.procedures.target_radius import target_radius_look, target_schedule

GAUSSIAN = FAMILIES["gaussian"]


def lower_bound_by_bisection(k: int, n: int, level: float) -> float:
    """The p with P[Bin(n, p) >= k] = level, by bisection on the binomial tail."""
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if binom.sf(k - 1, n, mid) > level else (mid, hi)
    return (lo + hi) / 2


def test_the_schedule_and_the_rule_against_independent_values():
    assert selection_schedule(100) == (8, 16, 32, 64, 100)
    assert selection_schedule(5) == (5,)
    # unanimous votes: the bound is level ** (1 / k): 7 votes clear 1/2 at 0.01, 6 do not
    assert SELECTION_LEVEL ** (1 / 7) > 0.5 > SELECTION_LEVEL ** (1 / 6)
    assert selection_stops(np.array([0, 7, 0]))
    assert not selection_stops(np.array([0, 6, 0]))
    assert not selection_stops(np.array([0, 0, 0]))
    for k, n in ((14, 16), (13, 16), (22, 32), (21, 32), (58, 100)):
        counts = np.array([n - k, k])
        assert selection_stops(counts) == (lower_bound_by_bisection(k, n, SELECTION_LEVEL) > 0.5)
    assert selection_stops(np.array([2, 14])) and not selection_stops(np.array([3, 13]))


def run_selection(rng, probabilities, cap: int = 100) -> tuple[int, int]:
    """One selection as the server runs it: (the class picked, the samples drawn)."""
    counts, drawn = np.zeros(len(probabilities), np.int64), 0
    for size in selection_schedule(cap):
        counts += rng.multinomial(size - drawn, probabilities)
        drawn = size
        if selection_stops(counts):
            break
    return int(np.argmax(counts)), drawn


def test_a_wrong_pick_is_rare_power_only():
    """The guarantee on power: with P[c] = 1/2 (the worst case for c being the only majority
    class) and P[d] = 0.48, selection stops on d with probability at most level * looks
    (0.05 here, five looks); measured over 4,000 runs."""
    rng = np.random.default_rng(11)
    runs, looks = 4000, len(selection_schedule(100))
    wrong = 0
    for _ in range(runs):
        picked, drawn = run_selection(rng, [0.5, 0.48, 0.02])
        wrong += picked != 0 and drawn < 100
    bound = SELECTION_LEVEL * looks
    assert wrong / runs <= bound + 3 * math.sqrt(bound * (1 - bound) / runs), wrong


def test_clear_inputs_need_few_selection_samples():
    rng = np.random.default_rng(12)
    drawn = [run_selection(rng, [0.02, 0.97, 0.01])[1] for _ in range(500)]
    assert np.median(drawn) == 8 and max(drawn) <= 32


def test_target_radius_with_adaptive_selection_keeps_alpha():
    """Validity by simulation: the selection stops on its votes, the estimation samples are
    drawn afresh for the class it picked; with every class's p_A at most the threshold for r
    (c_A just below it), any "certified" is false: at most alpha of 3,000 runs."""
    alpha, sigma, target, runs = 0.05, 0.25, 0.25, 3000
    threshold = norm.cdf(target / sigma)
    p = [threshold - 1e-4, 1 - threshold + 1e-4 - 0.01, 0.01]
    schedule = target_schedule(32, 4096, target, GAUSSIAN, sigma, alpha)
    rng = np.random.default_rng(13)
    certified = 0
    for _ in range(runs):
        picked, _ = run_selection(rng, p)
        votes = np.cumsum(rng.binomial(np.diff((0, *schedule)), p[picked]))
        for k, (count, n) in enumerate(zip(votes, schedule, strict=True), 1):
            look = target_radius_look(int(count), n, k, schedule, target, GAUSSIAN, sigma, alpha)
            if look.decision != "continue":
                certified += look.decision == "certified"
                break
    rate = certified / runs
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate
    assert certified > 0  # not a test that never certifies (p_A sits at the threshold)


def test_what_the_verifier_rechecks():
    assert selection_problems(np.array([0, 8]), 100) == []
    assert selection_problems(np.array([30, 70]), 100) == []  # the cap: any votes
    assert "not a selection look" in selection_problems(np.array([0, 9]), 100)[0]
    assert "does not hold" in selection_problems(np.array([4, 12]), 100)[0]


def test_live_selection_stops_early_for_a_clear_input(client):
    x = point_at(0.5, 1)  # p_A = Phi(2) = 0.977 for the linear model
    sizes = []
    for _ in range(10):
        r = client.predict("linear", x, n0=100, n=100_000, alpha=0.001,
                           procedure="target_radius", target_radius=0.25)  # fmt: skip
        assert sum(r.selection_counts) == r.n0 and r.candidate == 1
        sizes.append(r.n0)
    assert all(n in selection_schedule(100) for n in sizes)
    assert np.median(sizes) <= 16, sizes
    fixed = client.predict("linear", x, n0=100, n=1000)  # CERTIFY keeps its n0
    assert fixed.n0 == sum(fixed.selection_counts) == 100


@pytest.mark.parametrize(
    "options", [{"procedure": "anytime"}, {"procedure": "target_radius", "target_radius": 0.25}]
)
def test_live_selection_never_exceeds_n0(client, options):
    r = client.predict("linear", point_at(0.0, 1), n0=40, n=2000, alpha=0.001, **options)
    assert r.n0 <= 40 and r.n0 in selection_schedule(40)
