"""The anytime certificate's rules (issue 23), as pure functions against values computed here
from their definitions, and their validity by simulation: binomial draws of the counts at a
known p_A, whose true radius sigma * Phi^-1(p_A) a reported radius may exceed in at most an
alpha fraction of runs, whatever the rule: time-sized looks, the best look, the tolerance."""

from __future__ import annotations

import asyncio
import json
import math
import time
from itertools import pairwise

import numpy as np
import pytest
from scipy.stats import norm
from test_linear_radius import point_at

from smoothcert.bounds import lower_confidence_bound, upper_confidence_bound
from smoothcert.families import FAMILIES
from smoothcert.procedures import ABSTAIN, CONTINUE, Outcome, look_schedule
from smoothcert.procedures.anytime import (
    MIN_FIRST_LOOK,
    anytime_levels,
    anytime_look,
    best,
    timed_look_size,
    untimed_schedule,
)
from smoothserve.looks import LOOK_TIME_SHARE

GAUSSIAN = FAMILIES["gaussian"]


def levels_by_definition(schedule, alpha, cap, horizon=0):
    """The split from its definition, in floats: 1/50 of alpha on the first look, the rest by
    G(n) = (1 - rho) min(1, (n - n1) / (H - n1))^2 + rho max(0, 1 - H / n), rho = 1/20 when
    H < cap."""
    n1, h = schedule[0], horizon or cap
    if n1 == cap:
        return [alpha]
    rho = 0.05 if h < cap else 0.0

    def g(n):
        if n <= n1:
            return 0.0
        u = 1.0 if h == n1 else min(1.0, (n - n1) / (h - n1))
        return (1 - rho) * u * u + rho * max(0.0, 1 - h / n)

    return [alpha / 50] + [alpha * 49 / 50 * (g(b) - g(a)) for a, b in pairwise(schedule)]


@pytest.mark.parametrize(
    "schedule, cap, horizon",
    [((64, 100_000), 100_000, 0), ((64, 7000), 100_000, 7000), ((64, 3000, 7000, 20_000),
     100_000, 7000), (look_schedule(64, 100_000), 100_000, 0), ((10,), 10, 0),
     ((64, 128), 100_000, 64)],
)  # fmt: skip
def test_levels_follow_their_definition_and_sum_below_alpha(schedule, cap, horizon):
    levels = anytime_levels(schedule, 0.001, cap, horizon)
    assert list(levels) == pytest.approx(levels_by_definition(schedule, 0.001, cap, horizon),
                                         rel=1e-9)  # fmt: skip
    assert sum(levels) <= 0.001
    assert all(v >= 0 for v in levels)


