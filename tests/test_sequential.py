"""Sequential certification: the pure functions against independently computed values and
by simulation at their worst case, then the live server against a model whose p_A is known.

For the linear model f(x) = [w.x + b > 0], P[f(x + noise) = 1] = Phi(d / sigma) with d the
signed distance of x to the boundary, so the true certified radius is d exactly."""

from __future__ import annotations

import json
import math
import statistics
import time

import grpc
import numpy as np
import pytest
from conftest import LINEAR_SIGMA
from scipy.stats import beta, binom, norm
from servers import metric
from test_linear_radius import point_at, true_radius

from smoothcert import procedures
from smoothcert.bounds import lower_confidence_bound, upper_confidence_bound
from smoothcert.families import FAMILIES
from smoothcert.procedures import look_schedule
from smoothcert.procedures.anytime import anytime_alpha, anytime_look, anytime_look_v2
from smoothcert.procedures.target_radius import (
    EARLY_ABSTAIN_LEVEL,
    PROJECTION_LEVEL,
    certifying_counts,
    exact_counts,
    target_levels,
    target_levels_v2,
    target_radius_look,
    target_schedule,
)
from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_dev.testing import ServerProcess

PHI = statistics.NormalDist()
GAUSSIAN = FAMILIES["gaussian"]


# --- pure functions at their edges --------------------------------------------------------


def test_look_schedule():
    assert look_schedule(64, 1000) == (64, 128, 256, 512, 1000)
    assert look_schedule(64, 1024) == (64, 128, 256, 512, 1024)
    assert look_schedule(64, 64) == (64,)
    assert look_schedule(64, 10) == (10,)
    with pytest.raises(ValueError):
        look_schedule(0, 10)


def test_anytime_alphas_sum_below_alpha():
    for looks in (1, 2, 10, 1000):
        total = sum(anytime_alpha(k, 0.01) for k in range(1, looks + 1))
        assert math.isclose(total, 0.01 * (1 - 1 / (looks + 1)), rel_tol=1e-12)


def bisect(f, lo: float = 0.0, hi: float = 1.0) -> float:
    """The root of a function increasing on [lo, hi], by bisection."""
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize(
    "k, n, alpha", [(0, 10, 0.05), (3, 10, 0.05), (90, 100, 1e-3), (999, 1000, 1e-6)]
)
def test_upper_bound_against_the_binomial_tail(k, n, alpha):
    """The upper bound p solves P[Bin(n, p) <= k] = alpha (independent of the Beta quantile)."""
    expected = bisect(lambda p: alpha - binom.cdf(k, n, p))
    assert math.isclose(upper_confidence_bound(k, n, alpha), expected, rel_tol=1e-9, abs_tol=1e-12)
    assert upper_confidence_bound(n, n, alpha) == 1.0


S12 = look_schedule(64, 100_000)  # 64, 128, ..., 65536, 100000: 12 looks
HALF = (GAUSSIAN, 0.5, 0.001)  # Gaussian noise, sigma = 0.5, alpha = 0.001


def test_target_look_closed_form_for_unanimous_votes():
    """Format v2's split (doubling looks, kept so that v2 records verify; v3's grid is tested
    in test_target_grid.py). k = n: the lower bound is (alpha / K)^(1/n), so with sigma = 0.5 and r = 0.5 (threshold
    Phi(1) = 0.8413) 64 unanimous votes certify at alpha = 0.001 over 12 looks, all of which
    can certify (each gets alpha / 12)."""
    assert target_levels_v2(S12, 0.5, GAUSSIAN, 0.5, 0.001) == (0.001 / 12,) * 12
    look = target_radius_look(64, 64, 1, S12, 0.5, GAUSSIAN, 0.5, 0.001, version=2)
    assert look.decision == "certified"
    assert math.isclose(look.p_a_lower, (0.001 / 12) ** (1 / 64), rel_tol=1e-12)
    assert math.isclose(look.radius, 0.5 * PHI.inv_cdf((0.001 / 12) ** (1 / 64)), rel_tol=1e-9)
    assert look.look_alpha == 0.001 / 12
    # 40 unanimous votes certify at a single look, not as the first of several looks: 40 is
    # below what any level the split could give it needs, so that look gets no alpha at all
    later = look_schedule(40, 100_000)
    assert target_levels_v2(later, 0.5, GAUSSIAN, 0.5, 0.001)[0] == 0.0
    assert target_radius_look(40, 40, 1, later, 0.5, *HALF, version=2).decision == "continue"
    assert target_radius_look(40, 40, 1, (40,), 0.5, *HALF, version=2).decision == "certified"


