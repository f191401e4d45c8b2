"""PREDICT (Cohen, Rosenfeld and Kolter, ICML 2019, Algorithm 2 / ``Smooth.predict`` of the
reference ``core.py``): the smoothed classifier's class, without a radius."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from .base import ABSTAIN, ABSTAINED, PREDICTED, Outcome, Procedure, check_look


def predict(counts: np.ndarray, alpha: float) -> Outcome:
    """PREDICT: with n_A, n_B the two largest counts of n noisy samples, return the top class
    when a two-sided binomial test of n_A against Binomial(n_A + n_B, 1/2) has p-value
    <= alpha, else ABSTAIN.

    Guarantee: the probability of returning a class other than g(x) is at most alpha (any
    noise family: the test is on the votes alone).
    """
    order = np.argsort(counts, kind="stable")[::-1]
    top, runner_up = int(order[0]), int(order[1]) if len(order) > 1 else None
    count_a = int(counts[top])
    count_b = int(counts[runner_up]) if runner_up is not None else 0
    if count_a + count_b == 0:
        return Outcome(ABSTAINED, ABSTAIN, top, 0.0, 0.0, 1.0, alpha)
    p_value = float(binomtest(count_a, count_a + count_b, 0.5).pvalue)
    if p_value > alpha:
        return Outcome(ABSTAINED, ABSTAIN, top, 0.0, 0.0, p_value, alpha)
    return Outcome(PREDICTED, top, top, 0.0, 0.0, p_value, alpha)


class Predict(Procedure):
    """n samples, one look, no selection samples: PREDICT."""

    name = "predict"
    mode = "predict"
    selects = False

    def look(self, plan, schedule, k, selection, counts) -> Outcome:
        check_look(schedule, k, counts)
        return predict(counts, plan.alpha)


PROCEDURE = Predict()
