"""Exact one-sided Clopper-Pearson bounds on a binomial proportion (Clopper and Pearson,
Biometrika 1934), the bounds every procedure puts on p_A, the probability of the top class
under noise. Pure functions, tested against mpmath (tests/test_bounds_precision.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import special
from scipy.optimize import brentq

from .errors import NumericalError

# Up to this many trials a Clopper-Pearson bound is one SciPy call, Boost's Beta quantile
# (scipy.special.betaincinv: bit for bit what scipy.stats.beta.ppf returns on 20,000 random
# arguments, without its ~100 us of per-call overhead): against a high-precision mpmath
# reference it is within 1e-11 relative there (SciPy 1.17; measured
# on the grid of tests/test_bounds_precision.py and denser scans). Above it the quantile is only
# the first guess of a root solve on the binomial tail: at n = 1e9 SciPy's quantile is off by
# up to 1e-6 relative (k = n - 1000, upper bound) and by a factor 2.5 (k = 1000, lower bound).
EXACT_SOLVE_ABOVE = 10**6
# Boost's incomplete beta (scipy.special.betainc, betaincc) is off by up to 5e-8 relative when
# its first parameter is below about 40 and its second is large (n = 1e9), so a tail with at
# most this many successes (or failures) is summed term by term instead.
_SUMMED_UP_TO = 64
_RTOL = 4 * np.finfo(float).eps  # the tightest relative tolerance brentq accepts


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    With k successes in n trials it is the p that solves P[Binomial(n, p) >= k] = alpha, that
    is the alpha quantile of Beta(k, n - k + 1) (Clopper and Pearson, Biometrika 1934), the
    bound that CERTIFY of Cohen, Rosenfeld and Kolter (ICML 2019) puts on p_A. It equals
    ``statsmodels.proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``, which their
    reference implementation uses.

    Guarantee: for every p, P[lower_confidence_bound(K, n, alpha) <= p] >= 1 - alpha when
    K ~ Binomial(n, p).

    Closed forms where they exist: 0 when k = 0, and alpha ** (1 / n) when k = n (within a few
    ulps of the exact value; exp(log(alpha) / n) is up to 30 ulps off for n < 10). Otherwise
    SciPy's Beta quantile (``scipy.special.betaincinv``, the values of ``beta.ppf``) for
    n <= EXACT_SOLVE_ABOVE, and above that a root solve of the defining equation to full double
    precision (see ``solve_on_tail``).

    Raises ValueError for arguments outside 0 <= k <= n, n > 0, 0 < alpha < 1, and NumericalError
    when the bound does not come out as a number in [0, 1], so that no radius is built on it.
    """
    if trials <= 0:
        raise ValueError("trials must be positive")
    if not 0 <= successes <= trials:
        raise ValueError("successes must lie in [0, trials]")
    _check_alpha(alpha)
    if successes == 0:
        return 0.0
    if successes == trials:
        value = alpha ** (1.0 / trials)
    else:
        value = float(special.betaincinv(successes, trials - successes + 1, alpha))
        if trials > EXACT_SOLVE_ABOVE:
            value = solve_on_tail("lower", successes, trials, alpha, value)
    return checked_bound(value, "lower", successes, trials, alpha)


def checked_bound(value: float, side: str, successes: int, trials: int, alpha: float) -> float:
    """``value`` as a float when it is a probability, else NumericalError naming the arguments."""
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise NumericalError(
            f"the Clopper-Pearson {side} bound for k={successes}, n={trials}, alpha={alpha!r} "
            f"came out as {value!r}, not a probability; no certificate was made"
        )
    return value


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:  # also refuses NaN
        raise ValueError("alpha must lie in (0, 1)")


def solve_on_tail(side: str, successes: int, trials: int, alpha: float, guess: float) -> float:
    """The Clopper-Pearson bound for 0 < k < n solved on its definition, to ~1e-15 relative.

    lower: P[Binomial(n, p) >= k] = alpha; upper: P[Binomial(n, p) <= k] = alpha. The root is
    sought for the smaller of p and 1 - p (by the symmetry k -> n - k, p -> 1 - p), so that a
    bound near 1 keeps its distance from 1 exactly; ``guess`` (SciPy's quantile, possibly far
    off or NaN) only starts the bracket. Used above EXACT_SOLVE_ABOVE trials: a few tail
    evaluations, microseconds each.
    """
    k, n = successes, trials
    if side == "lower":
        if 2 * k <= n:
            return _root(lambda x: _binomial_at_least(k, n, x) - alpha, guess)
        # 1 - p solves P[Binomial(n, 1 - p) <= n - k] = alpha.
        return 1.0 - _root(lambda x: alpha - _binomial_at_most(n - k, n, x), 1.0 - guess)
    if 2 * k < n:
        return _root(lambda x: alpha - _binomial_at_most(k, n, x), guess)
    # 1 - p solves P[Binomial(n, 1 - p) >= n - k] = alpha.
    return 1.0 - _root(lambda x: _binomial_at_least(n - k, n, x) - alpha, 1.0 - guess)


