"""The statistics against values computed independently of the implementation.

Independent references: closed forms (k = n gives alpha ** (1 / n)), bisection on the binomial
tail with exact integer arithmetic, the standard library's NormalDist, and exact binomial sums.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from smoothserve.certify import ABSTAIN, certify, lower_confidence_bound, predict


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) >= k], summed term by term in log space."""
    if p <= 0.0:
        return 0.0 if k > 0 else 1.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return math.fsum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        for i in range(k, n + 1)
    )


def clopper_pearson_by_bisection(k: int, n: int, alpha: float) -> float:
    """The smallest p with P[Bin(n, p) >= k] >= alpha: the one-sided lower bound, by definition."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binomial_upper_tail(k, n, mid) < alpha:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize("n", [1, 10, 100, 1000, 100_000])
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
def test_all_successes_has_closed_form(n: int, alpha: float) -> None:
    assert lower_confidence_bound(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-9)


def test_no_success_gives_zero() -> None:
    assert lower_confidence_bound(0, 100, 0.001) == 0.0


@pytest.mark.parametrize(
    ("k", "n", "alpha"),
    [(1, 2, 0.05), (7, 10, 0.01), (55, 100, 0.001), (90, 100, 0.001), (480, 500, 0.05), (3, 40, 0.1)],
)
def test_lower_bound_matches_the_definition(k: int, n: int, alpha: float) -> None:
    assert lower_confidence_bound(k, n, alpha) == pytest.approx(
        clopper_pearson_by_bisection(k, n, alpha), abs=1e-9
    )


def test_certify_radius_is_sigma_times_inverse_normal_cdf() -> None:
    selection = np.array([2, 98, 0])
    estimation = np.array([10, 9_980, 10])
    sigma, alpha = 0.5, 0.001
    result = certify(selection, estimation, sigma, alpha)
    p_a = clopper_pearson_by_bisection(9_980, 10_000, alpha)
    assert result.prediction == 1 and not result.abstain
    assert result.p_a_lower == pytest.approx(p_a, abs=1e-9)
    assert result.radius == pytest.approx(sigma * NormalDist().inv_cdf(p_a), rel=1e-9)


def test_certify_takes_the_class_from_selection_counts_only() -> None:
    # The estimation counts favour class 0, but the selection picked class 2: the bound is on
    # class 2, which then has p_A_lower < 1/2, so CERTIFY abstains.
    result = certify(np.array([1, 0, 99]), np.array([900, 0, 100]), 0.25, 0.001)
    assert result.candidate == 2
    assert result.prediction == ABSTAIN and result.abstain
    assert result.radius == 0.0


def test_certify_abstains_below_one_half_and_certifies_at_one_half() -> None:
    alpha, n = 0.001, 1000
    # Find the count where the bound crosses 1/2 with the independent bisection.
    k_half = next(k for k in range(540, n) if clopper_pearson_by_bisection(k, n, alpha) >= 0.5)
    below = certify(np.array([0, 10]), np.array([n - k_half + 1, k_half - 1]), 1.0, alpha)
    above = certify(np.array([0, 10]), np.array([n - k_half, k_half]), 1.0, alpha)
    assert below.abstain and below.p_a_lower < 0.5
    assert not above.abstain and above.p_a_lower >= 0.5
    assert 0 <= above.radius < 0.01


def exact_two_sided_p(k: int, n: int) -> float:
    """Two-sided binomial test against p = 1/2: double the tail beyond max(k, n - k), capped at 1."""
    tail = sum(math.comb(n, i) for i in range(max(k, n - k), n + 1)) / 2**n
    return min(1.0, 2 * tail) if 2 * k != n else 1.0


@pytest.mark.parametrize(("n_a", "n_b"), [(10, 0), (12, 3), (60, 40), (510, 490), (7, 7)])
def test_predict_p_value_is_the_exact_binomial_test(n_a: int, n_b: int) -> None:
    result = predict(np.array([n_b, n_a, 0]), alpha=0.5)
    assert result.p_value == pytest.approx(exact_two_sided_p(n_a, n_a + n_b), rel=1e-9)


def test_predict_at_the_edge_of_alpha() -> None:
    counts = np.array([0, 10])  # p-value = 2 / 2**10 = 0.001953125 exactly
    p = 2 / 2**10
    assert predict(counts, alpha=p).prediction == 1  # p-value <= alpha: the class
    assert predict(counts, alpha=p * (1 - 1e-9)).prediction == ABSTAIN
    assert predict(counts, alpha=0.001).abstain


def test_predict_abstains_on_ties_and_ignores_third_classes() -> None:
    assert predict(np.array([50, 50, 0]), alpha=0.49).abstain
    # Only the top two counts enter the test: many votes for a third class do not matter.
    a = predict(np.array([30, 70, 0]), alpha=0.001)
    b = predict(np.array([30, 70, 900]), alpha=0.001)
    assert a.prediction == 1 and b.prediction == 2
    assert a.p_value == pytest.approx(exact_two_sided_p(70, 100))


def test_predict_single_sample_cannot_reach_small_alpha() -> None:
    result = predict(np.array([0, 1]), alpha=0.001)
    assert result.abstain and result.p_value == 1.0