def test_target_look_abstains_early_and_at_the_last_look():
    assert target_radius_look(40, 64, 1, S12, 0.5, *HALF).decision == "abstain"  # hopeless
    assert target_radius_look(60, 64, 1, S12, 0.5, *HALF).decision == "continue"
    assert target_radius_look(60, 64, 1, (64,), 0.5, *HALF).decision == "abstain"  # the cap


def independent_levels(schedule, target, sigma, alpha, threshold=None):
    """The split, from its definition: the largest m such that at least m looks can certify
    at alpha / m, where a look of n samples can iff (alpha / m) ** (1 / n) > Phi(r / sigma)
    (or ``threshold``, for another family)."""
    if threshold is None:
        threshold = PHI.cdf(target / sigma)
    for m in range(len(schedule), 0, -1):
        able = [k for k, n in enumerate(schedule) if (alpha / m) ** (1 / n) > threshold]
        if len(able) >= m:
            return [alpha / m if k in able[-m:] else 0.0 for k in range(len(schedule))]
    return [0.0] * len(schedule)


@pytest.mark.parametrize("sigma, target", [(0.25, 0.25), (0.25, 0.5), (0.25, 0.75),
                                           (0.25, 1.0), (0.5, 0.75), (0.5, 1.0)])  # fmt: skip
def test_alpha_goes_only_to_looks_that_can_certify(sigma, target):
    """Format v2's split (kept so that v2 records verify)."""
    levels = target_levels_v2(S12, target, GAUSSIAN, sigma, 0.001)
    assert list(levels) == pytest.approx(independent_levels(S12, target, sigma, 0.001))
    assert sum(levels) <= 0.001 * (1 + 1e-12)
    threshold = PHI.cdf(target / sigma)
    for n, level in zip(S12, levels, strict=True):  # a look with alpha can certify with it
        assert level == 0.0 or lower_confidence_bound(n, n, level) > threshold


@pytest.mark.parametrize("lam, target", [(0.5, 0.25), (0.5, 0.45), (1.0, 0.5), (0.25, 0.2)])
def test_uniform_alpha_goes_only_to_looks_that_can_certify(lam, target):
    """The same split for uniform noise, whose threshold is 1/2 + r / (2 lambda)."""
    uniform = FAMILIES["uniform"]
    threshold = 0.5 + target / (2 * lam)
    levels = target_levels_v2(S12, target, uniform, lam, 0.001)
    expected = independent_levels(S12, target, lam, 0.001, threshold=threshold)
    assert list(levels) == pytest.approx(expected)
    for n, level in zip(S12, levels, strict=True):
        assert level == 0.0 or lower_confidence_bound(n, n, level) > threshold
    look = target_radius_look(64, 64, 1, S12, target, uniform, lam, 0.001, version=2)
    if levels[0]:
        assert look.decision == "certified"
        p = lower_confidence_bound(64, 64, levels[0])
        assert math.isclose(look.radius, 2 * lam * (p - 0.5), rel_tol=1e-12)
        assert look.radius >= target


def test_an_unreachable_target_abstains_at_the_first_look():
    """sigma = 0.25, r = 1: Phi(4) needs 0.001 ** (1 / n) > 0.99997, n > 218,000: beyond the
    cap, so no look gets alpha and the first look abstains, whatever the votes."""
    assert target_levels(S12, 1.0, GAUSSIAN, 0.25, 0.001) == (0.0,) * 12
    assert target_radius_look(64, 64, 1, S12, 1.0, GAUSSIAN, 0.25, 0.001).decision == "abstain"


def test_futility_abstains_once_no_later_look_can_certify():
    """sigma = 0.25, r = 0.75, cap 5200: only the cap can certify Phi(3) (it needs n > 5114 at
    alpha), and only with every vote; one vote lost at the first look leaves it short, so the
    test abstains at once, where the upper bound alone would still continue."""
    sigma, target, alpha = 0.25, 0.75, 0.001
    schedule = target_schedule(64, 5200, target, GAUSSIAN, sigma, alpha)
    levels = target_levels(schedule, target, GAUSSIAN, sigma, alpha)
    threshold = PHI.cdf(target / sigma)

    def can_still_certify(lost: int) -> bool:  # from the definition, with every vote to c_A
        return any(lower_confidence_bound(size - lost, size, v) > threshold
                   for size, v in zip(schedule, levels, strict=True) if v)  # fmt: skip

    assert not can_still_certify(1) and can_still_certify(0)
    assert upper_confidence_bound(63, 64, EARLY_ABSTAIN_LEVEL) > threshold
    plan = (target, GAUSSIAN, sigma, alpha)
    assert target_radius_look(63, 64, 1, schedule, *plan).decision == "abstain"
    assert target_radius_look(64, 64, 1, schedule, *plan).decision == "continue"