def test_levels_sum_below_alpha_over_any_looks():
    """Random increasing looks, random horizons, up to 200 looks: never more than alpha."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        cap = int(rng.integers(2, 10**6))
        looks = int(rng.integers(1, 200))
        sizes = np.unique(rng.integers(1, cap + 1, size=looks))
        horizon = int(rng.integers(sizes[0], cap + 1))
        levels = anytime_levels(tuple(int(n) for n in sizes), 0.01, cap, horizon)
        assert sum(levels) <= 0.01, (sizes, horizon)


def test_a_look_sized_to_the_time_left_gets_most_of_alpha():
    """Problem 1 of the issue: alpha / 2 on a first look of 64 samples. Now the look that
    reaches the horizon from a third of the way gets eight ninths of what the first look
    leaves, and a single look to the horizon nearly all of it."""
    alpha = 0.001
    assert anytime_levels((64,), alpha, 100_000)[0] == pytest.approx(alpha / 50, rel=1e-9)
    one = anytime_levels((64, 5000), alpha, 100_000, 5000)[-1]
    assert one == pytest.approx(alpha * 0.98 * 0.95, rel=1e-9)
    third = anytime_levels((64, 1731, 5065), alpha, 100_000, 5065)  # 1731 = 64 + 5001 / 3
    assert third[1] == pytest.approx(alpha * 0.98 * 0.95 / 9, rel=1e-9)
    assert third[2] == pytest.approx(alpha * 0.98 * 0.95 * 8 / 9, rel=1e-9)
    assert anytime_levels((64, 100_000), alpha, 100_000)[-1] == pytest.approx(alpha * 0.98)


def test_levels_refuse_looks_that_do_not_increase():
    with pytest.raises(ValueError):
        anytime_levels((64, 64), 0.001, 1000)
    with pytest.raises(ValueError):
        anytime_levels((64, 2000), 0.001, 1000)
    with pytest.raises(ValueError):
        anytime_levels((64, 128), 0.001, 1000, horizon=32)


def test_anytime_look_bound_radius_and_abstention():
    schedule = (64, 1000)
    level = levels_by_definition(schedule, 0.001, 100_000)[1]
    look = anytime_look(900, 1000, 2, schedule, GAUSSIAN, 0.25, 0.001, 100_000)
    assert look.look_alpha == pytest.approx(level, rel=1e-9)
    assert look.p_a_lower == pytest.approx(lower_confidence_bound(900, 1000, level), rel=1e-12)
    assert look.radius == pytest.approx(0.25 * norm.ppf(look.p_a_lower), rel=1e-9)
    assert look.decision == CONTINUE
    # upper bound at the look's level below 1/2: no number of samples would certify
    assert upper_confidence_bound(10, 64, 0.001 / 50) < 0.5
    assert anytime_look(10, 64, 1, (64,), GAUSSIAN, 0.25, 0.001, 1000).decision == "abstain"
    # at the cap the look decides
    assert anytime_look(990, 1000, 2, (64, 1000), GAUSSIAN, 0.25, 0.001, 1000).decision == (
        "certified"
    )


def test_a_radius_of_zero_never_meets_the_tolerance():
    """Problem 2: with radius 0 and a projected radius 0 the old rule stopped (and abstained)
    after 64 samples. p_A = Phi(0.1 / 0.25) = 0.655: 40 of 64 votes leave the bound below 1/2
    at the first look's level, the upper bound above it, so the test must sample on."""
    look = anytime_look(40, 64, 1, (64, 128), GAUSSIAN, 0.25, 0.001, 200_000, tolerance=0.01)
    assert look.radius == 0 and look.decision == CONTINUE


def test_the_tolerance_projects_to_the_horizon():
    """Problem 2: true radius 0.3 (sigma 0.25), tolerance 0.02. At 64 samples the next look
    alone would add about 0.02, but the horizon (200,000) would add far more: continue. Near
    the horizon the projection is within the tolerance: stop, certified."""
    p, cap = norm.cdf(0.3 / 0.25), 200_000
    schedule = untimed_schedule(64, cap, 0.02)
    first = anytime_look(round(p * 64), 64, 1, schedule, GAUSSIAN, 0.25, 0.001, cap,
                         tolerance=0.02)  # fmt: skip
    assert first.decision == CONTINUE
    k = schedule.index(131_072) + 1
    late = anytime_look(round(p * 131_072), 131_072, k, schedule, GAUSSIAN, 0.25, 0.001, cap,
                        tolerance=0.02)  # fmt: skip
    level = levels_by_definition((*schedule[:k], cap), 0.001, cap)[-1]
    projected = 0.25 * norm.ppf(lower_confidence_bound(round(p * cap), cap, level))
    assert projected - late.radius <= 0.02 and late.decision == "certified"


