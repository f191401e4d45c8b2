"""The Clopper-Pearson bounds against an independent high-precision reference, at the edges.

The reference is the definition itself, evaluated with mpmath and exact integers and never with
SciPy or the code under test: the lower bound p solves P[Binomial(n, p) >= k] = alpha and the
upper bound solves P[Binomial(n, p) <= k] = alpha. ``tail_at_least`` sums binomial terms in
256-bit fixed point, outward from k on the side where they shrink, anchored on one term taken
with mpmath at 40 digits; its argument is an exact fraction.

A bound v is accepted when the tail changes sides of alpha across [v - tol, v + tol]: since the
tail is monotone in p, that proves |v - p*| <= tol for the exact bound p*, with two tail
evaluations instead of a root solve (at n = 1e9 one evaluation sums ~1e5 terms). On failure the
message gives p* itself, solved by bisection on the same reference.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import mpmath
import numpy as np
import pytest

from smoothcert import bounds as bounds_module
from smoothcert.bounds import EXACT_SOLVE_ABOVE, lower_confidence_bound, upper_confidence_bound
from smoothcert.errors import NumericalError
from smoothcert.families import FAMILIES
from smoothcert.families import gaussian as gaussian_module
from smoothcert.procedures.fixed_n import certify

GAUSSIAN = FAMILIES["gaussian"]

# Tolerances, relative to min(p, 1 - p) (the radius Phi^-1(p) depends on 1 - p near 1), plus
# two ulps of p (a double near 1 cannot hold 1 - p more finely than that).
# Up to EXACT_SOLVE_ABOVE trials a bound is one SciPy call (Boost's Beta quantile): measured
# within 1e-11 against this reference (SciPy 1.17.1, this grid and denser scans); 1e-10 leaves a
# margin for other SciPy releases, and is still 1e5 times tighter than what
# beta.ppf(1 - alpha, ...) gets wrong at alpha = 1e-15, and 1e4 times tighter than the quantile's
# error at n = 1e9 that the root solve exists for.
RTOL_SCIPY = 1e-10
# Above it the bound is solved on the binomial tail to 4 machine epsilons: measured within 3e-15.
RTOL_SOLVED = 1e-13

ALPHAS = [0.5, 0.1, 1e-3, 1e-6, 1e-11, 1e-15]


def _mid(n: int) -> list[int]:
    return [n // 10, n // 2, n - n // 10]


# k = 0, 1, a few in the middle, n - 1, n, and the counts where SciPy has failed: k = 10, 100,
# 1000 at n = 1e5 (scipy#12794, 1e-11; fixed since), k near n at n = 1e5, and k = 1000 and
# n - 1000 at n = 1e9 (SciPy 1.17's quantile is off by a factor 2.5 and by 1e-6 there).
GRID_KS = {
    1: [0, 1],
    2: [0, 1, 2],
    10: [0, 1, 3, 5, 9, 10],
    100: [0, 1, *_mid(100), 99, 100],
    1000: [0, 1, *_mid(1000), 999, 1000],
    10**5: [0, 1, 10, 100, 1000, *_mid(10**5), 99_000, 99_900, 99_990, 99_998, 99_999, 10**5],
    10**6: [0, 1, 10, 1000, 10**6 // 2, 999_000, 999_999, 10**6],
    10**9: [0, 1, 2, 30, 1000, 10**9 // 2, 10**9 - 1000, 10**9 - 30, 10**9 - 1, 10**9],
}
GRID = [(k, n) for n, ks in GRID_KS.items() for k in sorted(set(ks))]


# ---------------------------------------------------------------- the reference (no SciPy)

_BITS = 256


def _pmf(n: int, i: int, x: Fraction) -> mpmath.mpf:
    num, den = x.numerator, x.denominator
    p = mpmath.mpf(num) / den
    q = mpmath.mpf(den - num) / den  # 1 - x without cancellation
    return mpmath.binomial(n, i) * p**i * q ** (n - i)


def tail_at_least(k: int, n: int, x: Fraction) -> mpmath.mpf:
    """P[Binomial(n, x) >= k], to ~30 digits, for an exact x."""
    with mpmath.workdps(40):
        if k <= 0 or x >= 1:
            return mpmath.mpf(1)
        if k > n or x <= 0:
            return mpmath.mpf(0)
        num, den = x.numerator, x.denominator
        upward = k >= n * x  # the terms shrink from k upward; else from k - 1 downward
        i = k if upward else k - 1
        term, total = 1 << _BITS, 0
        while term > (total >> 120):
            total += term
            if upward:
                if i == n:
                    break
                term = term * (n - i) * num // ((i + 1) * (den - num))
                i += 1
            else:
                if i == 0:
                    break
                term = term * i * (den - num) // ((n - i + 1) * num)
                i -= 1
        part = _pmf(n, k if upward else k - 1, x) * total / mpmath.mpf(1 << _BITS)
        return part if upward else 1 - part


def tail_at_most(k: int, n: int, x: Fraction) -> mpmath.mpf:
    """P[Binomial(n, x) <= k]."""
    with mpmath.workdps(40):
        return 1 - tail_at_least(k + 1, n, x)


def _increasing_tail(side: str, k: int, n: int):
    """The function of p that crosses alpha upward at the exact bound."""
    if side == "lower":
        return lambda x: tail_at_least(k, n, x)
    return lambda x: -tail_at_most(k, n, x)


def reference_root(side: str, k: int, n: int, alpha: float, near: float) -> mpmath.mpf:
    """The exact bound by bisection on the reference (failure messages only: slow at 1e9)."""
    f, target = _increasing_tail(side, k, n), alpha if side == "lower" else -alpha
    lo, hi = Fraction(0), Fraction(1)
    centre = Fraction(near) if 0 < near < 1 else Fraction(1, 2)
    for width in (Fraction(1, 10**12), Fraction(1, 10**6), Fraction(1, 100)):
        a, b = max(lo, centre * (1 - width)), min(hi, centre * (1 + width))
        if f(a) < target <= f(b):
            lo, hi = a, b
            break
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    with mpmath.workdps(40):
        return mpmath.mpf(lo.numerator) / lo.denominator


def assert_is_bound(side: str, k: int, n: int, alpha: float, value: float, rtol: float) -> None:
    """The exact bound lies within rtol * min(p, 1 - p) + 2 ulps of ``value``."""
    if (side, k) in (("lower", 0), ("upper", n)):
        assert value == (0.0 if side == "lower" else 1.0)
        return
    assert 0.0 < value <= 1.0, value
    tol = Fraction(rtol) * Fraction(min(value, 1.0 - value)) + 2 * Fraction(math.ulp(value))
    below, above = max(Fraction(value) - tol, Fraction(0)), min(Fraction(value) + tol, Fraction(1))
    f, target = _increasing_tail(side, k, n), alpha if side == "lower" else -alpha
    if not f(below) < target <= f(above):
        exact = reference_root(side, k, n, alpha, value)
        raise AssertionError(
            f"{side} bound k={k} n={n} alpha={alpha:g}: got {value!r}, exact "
            f"{mpmath.nstr(exact, 20)}, off by {mpmath.nstr(abs(value - exact) / exact, 3)} "
            f"relative (tolerance {rtol:g} of min(p, 1 - p) + 2 ulps)"
        )


def test_reference_agrees_with_mpmath_betainc_and_exact_sums() -> None:
    """The reference itself: against exact rational sums and mpmath's own incomplete beta."""
    rng = np.random.default_rng(13)
    for _ in range(60):
        n = int(rng.integers(1, 40))
        k = int(rng.integers(0, n + 2))
        x = Fraction(float(rng.random()))
        exact = sum(math.comb(n, i) * x**i * (1 - x) ** (n - i) for i in range(max(k, 0), n + 1))
        with mpmath.workdps(40):
            want = mpmath.mpf(exact.numerator) / exact.denominator
            assert abs(tail_at_least(k, n, x) - want) <= mpmath.mpf(10) ** -30 * want
    with mpmath.workdps(40):
        for k, n, x in [(3, 200, 0.004), (150, 300, 0.45), (290, 300, 0.99), (1, 5000, 1e-7)]:
            ref = mpmath.betainc(k, n - k + 1, 0, x, regularized=True)
            assert abs(tail_at_least(k, n, Fraction(x)) / ref - 1) < mpmath.mpf(10) ** -28


