"""CERTIFY and PREDICT of Cohen, Rosenfeld and Kolter (ICML 2019), as pure functions on counts.

The sampling (``SampleUnderNoise`` in the paper) happens elsewhere: these functions only
see the vote counts it produced, so they can be tested exactly and know nothing of backends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binomtest, norm

ABSTAIN = -1


@dataclass(frozen=True)
class Certificate:
    """The answer of CERTIFY: a class and an L2 radius, or an abstention."""

    prediction: int  # ABSTAIN (-1) when abstaining
    candidate: int  # the class chosen from the selection counts
    radius: float  # 0.0 when abstaining
    p_a_lower: float

    @property
    def abstain(self) -> bool:
        return self.prediction == ABSTAIN


@dataclass(frozen=True)
class Prediction:
    """The answer of PREDICT: a class, or an abstention."""

    prediction: int  # ABSTAIN (-1) when abstaining
    candidate: int
    p_value: float

    @property
    def abstain(self) -> bool:
        return self.prediction == ABSTAIN


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    It is the alpha quantile of Beta(k, n - k + 1), and 0 when k = 0. It equals
    ``statsmodels.proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``, which the
    reference implementation uses.
    """
    if trials <= 0:
        raise ValueError("trials must be positive")
    if not 0 <= successes <= trials:
        raise ValueError("successes must lie in [0, trials]")
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def certify(
    selection_counts: np.ndarray, estimation_counts: np.ndarray, sigma: float, alpha: float
) -> Certificate:
    """CERTIFY (Cohen et al., Algorithm 1 / ``Smooth.certify`` in the reference ``core.py``).

    ``selection_counts`` come from n0 noisy samples and only pick the candidate class c_A;
    ``estimation_counts`` come from n further, independent samples. With p_A_lower the
    (1 - alpha) Clopper-Pearson lower bound on P[f(x + noise) = c_A], the result is c_A with
    radius sigma * Phi^-1(p_A_lower), or ABSTAIN when p_A_lower < 1/2.

    Guarantee: with probability at least 1 - alpha over the noise, if a class is returned,
    the smoothed classifier g predicts it at every x' with ||x' - x||_2 < radius.
    """
    candidate = int(np.argmax(selection_counts))
    n = int(np.sum(estimation_counts))
    p_a_lower = lower_confidence_bound(int(estimation_counts[candidate]), n, alpha)
    if p_a_lower < 0.5:
        return Certificate(ABSTAIN, candidate, 0.0, p_a_lower)
    return Certificate(candidate, candidate, float(sigma * norm.ppf(p_a_lower)), p_a_lower)


def predict(counts: np.ndarray, alpha: float) -> Prediction:
    """PREDICT (Cohen et al., Algorithm 2 / ``Smooth.predict`` in the reference ``core.py``).

    With n_A, n_B the two largest counts of n noisy samples, return the top class when a
    two-sided binomial test of n_A against Binomial(n_A + n_B, 1/2) has p-value <= alpha,
    else ABSTAIN.

    Guarantee: the probability of returning a class other than g(x) is at most alpha.
    """
    order = np.argsort(counts, kind="stable")[::-1]
    top, runner_up = int(order[0]), int(order[1]) if len(order) > 1 else None
    count_a = int(counts[top])
    count_b = int(counts[runner_up]) if runner_up is not None else 0
    if count_a + count_b == 0:
        return Prediction(ABSTAIN, top, 1.0)
    p_value = float(binomtest(count_a, count_a + count_b, 0.5).pvalue)
    if p_value > alpha:
        return Prediction(ABSTAIN, top, p_value)
    return Prediction(top, top, p_value)