def test_timed_look_sizes_follow_the_clock():
    # the first look: the configured one, shrunk to what fits, never below MIN_FIRST_LOOK
    assert timed_look_size(0, 100_000, 64, 10_000, 0.0) == 64
    assert timed_look_size(0, 100_000, 64, 20, 0.0) == 20
    assert timed_look_size(0, 100_000, 64, 0, 0.0) == MIN_FIRST_LOOK
    assert timed_look_size(0, 30, 64, 10_000, 0.0) == 30
    # the second: all that fits once the time per sample is measured on large draws; before,
    # a third of it (to measure it), then all of it
    assert timed_look_size(64, 100_000, 64, 6000, 0.0, looks=1, calibrated=True) == 6064
    assert timed_look_size(64, 100_000, 64, 6000, 0.0, looks=1) == 64 + 2000
    assert timed_look_size(3064, 100_000, 64, 3000, 0.0, 6064, looks=2) == 6064
    assert timed_look_size(64, 1000, 64, 6000, 0.0, looks=1) == 1000  # the cap
    # with a tolerance, at most double
    assert timed_look_size(64, 100_000, 64, 6000, 0.01, looks=1) == 128
    # nothing worth a look: less than a tenth more, or past the horizon without doubling
    assert timed_look_size(5000, 100_000, 64, 400, 0.0, looks=3) == 0
    assert timed_look_size(6064, 100_000, 64, 3000, 0.0, 6064, looks=3) == 0
    assert timed_look_size(6064, 100_000, 64, 7000, 0.0, 6064, looks=3) == 13_064


def outcome(radius: float) -> Outcome:
    return Outcome("continue", 1 if radius > 0 else ABSTAIN, 1, radius, 0.9, 0.0, 0.001)


def test_the_best_look_answers():
    """Problem 3: the largest radius of the looks made, the latest of equals; the last look
    when none certifies."""
    assert best([outcome(0.3), outcome(0.5), outcome(0.4)]) == 1
    assert best([outcome(0.5), outcome(0.5)]) == 1
    assert best([outcome(0.0), outcome(0.0)]) == 1
    assert best([outcome(0.2), outcome(0.0)]) == 0


# --- validity by simulation ---------------------------------------------------------------


def timed_schedule(rng, cap: int, first: int, tolerance: float) -> tuple[tuple[int, ...], int]:
    """Looks as the server sizes them under a deadline, from a simulated clock (random time
    per sample, deadline and calibration, drawn apart from the votes): the sizes and the
    horizon (LOOK_TIME_SHARE of what fits before the second look). A look may be cut by the
    deadline: it keeps a random share of its samples, as a look if that adds a tenth."""
    per_sample = rng.uniform(0.5, 2.0)
    budget = rng.uniform(20, 6000)  # samples' worth of time at unit speed
    calibrated = rng.random() < 0.5
    made, drawn, horizon = [], 0, 0
    while True:
        fits = int((budget - drawn * per_sample) / per_sample * rng.uniform(0.7, 1.1))
        size = timed_look_size(drawn, cap, first, fits, tolerance, horizon, len(made),
                               calibrated)  # fmt: skip
        if size == 0:
            break
        if len(made) == 1:
            horizon = max(made[0], min(cap, drawn + int(LOOK_TIME_SHARE * max(fits, 0))))
        if made and rng.random() < 0.3:  # cut by the deadline
            kept = int(rng.uniform(0, 1) * (size - drawn))
            if kept >= max(1, math.ceil(drawn / 10)):
                made.append(drawn + kept)
            break
        made.append(size)
        drawn = size
    return tuple(made), horizon


@pytest.mark.parametrize("rule", ["time-sized, last look", "time-sized, best look",
                                  "doubling, best look", "tolerance"])  # fmt: skip