def _root(f: Callable[[float], float], guess: float) -> float:
    """The root in (0, 1) of an increasing f: bracketed from ``guess`` in log-odds steps that
    grow fourfold, narrowed by bisection in log-odds, then brentq to 4 machine epsilons."""
    x0 = guess if math.isfinite(guess) and 0.0 < guess < 1.0 else 0.5
    t0 = math.log(x0) - math.log1p(-x0)
    f0 = _finite(f(x0))
    if f0 == 0.0:
        return x0
    direction = 1.0 if f0 < 0.0 else -1.0
    step = 1e-6
    for _ in range(64):
        t1 = t0 + direction * step
        x1 = _expit(t1)
        f1 = _finite(f(x1))
        if f1 == 0.0:
            return x1
        if (f1 > 0.0) != (f0 > 0.0):
            break
        t0, x0, f0, step = t1, x1, f1, 4.0 * step
    else:
        raise NumericalError("no bracket for the Clopper-Pearson bound; no certificate was made")
    while abs(t1 - t0) > 1e-3:  # a wide bracket (a poor guess): halve it in log-odds first
        tm = 0.5 * (t0 + t1)
        xm = _expit(tm)
        fm = _finite(f(xm))
        if fm == 0.0:
            return xm
        if (fm > 0.0) == (f0 > 0.0):
            t0, x0, f0 = tm, xm, fm
        else:
            t1, x1 = tm, xm
    lo, hi = min(x0, x1), max(x0, x1)
    root, result = brentq(
        lambda x: _finite(f(x)), lo, hi, xtol=1e-300, rtol=_RTOL, maxiter=200, full_output=True
    )
    if not result.converged:
        raise NumericalError("the Clopper-Pearson root solve did not converge; no certificate was made")
    return float(root)


def _finite(value: float) -> float:
    if math.isnan(value):
        raise NumericalError("a binomial tail came out as NaN; no certificate was made")
    return value


def _expit(t: float) -> float:
    if t >= 0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


def _binomial_at_least(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) >= k] for 1 <= k <= n, to ~1e-14 relative where it matters."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    if k > _SUMMED_UP_TO:
        return float(special.betainc(k, n - k + 1, p))
    odds = p / (1.0 - p)
    if (n - k) * odds >= k + 1:
        # The terms still grow after k, so P[X >= k] >= 1/2: its complement has no cancellation.
        return 1.0 - _binomial_at_most(k - 1, n, p)
    # P[X = k] = C(n, k) p^k (1 - p)^(n - k), the binomial coefficient and p^k taken factor by
    # factor ((n - j) p / (j + 1) stays moderate here), then the terms after k, which shrink
    # geometrically: the ratio of consecutive terms is below 1 and decreasing.
    head = math.exp((n - k) * math.log1p(-p))
    for j in range(k):
        head *= (n - j) * p / (j + 1)
    total, term, i = 1.0, 1.0, k
    while i < n:
        ratio = (n - i) * odds / (i + 1)
        term *= ratio
        total += term
        i += 1
        if term <= 1e-17 * total * (1.0 - ratio):
            break
    return head * total


def _binomial_at_most(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) <= k] for 0 <= k < n, to ~1e-14 relative where it matters."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    if k >= _SUMMED_UP_TO:
        return float(special.betaincc(k + 1, n - k, p))
    # (1 - p)^n times 1 + C(n, 1) odds + ... + C(n, k) odds^k, all terms positive.
    head = math.exp(n * math.log1p(-p))
    odds = p / (1.0 - p)
    total, term = 1.0, 1.0
    for i in range(k):
        term *= (n - i) * odds / (i + 1)
        total += term
    if head == 0.0 or not math.isfinite(total):
        return 0.0  # (1 - p)^n underflows: with k < 64 the tail is below 1e-200
    return head * total


def upper_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound (Clopper and Pearson, Biometrika 1934):
    the p that solves P[Binomial(n, p) <= k] = alpha, the 1 - alpha quantile of Beta(k + 1, n - k).

    Guarantee: for every p, P[upper_confidence_bound(K, n, alpha) >= p] >= 1 - alpha when
    K ~ Binomial(n, p).

    Closed forms where they exist: 1 when k = n, and 1 - alpha ** (1 / n) when k = 0, computed
    as -expm1(log(alpha) / n) so that it keeps its relative precision (1 - alpha ** (1 / n)
    loses all of it for large n). Otherwise ``special.betainccinv(k + 1, n - k, alpha)`` (as ``beta.isf``, 15x faster), not
    ``beta.ppf(1 - alpha, ...)``, which is off by up to 2e-5 relative at alpha = 1e-15 (as
    1 - alpha rounds). Above EXACT_SOLVE_ABOVE trials that quantile only starts a root solve on
    the binomial tail, as for the lower bound (``solve_on_tail``). ValueError for bad
    arguments; NumericalError when the bound is not a number in [0, 1].
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError("need 0 <= successes <= trials and trials > 0")
    if not 0 < alpha < 1:
        raise ValueError("alpha must lie in (0, 1)")
    if successes == trials:
        return 1.0
    if successes == 0:
        value = -math.expm1(math.log(alpha) / trials)
    else:
        # the 1 - alpha quantile of Beta(k + 1, n - k), by its complement: exact for tiny alpha
        value = float(special.betainccinv(successes + 1, trials - successes, alpha))
        if trials > EXACT_SOLVE_ABOVE:
            value = solve_on_tail("upper", successes, trials, alpha, value)
    return checked_bound(value, "upper", successes, trials, alpha)