@pytest.mark.parametrize("sigma, target", [(0.25, 0.5), (0.5, 0.25), (0.5, 1.0)])
def test_projected_futility_against_its_definition(sigma, target):
    """Projected futility (format v3): at the first look with alpha where it decides, the test
    abstains exactly when no later look would certify with the votes so far plus floor(U (n_j
    - n)) more, U the Clopper-Pearson upper bound at PROJECTION_LEVEL, computed here from
    scipy's beta quantiles (not smoothcert.bounds). At that edge the older rules alone (every
    further vote to c_A; the upper bound at EARLY_ABSTAIN_LEVEL) would go on."""
    alpha, cap = 0.001, 100_000
    schedule = target_schedule(64, cap, target, GAUSSIAN, sigma, alpha)
    levels = target_levels(schedule, target, GAUSSIAN, sigma, alpha)
    threshold = PHI.cdf(target / sigma)

    def lower(c, m, a):
        return 0.0 if c == 0 else beta.ppf(a, c, m - c + 1)

    def possible(c, k, rate=None):  # some later look certifies with floor(rate (m - n)) more
        n = schedule[k]
        return any(lower(c + math.floor((rate or 1.0) * (m - n)), m, v) > threshold
                   for m, v in zip(schedule[k + 1:], levels[k + 1:], strict=True) if v)  # fmt: skip

    def hopeful(c, k):
        n = schedule[k]
        return possible(c, k, 1.0 if c == n else beta.ppf(1 - PROJECTION_LEVEL, c + 1, n - c))

    def edge(k):  # the largest count the projection gives up on (hopeful is monotone in c)
        return next(c for c in range(schedule[k], -1, -1) if not hopeful(c, k))

    k = next(k for k, v in enumerate(levels[:-1]) if v and possible(edge(k), k)
             and upper_confidence_bound(edge(k), schedule[k], EARLY_ABSTAIN_LEVEL) >= threshold)
    n, c = schedule[k], edge(k)
    assert hopeful(c + 1, k) and not hopeful(c, k) and lower(c + 1, n, levels[k]) <= threshold
    plan = (schedule, target, GAUSSIAN, sigma, alpha)
    assert target_radius_look(c, n, k + 1, *plan).decision == "abstain"
    assert target_radius_look(c + 1, n, k + 1, *plan).decision == "continue"


@pytest.mark.parametrize("sigma, target", [(0.25, 0.5), (0.25, 0.75), (0.5, 0.75), (0.5, 1.0)])
def test_the_target_schedule_starts_certifying_at_the_fewest_samples(sigma, target):
    """The first look with alpha is the fewest samples that can certify at its level, so a
    unanimous input stops there; the looks before it can only abstain."""
    alpha = 0.001
    schedule = target_schedule(64, 100_000, target, GAUSSIAN, sigma, alpha)
    levels = target_levels(schedule, target, GAUSSIAN, sigma, alpha)
    first = next(k for k, v in enumerate(levels) if v)
    n = schedule[first]
    threshold = PHI.cdf(target / sigma)
    assert lower_confidence_bound(n, n, levels[first]) > threshold
    assert lower_confidence_bound(n - 1, n - 1, levels[first]) <= threshold
    look = target_radius_look(n, n, first + 1, schedule, target, GAUSSIAN, sigma, alpha)
    assert look.decision == "certified"
    assert schedule[-1] == 100_000 and list(schedule) == sorted(set(schedule))


def test_anytime_look_of_format_v2_bound():
    """Format v2's anytime look (kept so that v2 records verify): level alpha / (k (k + 1));
    the current rules are tested in test_anytime.py."""
    look = anytime_look_v2(900, 1000, 3, GAUSSIAN, 0.25, 0.001)
    assert look.look_alpha == 0.001 / 12
    assert look.p_a_lower == lower_confidence_bound(900, 1000, 0.001 / 12)
    assert math.isclose(look.radius, 0.25 * PHI.inv_cdf(look.p_a_lower), rel_tol=1e-9)
    assert look.decision == "continue"
    assert anytime_look_v2(30, 100, 1, GAUSSIAN, 0.25, 0.001).decision == "abstain"  # upper < 1/2