# ---------------------------------------------------------------- the grid


def _rtol(n: int) -> float:
    return RTOL_SOLVED if n > EXACT_SOLVE_ABOVE else RTOL_SCIPY


@pytest.mark.parametrize(("k", "n"), GRID, ids=[f"k={k}-n={n}" for k, n in GRID])
def test_bounds_match_the_exact_reference_on_the_grid(k: int, n: int) -> None:
    for alpha in ALPHAS:
        assert_is_bound("lower", k, n, alpha, lower_confidence_bound(k, n, alpha), _rtol(n))
        assert_is_bound("upper", k, n, alpha, upper_confidence_bound(k, n, alpha), _rtol(n))


@pytest.mark.parametrize(
    ("side", "k", "n", "alpha"),
    [
        ("lower", 7, 10, 0.01),
        ("lower", 1000, 10**9, 1e-3),  # SciPy 1.17's quantile: 1.90e-6 here, for every alpha
        ("upper", 1, 10**9, 0.1),  # SciPy 1.17's quantile: 7e-9 relative off
        ("upper", 10, 10**5, 1e-11),  # scipy#12794
    ],
)
def test_bounds_match_a_root_solved_reference(side: str, k: int, n: int, alpha: float) -> None:
    """The same comparison as a plain relative error against the bisected root."""
    bound = lower_confidence_bound if side == "lower" else upper_confidence_bound
    value = bound(k, n, alpha)
    exact = reference_root(side, k, n, alpha, value)
    assert abs(value - exact) <= _rtol(n) * exact


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 100, 1000, 10**5, 10**6, 10**9])
def test_closed_forms_at_the_edges(n: int) -> None:
    for alpha in ALPHAS:
        with mpmath.workdps(40):  # alpha ** (1 / n) and 1 - alpha ** (1 / n) for the float alpha
            exact = mpmath.root(mpmath.mpf(alpha), n)
            exact_complement = 1 - exact
        lower = lower_confidence_bound(n, n, alpha)
        assert lower == alpha ** (1 / n)
        # pow rounds 1 / n first: a few ulps for n < 10, correctly rounded from n = 1000 on
        # (exp(log(alpha) / n) is up to 30 ulps off for small n, as good for large n).
        assert abs(lower - exact) <= (8 if n < 1000 else 0.5) * math.ulp(lower)
        upper = upper_confidence_bound(0, n, alpha)
        # -expm1(log(alpha) / n) keeps the relative precision of 1 - alpha ** (1 / n): within
        # 2 ulps, where 1 - alpha ** (1 / n) in doubles loses ~n ulps.
        assert abs(upper - exact_complement) <= 2 * math.ulp(upper)
        assert lower_confidence_bound(0, n, alpha) == 0.0
        assert upper_confidence_bound(n, n, alpha) == 1.0