def test_anytime_radius_exceeds_the_truth_within_alpha(rule):
    """p_A = 0.9, sigma = 0.25, alpha = 0.05: the reported radius exceeds the true radius
    sigma Phi^-1(0.9) in at most an alpha fraction of 3,000 runs (3 standard deviations)."""
    alpha, sigma, runs, cap, p = 0.05, 0.25, 3000, 8192, 0.9
    truth = sigma * norm.ppf(p)
    rng = np.random.default_rng(5)
    over = 0
    for _ in range(runs):
        tolerance = 0.02 if rule == "tolerance" else 0.0
        if rule.startswith("time-sized"):
            schedule, horizon = timed_schedule(rng, cap, 32, tolerance)
        else:
            schedule, horizon = untimed_schedule(32, cap, 0.02), 0
        counts = np.cumsum(rng.binomial(np.diff((0, *schedule)), p))
        radii = []
        for k, (c, n) in enumerate(zip(counts, schedule, strict=True), 1):
            look = anytime_look(int(c), n, k, schedule, GAUSSIAN, sigma, alpha, cap, horizon,
                                tolerance)  # fmt: skip
            radii.append(look.radius if look.decision != "abstain" else 0.0)
            if look.decision != CONTINUE:
                break
        radius = radii[-1] if rule == "time-sized, last look" else max(radii)
        over += radius > truth
    rate = over / runs
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), (rule, rate)


def test_the_simulation_can_tell_an_invalid_rule():
    """The same simulation with each look at the full alpha (a fixed-n bound reused at a
    data-dependent stopping time) and the best look: well over alpha."""
    alpha, sigma, runs, p = 0.05, 0.25, 3000, 0.9
    truth = sigma * norm.ppf(p)
    schedule = look_schedule(32, 8192)
    rng = np.random.default_rng(5)
    counts = np.cumsum(rng.binomial(np.diff((0, *schedule)), p, size=(runs, len(schedule))),
                       axis=1)  # fmt: skip
    over = sum(
        max(sigma * norm.ppf(max(lower_confidence_bound(int(c), n, alpha), 0.5))
            for c, n in zip(row, schedule, strict=True)) > truth
        for row in counts
    )  # fmt: skip
    assert over / runs > 1.5 * alpha


# --- records: v3 as the server signs them, and v2 records still verify ----------------------


def as_v2_anytime(record: dict) -> dict:
    """What a v2 server would have signed for the same counts: doubling looks from the plan's
    first look to its cap, level alpha / (k (k + 1)) at the look holding n, n0 fixed."""
    from smoothcert.procedures.anytime import anytime_look_v2

    old = json.loads(json.dumps(record))
    plan = {"first_look": record["plan"]["first_look"], "cap": record["plan"]["cap"]}
    schedule = look_schedule(plan["first_look"], plan["cap"])
    k = schedule.index(record["n"]) + 1
    look = anytime_look_v2(record["counts"][record["candidate"]], record["n"], k, GAUSSIAN,
                           record["sigma"], record["alpha"])  # fmt: skip
    old.update(format="smoothserve.certificate.v2", plan=plan, look_schedule=list(schedule),
               looks=k, bound_alpha=look.look_alpha, p_a_lower=look.p_a_lower,
               radius=look.radius if look.radius > 0 else 0.0)  # fmt: skip
    if look.radius <= 0:
        old.update(prediction=ABSTAIN, abstain=True, label="")
    return old


def test_records_of_both_formats_verify(client):
    """A v3 anytime record (its plan holds the selection rule, the horizon and whether a
    deadline timed its looks) verifies; the same counts as a v2 server signed them verify under
    v2's rules; a v2 record claiming v3's levels, or a v3 record stopping its selection where
    the rule does not allow, does not."""
    from smoothcert.verify import recompute

    x = point_at(0.3, 1)
    timed = 0
    for options in ({"tolerance": 0.01}, {"timeout": 0.05}, {"timeout": 0.05}):
        r = client.predict("linear", x, n0=100, n=400_000, alpha=0.001, procedure="anytime",
                           **options)  # fmt: skip
        record = json.loads(r.record)
        assert record["format"] == "smoothserve.certificate.v4"
        assert record["plan"]["selection"] == {"first": 8, "cap": 100, "level": 0.01}
        if not record["plan"]["timed"]:  # a deadline that never bound: the planned looks
            assert record["look_schedule"] == list(untimed_schedule(64, 400_000, r.tolerance))
        timed += record["plan"]["timed"]
        assert recompute(record) == [], record
    assert timed >= 1  # 400,000 samples do not fit in 50 ms: the looks follow the clock
    untimed = json.loads(client.predict("linear", x, n0=100, n=8192, alpha=0.001,
                                        procedure="anytime", tolerance=0.01).record)  # fmt: skip
    old = as_v2_anytime(untimed)
    assert recompute(old) == []
    claims_v3 = {**old, "bound_alpha": untimed["bound_alpha"], "p_a_lower": untimed["p_a_lower"],
                 "radius": untimed["radius"]}  # fmt: skip
    assert recompute(claims_v3) != []
    early = json.loads(json.dumps(untimed))
    early["selection_counts"] = [1, 7]  # 7 of 8: the rule does not stop here
    early["n0"] = 8
    assert any("does not hold" in p for p in recompute(early))