# --- validity by simulation, at the worst case ------------------------------------------------


def simulate_counts(p: float, schedule: tuple[int, ...], runs: int, seed: int) -> np.ndarray:
    """Cumulative votes for c_A at each look: (runs, looks)."""
    rng = np.random.default_rng(seed)
    sizes = np.diff((0, *schedule))
    return np.cumsum(rng.binomial(sizes, p, size=(runs, len(sizes))), axis=1)


def run_target_test(counts: np.ndarray, schedule, target, sigma, alpha) -> list[str]:
    """The decision of each simulated run, stopping at its first decisive look."""
    decisions = []
    for row in counts:
        for k, (count, n) in enumerate(zip(row, schedule, strict=True), 1):
            look = target_radius_look(int(count), n, k, schedule, target, GAUSSIAN, sigma, alpha)
            if look.decision != "continue":
                decisions.append(look.decision)
                break
    return decisions


@pytest.mark.parametrize("schedule_of", ["doubling", "target"])
def test_target_radius_false_certificates_stay_within_alpha(schedule_of):
    """p_A just below Phi(r / sigma): every run that says "certified" is a false certificate."""
    alpha, sigma, target, runs = 0.05, 0.25, 0.25, 4000
    schedule = (look_schedule(32, 4096) if schedule_of == "doubling"
                else target_schedule(32, 4096, target, GAUSSIAN, sigma, alpha))  # fmt: skip
    p = norm.cdf(target / sigma) - 1e-4
    decisions = run_target_test(
        simulate_counts(p, schedule, runs, 1), schedule, target, sigma, alpha
    )
    rate = decisions.count("certified") / runs
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate
    # and it is not a test that never certifies: well above the threshold it almost always does
    strong = simulate_counts(norm.cdf(2 * target / sigma), schedule, 200, seed=2)
    decisions = run_target_test(strong, schedule, target, sigma, alpha)
    assert decisions.count("certified") >= 195


@pytest.mark.parametrize("rule", ["largest radius", "budget", "random look", "tolerance"])
def test_anytime_radius_exceeds_the_truth_within_alpha(rule):
    """Whatever the stopping rule, even the one that picks the look with the largest radius
    (which breaks a fixed-n bound recomputed at each look), the reported radius exceeds the
    true radius sigma * Phi^-1(p_A) in at most an alpha fraction of runs."""
    alpha, sigma, runs = 0.05, 0.25, 3000
    schedule = look_schedule(32, 8192)
    p = 0.9
    truth = sigma * norm.ppf(p)
    counts = simulate_counts(p, schedule, runs, seed=3)
    rng = np.random.default_rng(4)
    over = 0
    for row in counts:
        tolerance = 0.02 if rule == "tolerance" else 0.0
        looks = [anytime_look(int(c), n, k, schedule, GAUSSIAN, sigma, alpha, schedule[-1],
                              tolerance=tolerance)
                 for k, (c, n) in enumerate(zip(row, schedule, strict=True), 1)]  # fmt: skip
        if rule == "largest radius":
            radius = max(look.radius for look in looks)
        elif rule == "budget":
            radius = looks[-1].radius
        elif rule == "random look":
            radius = looks[rng.integers(len(looks))].radius
        else:
            stop = next((i for i, look in enumerate(looks) if look.decision != "continue"), -1)
            radius = looks[stop].radius
        over += radius > truth
    rate = over / runs
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), (rule, rate)


def test_a_fixed_n_bound_at_the_best_look_would_not_be_valid():
    """The reason for the alpha split: recomputing the fixed-n bound at every look and keeping
    the best exceeds alpha (so the simulation above can tell a valid procedure apart)."""
    alpha, sigma, runs = 0.05, 0.25, 3000
    schedule = look_schedule(32, 8192)
    truth = sigma * norm.ppf(0.9)
    counts = simulate_counts(0.9, schedule, runs, seed=3)
    over = sum(
        max(sigma * norm.ppf(max(lower_confidence_bound(int(c), n, alpha), 0.5))
            for c, n in zip(row, schedule, strict=True)) > truth
        for row in counts
    )  # fmt: skip
    assert over / runs > alpha * 1.5


# --- the live server --------------------------------------------------------------------------


