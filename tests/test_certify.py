"""The statistics against values computed independently of the implementation.

Independent references: closed forms (k = n gives alpha ** (1 / n)), bisection on the binomial
tail with exact integer arithmetic, the standard library's NormalDist, and exact binomial sums.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy.stats import beta

from smoothcert.bounds import lower_confidence_bound
from smoothcert.families import FAMILIES
from smoothcert.procedures import ABSTAIN
from smoothcert.procedures.fixed_n import certify
from smoothcert.procedures.predict import predict

GAUSSIAN = FAMILIES["gaussian"]
UNIFORM = FAMILIES["uniform"]


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
    result = certify(selection, estimation, GAUSSIAN, sigma, alpha)
    p_a = clopper_pearson_by_bisection(9_980, 10_000, alpha)
    assert result.prediction == 1 and not result.abstain
    assert result.p_a_lower == pytest.approx(p_a, abs=1e-9)
    assert result.radius == pytest.approx(sigma * NormalDist().inv_cdf(p_a), rel=1e-9)


def test_certify_takes_the_class_from_selection_counts_only() -> None:
    # The estimation counts favour class 0, but the selection picked class 2: the bound is on
    # class 2, which then has p_A_lower < 1/2, so CERTIFY abstains.
    result = certify(np.array([1, 0, 99]), np.array([900, 0, 100]), GAUSSIAN, 0.25, 0.001)
    assert result.candidate == 2
    assert result.prediction == ABSTAIN and result.abstain
    assert result.radius == 0.0


def test_certify_abstains_below_one_half_and_certifies_at_one_half() -> None:
    alpha, n = 0.001, 1000
    # Find the count where the bound crosses 1/2 with the independent bisection.
    k_half = next(k for k in range(540, n) if clopper_pearson_by_bisection(k, n, alpha) >= 0.5)
    selection = np.array([0, 10])
    below = certify(selection, np.array([n - k_half + 1, k_half - 1]), GAUSSIAN, 1.0, alpha)
    above = certify(selection, np.array([n - k_half, k_half]), GAUSSIAN, 1.0, alpha)
    assert below.abstain and below.p_a_lower < 0.5
    assert not above.abstain and above.p_a_lower >= 0.5
    assert 0 <= above.radius < 0.01


# --- the uniform family: L1 radius 2 lambda (p_A_lower - 1/2) (Yang et al., ICML 2020) ---------


def beta_quantile_bound(k: int, n: int, alpha: float) -> float:
    """The Clopper-Pearson lower bound as SciPy's Beta distribution gives it: the alpha
    quantile of Beta(k, n - k + 1) (0 for k = 0)."""
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


@pytest.mark.parametrize(
    ("k", "n", "alpha", "lam"),
    [(9_980, 10_000, 0.001, 0.5), (700, 1000, 0.01, 0.25), (1000, 1000, 0.001, 1.0),
     (90, 100, 0.05, 0.75), (480, 500, 0.001, 2.0)],
)  # fmt: skip
def test_uniform_radius_is_two_lambda_times_p_minus_one_half(k, n, alpha, lam) -> None:
    result = certify(np.array([3, 97]), np.array([n - k, k]), UNIFORM, lam, alpha)
    p_a = beta_quantile_bound(k, n, alpha)
    assert p_a > 0.5  # the cases all certify
    assert result.p_a_lower == pytest.approx(p_a, rel=1e-12)
    assert result.p_a_lower == pytest.approx(clopper_pearson_by_bisection(k, n, alpha), abs=1e-9)
    assert result.prediction == result.candidate == 1 and not result.abstain
    assert result.radius == pytest.approx(2 * lam * (p_a - 0.5), rel=1e-9)
    # the same bound as the Gaussian certificate: only the map to a radius differs
    gaussian = certify(np.array([3, 97]), np.array([n - k, k]), GAUSSIAN, lam, alpha)
    assert gaussian.p_a_lower == result.p_a_lower


def test_uniform_all_votes_give_the_closed_form_radius() -> None:
    n, alpha, lam = 500, 0.001, 0.4
    result = certify(np.array([0, 1]), np.array([0, n]), UNIFORM, lam, alpha)
    assert result.radius == pytest.approx(2 * lam * (alpha ** (1 / n) - 0.5), rel=1e-12)
    assert result.radius < lam  # bounded by lambda, unlike the Gaussian radius


@pytest.mark.parametrize(("k", "n", "alpha"), [(450, 1000, 0.001), (51, 100, 0.05), (0, 10, 0.1)])
def test_uniform_abstains_below_one_half(k, n, alpha) -> None:
    assert beta_quantile_bound(k, n, alpha) < 0.5
    result = certify(np.array([1, 9]), np.array([n - k, k]), UNIFORM, 0.5, alpha)
    assert result.abstain and result.prediction == ABSTAIN and result.candidate == 1
    assert result.radius == 0.0
    assert result.p_a_lower == pytest.approx(beta_quantile_bound(k, n, alpha), abs=1e-12)


def test_uniform_abstains_and_certifies_where_the_bound_crosses_one_half() -> None:
    alpha, n, lam = 0.001, 1000, 0.5
    k_half = next(k for k in range(540, n) if clopper_pearson_by_bisection(k, n, alpha) >= 0.5)
    selection = np.array([0, 10])
    below = certify(selection, np.array([n - k_half + 1, k_half - 1]), UNIFORM, lam, alpha)
    above = certify(selection, np.array([n - k_half, k_half]), UNIFORM, lam, alpha)
    assert below.abstain and below.radius == 0.0
    assert not above.abstain
    assert above.radius == pytest.approx(2 * lam * (above.p_a_lower - 0.5), abs=1e-15)
    assert 0 <= above.radius < 0.01


@pytest.mark.parametrize("lam", [0.1, 0.25, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.5, 0.9, 0.999])
def test_uniform_threshold_and_radius_round_trip(lam: float, fraction: float) -> None:
    r = fraction * lam  # radii below lambda, the largest any p_A certifies
    threshold = UNIFORM.threshold(r, lam)
    assert threshold == pytest.approx(0.5 + r / (2 * lam), rel=1e-15)
    assert UNIFORM.radius(threshold, lam) == pytest.approx(r, rel=1e-12, abs=1e-15)


def test_uniform_radius_edges() -> None:
    lam = 0.5
    assert UNIFORM.radius(0.5 - 1e-12, lam) == 0.0
    assert UNIFORM.radius(0.5, lam) == 0.0
    assert UNIFORM.radius(1.0, lam) == lam  # p_A = 1: radius lambda, not infinite
    assert UNIFORM.radius(0.75, lam) == pytest.approx(0.25, rel=1e-15)
    assert UNIFORM.threshold(lam, lam) == pytest.approx(1.0)  # only p_A = 1 certifies lambda
    assert UNIFORM.threshold(2 * lam, lam) > 1.0  # no p_A certifies beyond lambda
    assert UNIFORM.norm == "l1" and GAUSSIAN.norm == "l2"


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("r", [0.0, 0.01, 0.25, 0.5, 1.0])
def test_gaussian_threshold_and_radius_round_trip(sigma: float, r: float) -> None:
    """Up to r = 4 sigma: beyond about 8 sigma Phi(r / sigma) rounds to 1 in doubles."""
    threshold = GAUSSIAN.threshold(r, sigma)
    assert threshold == pytest.approx(NormalDist().cdf(r / sigma), rel=1e-12)
    assert GAUSSIAN.radius(threshold, sigma) == pytest.approx(r, rel=1e-9, abs=1e-12)
    assert GAUSSIAN.radius(1.0, sigma) == math.inf
    assert GAUSSIAN.radius(0.5 - 1e-12, sigma) == 0.0


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