# --- a look cut at the answer margin -----------------------------------------------------------


@pytest.mark.parametrize("drain", [0.02, -1.0], ids=["stopped", "cut"])
def test_a_look_stopped_or_cut_before_the_margin_keeps_its_samples(linear_repo, drain):
    """The timed looks (``looks.timed_looks``) with the real scheduler and ONNX Runtime
    backend, and a clock that believes 400,000 samples fit in the time left: the second look is
    sized to the cap. It stops cutting batches a drain time before the margin and ends with
    those in flight ("stopped"), or, when the drain time would come after the margin, the
    margin cuts it ("cut"). Either way its classified samples stay a look of that many samples
    (not the cap, more than a tenth beyond the first look), the counts sum to it, the answer
    is that look's bound at the level its size gets, and it comes before the deadline; a stop
    measures the drain time, a cut teaches the clock the time per sample."""
    from smoothcert import procedures
    from smoothcert.procedures import Plan
    from smoothserve.backends.onnxruntime import OnnxRuntimeBackend
    from smoothserve.looks import AnswerOverhead, DrawClock, Timing, timed_looks
    from smoothserve.metrics import Metrics
    from smoothserve.noise import noise_generator
    from smoothserve.repository import latest
    from smoothserve.scheduler import BatchScheduler, Tally

    async def main():
        backend = OnnxRuntimeBackend(linear_repo, providers=["CPUExecutionProvider"])
        model = latest((await backend.start()).ready["linear"])
        scheduler = BatchScheduler(model, backend, Metrics(), batch_size=64)
        scheduler.start()
        x, rng = point_at(0.5, 1), noise_generator()
        clock = DrawClock()
        clock.add(1000, 1000 * 1e-9)  # optimistic: a nanosecond per sample
        clock.drain = drain

        async def draw(num: int, tally: Tally | None = None) -> np.ndarray:
            return await scheduler.count(x, num, rng, None, False, tally)

        now = time.monotonic()
        timing = Timing(now + 0.3, now, clock, AnswerOverhead())
        plan = Plan(alpha=0.001, family=GAUSSIAN, scale=0.25, cap=400_000, first_look=64)
        try:
            done = await timed_looks(procedures.get("anytime"), plan, draw, np.array([0, 100]),
                                     timing, model)  # fmt: skip
        finally:
            await scheduler.close()
        return done, clock, timing.deadline - time.monotonic()

    done, clock, spare = asyncio.run(main())
    assert spare > 0 and done.timed
    first, last = done.schedule
    assert first == 64 and first + 6 < last < 400_000 and last == done.drawn
    assert done.look == 2 and done.counts.sum() == last and last % 64 == 0
    look = anytime_look(int(done.counts[1]), last, 2, done.schedule, GAUSSIAN, 0.25, 0.001,
                        400_000, done.horizon)  # fmt: skip
    assert (done.outcome.radius, done.outcome.bound_alpha) == (look.radius, look.look_alpha)
    if drain > 0:
        assert clock.drain != drain  # the stop measured how long the batches in flight took
    else:
        assert clock.per_sample > 1e-6  # the cut draw taught the clock