def test_live_target_radius_false_certificates_within_alpha(client):
    """p_A just below Phi(r / sigma) at the true radius d < r = 0.2: "certified at r" must be
    rare (alpha = 0.05; 150 requests: more than 17 would fail, 2.3 sd above alpha)."""
    x = point_at(0.19, 1)
    truth = true_radius(x)
    target = 0.2
    assert truth < target
    certified, samples = 0, []
    for _ in range(150):
        r = client.predict("linear", x, n0=32, n=3000, alpha=0.05,
                           procedure="target_radius", target_radius=target)  # fmt: skip
        assert r.procedure == "target_radius" and r.target_radius == target
        assert sum(r.counts) == r.n <= 3000 and r.n in r.look_schedule
        certified += not r.abstain
        samples.append(r.n)
        if not r.abstain:
            assert r.radius >= target and r.prediction == 1
    assert certified <= 17, certified


def test_live_target_radius_certifies_easy_inputs_with_few_samples(client):
    x = point_at(0.5, 1)  # true radius 0.5; certify at 0.25 with sigma 0.25
    r = client.predict("linear", x, n0=64, n=100_000, alpha=0.001,
                       procedure="target_radius", target_radius=0.25)  # fmt: skip
    assert not r.abstain and r.radius >= 0.25 and r.radius <= true_radius(x)
    assert r.n <= 1024, r.n  # a fixed-n certificate would draw 100,000
    # recomputable from the response alone: the look's Clopper-Pearson bound, or the threshold
    # where the votes reach the exact count (format v4) but not that bound
    plan = (tuple(r.look_schedule), 0.25, GAUSSIAN, LINEAR_SIGMA, 0.001)
    assert r.counts[r.candidate] >= exact_counts(*plan)[r.looks - 1]
    p = lower_confidence_bound(r.counts[r.candidate], r.n, r.bound_alpha)
    threshold = PHI.cdf(0.25 / LINEAR_SIGMA)
    if p > threshold:
        assert math.isclose(r.p_a_lower, p)
        assert math.isclose(r.radius, LINEAR_SIGMA * PHI.inv_cdf(p))
    else:
        assert (r.p_a_lower, r.radius) == (pytest.approx(threshold), 0.25)
    assert r.bound_alpha == target_levels(*plan)[r.looks - 1] > 0


def test_live_target_radius_records_verify_under_their_format(client):
    """The server signs format v4; its record verifies, and as a v3 record too when its votes
    also reach v3's count. The same record moved to a look where its votes lie between v4's
    count and v3's verifies as v4 (certified at the target) and not as v3."""
    from smoothcert.verify import recompute, record_plan

    r = client.predict("linear", point_at(0.5, 1), n0=64, n=100_000, alpha=0.001,
                       procedure="target_radius", target_radius=0.25)  # fmt: skip
    record = json.loads(r.record)
    assert record["format"] == "smoothserve.certificate.v4" and not record["abstain"]
    assert recompute(record) == []
    schedule = tuple(record["look_schedule"])
    plan = (schedule, 0.25, GAUSSIAN, LINEAR_SIGMA, 0.001)
    v3, v4 = certifying_counts(*plan), exact_counts(*plan)
    votes, look = record["counts"][record["candidate"]], record["looks"] - 1
    as_v3 = recompute({**record, "format": "smoothserve.certificate.v3"})
    assert (as_v3 == []) == (votes >= v3[look]), (votes, v3[look], v4[look], as_v3)
    k = next(i for i, (a, b) in enumerate(zip(v4, v3, strict=True)) if a < b)
    n, c = schedule[k], record["candidate"]
    counts = [n - v4[k], v4[k]] if c == 1 else [v4[k], n - v4[k]]
    procedure, request = record_plan(record)
    assert procedure is procedures.get("target_radius", version=4)
    done = procedure.look(request, schedule, k + 1, np.array(record["selection_counts"]),
                          np.array(counts))  # fmt: skip
    moved = {**record, "n": n, "looks": k + 1, "counts": counts, "radius": done.radius,
             "p_a_lower": done.p_a_lower, "bound_alpha": done.bound_alpha}  # fmt: skip
    assert done.prediction == c and done.radius == 0.25
    assert recompute(moved) == []
    assert recompute({**moved, "format": "smoothserve.certificate.v3"}) != []