# ---------------------------------------------------------------- monotonicity near the edges


def _strictly_increasing(values: list[float]) -> bool:
    """Strictly, except where both round to 1.0 (an upper bound 1 - 1e-20 is 1.0 in doubles)."""
    return all(a < b or a == b == 1.0 for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize(
    ("n", "ks"),
    [
        (10**5, range(99_900, 10**5 + 1)),
        (10**5, range(0, 101)),
        (10**9, range(10**9 - 60, 10**9 + 1)),
        (10**9, range(0, 61)),
        (10**9, range(970, 1031)),
    ],
)
def test_bounds_increase_with_k(n: int, ks: range) -> None:
    for alpha in (1e-11, 1e-3):
        assert _strictly_increasing([lower_confidence_bound(k, n, alpha) for k in ks])
        assert _strictly_increasing([upper_confidence_bound(k, n, alpha) for k in ks])


@pytest.mark.parametrize(
    ("k", "ns"),
    [
        (99_990, range(99_990, 100_200)),
        (10, range(10, 200)),
        # Across EXACT_SOLVE_ABOVE: one SciPy call below, the root solve above.
        (1000, range(EXACT_SOLVE_ABOVE - 30, EXACT_SOLVE_ABOVE + 31)),
        (EXACT_SOLVE_ABOVE - 5, range(EXACT_SOLVE_ABOVE - 5, EXACT_SOLVE_ABOVE + 31)),
    ],
)
def test_bounds_decrease_with_n(k: int, ns: range) -> None:
    for alpha in (1e-11, 1e-3):
        assert _strictly_increasing([lower_confidence_bound(k, n, alpha) for n in reversed(ns)])
        assert _strictly_increasing([upper_confidence_bound(k, n, alpha) for n in reversed(ns)])


@pytest.mark.parametrize(("k", "n"), [(1000, 10**9), (10**9 - 1000, 10**9), (10, 10**5)])
def test_bounds_move_with_alpha(k: int, n: int) -> None:
    """A smaller alpha widens the interval (SciPy 1.17 gave one value for all alphas here)."""
    lowers = [lower_confidence_bound(k, n, alpha) for alpha in ALPHAS]
    uppers = [upper_confidence_bound(k, n, alpha) for alpha in ALPHAS]
    assert _strictly_increasing(uppers) and _strictly_increasing(lowers[::-1])


# ---------------------------------------------------------------- loud failures


def _break_scipy_quantiles(monkeypatch, value: float) -> None:
    """SciPy's Beta quantiles as the bounds call them (scipy.special, as smoothcert.bounds
    sees it), returning ``value``."""
    monkeypatch.setattr(bounds_module.special, "betaincinv", lambda *args: value)
    monkeypatch.setattr(bounds_module.special, "betainccinv", lambda *args: value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.25, 1.5])