def test_live_anytime_radius_within_truth(client):
    x = point_at(0.3, -1)
    truth = true_radius(x)
    over = 0
    stopping_rules = ({}, {"tolerance": 0.01}, {"timeout": 0.03})  # budget, tolerance, deadline
    for i in range(90):
        options = stopping_rules[i % 3]
        try:
            r = client.predict("linear", x, n0=32, n=20_000, alpha=0.05, procedure="anytime",
                               **options)  # fmt: skip
        except SmoothServeError as error:  # a deadline shorter than the first look
            assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
            continue
        assert r.procedure == "anytime" and sum(r.counts) == r.n
        over += r.radius > truth
    assert over <= 10, over  # alpha = 0.05 of 90 is 4.5


def test_live_anytime_deadline_gives_a_certificate_not_deadline_exceeded(small_batch_server):
    server = small_batch_server
    x = point_at(0.5, 1)
    started = time.monotonic()
    with SmoothServeClient(server.address) as client:
        r = client.predict("linear", x, n0=64, n=400_000, alpha=0.001, procedure="anytime",
                           timeout=0.2)  # fmt: skip
    assert time.monotonic() - started < 0.2
    assert not r.abstain and 0 < r.radius <= true_radius(x) and r.n < 400_000
    # the unused budget is released, and not counted as abandoned
    deadline = time.monotonic() + 5
    while metric(server.metrics_url, "smoothserve_samples_in_flight") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_live_sequential_requests_are_checked(client):
    x = point_at(0.5, 1)
    for options in (
        {"procedure": "target_radius"},  # no target radius
        {"procedure": "target_radius", "target_radius": -1.0},
        {"procedure": "anytime", "tolerance": float("nan")},
        {"procedure": "anytime", "mode": "predict"},
    ):
        with pytest.raises(SmoothServeError) as refused:
            client.predict("linear", x, n0=10, n=100, **options)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, options


def test_live_samples_per_certificate_metric(client, server):
    x = point_at(0.5, 1)
    client.predict("linear", x, n0=64, n=100_000, procedure="target_radius", target_radius=0.25)
    count = metric(server.metrics_url, "smoothserve_samples_per_certificate_count",
                   procedure="target_radius")  # fmt: skip
    total = metric(server.metrics_url, "smoothserve_samples_per_certificate_sum",
                   procedure="target_radius")  # fmt: skip
    assert count >= 1 and total / count < 100_000


def test_cli_certifies_at_a_target_radius(server, tmp_path, capsys):
    from smoothserve_client.cli import certify_image_main

    path = tmp_path / "x.npy"
    np.save(path, point_at(0.5, 1))
    code = certify_image_main([str(path), "--server", server.address, "--model", "linear",
                               "--n", "100000", "--procedure", "target_radius",
                               "--target-radius", "0.25"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert '"procedure": "target_radius"' in printed and '"abstain": false' in printed


@pytest.fixture(scope="module")
def small_batch_server(linear_repo):
    """Batches of 64: a request to the 400,000-sample cap takes seconds on any CPU (3.5 s on
    the 2-core dev machine), where batches of 1,024 finished inside a 0.3 s deadline on CI."""
    with ServerProcess(linear_repo, args=["--batch-size", "64", "--max-n", "400000"]) as srv:
        yield srv


def test_live_target_radius_deadline_and_cancellation_release_the_budget(small_batch_server):
    """An input whose votes are unanimous (true radius 1.4: a vote for the other class once in
    1e8 samples) and a target only the 400,000-sample cap can certify (every vote needed at
    390,000): no look before the cap can certify, none can abstain, so the request runs to the
    cap, and a short deadline stops it with DEADLINE_EXCEEDED; its samples are counted as
    abandoned and the gauge returns to 0."""
    server = small_batch_server
    x = point_at(1.4, 1)
    target = LINEAR_SIGMA * PHI.inv_cdf(0.001 ** (1 / 390_000))
    abandoned = metric(server.metrics_url, "smoothserve_samples_abandoned_total")
    with SmoothServeClient(server.address) as client, pytest.raises(SmoothServeError) as late:
        client.predict("linear", x, n0=32, n=400_000, alpha=0.001, procedure="target_radius",
                       target_radius=target, timeout=0.3)  # fmt: skip
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while metric(server.metrics_url, "smoothserve_samples_in_flight") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert metric(server.metrics_url, "smoothserve_samples_abandoned_total") > abandoned


def test_the_alpha_split_cache_stays_bounded():
    """Clients choose the target radius: distinct radii must not grow the server's memory."""
    for i in range(1500):
        target_levels(S12, 0.25 + i * 1e-6, GAUSSIAN, 0.5, 0.001)
    assert target_levels.cache_info().currsize <= 1024