def test_a_bound_that_is_not_a_probability_raises_numerical_error(
    monkeypatch, value: float
) -> None:
    _break_scipy_quantiles(monkeypatch, value)
    with pytest.raises(NumericalError, match=r"lower bound for k=5, n=10, alpha=0\.01\b"):
        lower_confidence_bound(5, 10, 0.01)
    with pytest.raises(NumericalError, match=r"upper bound for k=5, n=10, alpha=0\.01\b"):
        upper_confidence_bound(5, 10, 0.01)
    with pytest.raises(NumericalError):
        certify(np.array([0, 10]), np.array([2, 8]), GAUSSIAN, 0.5, 0.01)


def test_above_the_threshold_scipy_only_starts_the_solve(monkeypatch) -> None:
    n = 2 * EXACT_SOLVE_ABOVE
    cases = [(1000, 1e-6), (30, 1e-6), (n - 3, 0.1), (n // 2, 1e-15)]
    expected = [
        (lower_confidence_bound(k, n, a), upper_confidence_bound(k, n, a)) for k, a in cases
    ]
    _break_scipy_quantiles(monkeypatch, math.nan)
    got = [(lower_confidence_bound(k, n, a), upper_confidence_bound(k, n, a)) for k, a in cases]
    for want, have in zip(expected, got, strict=True):
        assert have == pytest.approx(want, rel=1e-14)


def test_a_nan_binomial_tail_raises_numerical_error(monkeypatch) -> None:
    monkeypatch.setattr(bounds_module.special, "betainc", lambda *args: math.nan)
    with pytest.raises(NumericalError, match="NaN"):
        lower_confidence_bound(1000, 2 * EXACT_SOLVE_ABOVE, 1e-6)


def test_a_radius_that_is_not_finite_raises_numerical_error(monkeypatch) -> None:
    class BrokenNorm:
        @staticmethod
        def ppf(p: float) -> float:
            return math.inf

    monkeypatch.setattr(gaussian_module, "norm", BrokenNorm)  # the Gaussian radius's Phi^-1
    with pytest.raises(NumericalError, match=r"radius .* k=10, n=10, alpha=0\.01\b"):
        certify(np.array([0, 10]), np.array([0, 10]), GAUSSIAN, 0.5, 0.01)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_alpha_outside_the_open_unit_interval_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        lower_confidence_bound(5, 10, alpha)
    with pytest.raises(ValueError, match="alpha"):
        upper_confidence_bound(5, 10, alpha)


def test_counts_outside_their_range_are_refused() -> None:
    for k, n in [(0, 0), (-1, 10), (11, 10)]:
        with pytest.raises(ValueError):
            lower_confidence_bound(k, n, 0.01)
        with pytest.raises(ValueError):
            upper_confidence_bound(k, n, 0.01)


def test_the_common_case_stays_fast() -> None:
    """Up to EXACT_SOLVE_ABOVE trials a bound is one SciPy call; above, a few tail evaluations."""
    for n in (10**5, 10**9):
        start = time.perf_counter()
        for k in (1, n // 2, n - 1):
            lower_confidence_bound(k, n, 1e-3)
            upper_confidence_bound(k, n, 1e-3)
        assert time.perf_counter() - start < 0.5  # generous: ~2 ms of work on a slow CPU
