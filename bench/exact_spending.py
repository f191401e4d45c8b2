"""How much of alpha the target-radius test's union bound really spends, and what spending the
rest buys (issue 23, the cell σ = 0.25, r = 0.75).

    OMP_NUM_THREADS=1 .venv/bin/python bench/exact_spending.py --runs 20

For each committed SmoothAdv model and target radius:
  1. the exact probability, at p_A equal to the threshold Φ(r/σ) (the worst case of the null:
     the event "some look's count reaches its certifying count" grows with p_A), that format
     v3's test (the union bound) certifies at some look, ignoring its abstentions (they only
     remove chances to certify): ``crossing_probability``, a dynamic programme over the votes
     lost so far; the same for format v4's exact counts (``target_radius.exact_counts``, the
     running sum of v3's levels as spending function), and v4's expected samples per
     certificate and certified accuracy against v3's on the same draws in
     bench/target_grid.py's simulation;
  2. other exact group-sequential tests on 5/4 looks: each look's certifying count the
     smallest whose exact cumulative crossing probability stays within a spending function
     (share s of alpha by the first certifying look, the rest evenly over the later ones), with
     projected futility on their own counts, against v3;
  3. the union bound itself with larger first shares (``target_grid.candidate``), against v3.
Floating point: the programme sums nonnegative terms only; its figures are for this report,
not for any certificate.
"""

from __future__ import annotations

import argparse

import numpy as np
import target_grid as tg
from scipy.stats import binom

from smoothcert.group_sequential import rejecting_counts
from smoothcert.procedures import target_radius as tr

ALPHA, CAP, FIRST = tg.ALPHA, tg.CAP, tg.FIRST


def crossing_probability(schedule, certifying, p: float) -> float:
    """P(the count of votes for c_A reaches certifying[k] at look k for some k) when each vote
    goes to c_A with probability ``p``, looks at ``schedule`` (cumulative sample sizes). A look
    whose certifying count exceeds its size never certifies. Tracks the distribution of votes
    lost (not for c_A) among the paths that have not certified, up to the most any look can
    lose and still certify (losses only grow, so more can never certify)."""
    most = max((n - c for n, c in zip(schedule, certifying, strict=True) if c <= n), default=-1)
    if most < 0:
        return 0.0
    lost = np.zeros(most + 1)
    lost[0] = 1.0
    crossed, before = 0.0, 0
    for n, c in zip(schedule, certifying, strict=True):
        step = binom.pmf(np.arange(most + 1), n - before, 1 - p)
        lost, before = convolve(lost, step, most + 1), n
        if c <= n:
            crossed += lost[: n - c + 1].sum()
            lost[: n - c + 1] = 0.0
    return crossed


def convolve(a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` terms of a * b, skipping the exact zeros at either end of each (the
    losses already certified, the tails that underflow), which is exact and much faster."""
    out = np.zeros(size)
    (ia,), (ib,) = np.nonzero(a), np.nonzero(b)
    if len(ia) == 0 or len(ib) == 0 or ia[0] + ib[0] >= size:
        return out
    part = np.convolve(a[ia[0] : ia[-1] + 1], b[ib[0] : ib[-1] + 1])
    start = ia[0] + ib[0]
    out[start : start + len(part)] = part[: size - start]
    return out


def spending_counts(schedule, start: int, p: float, alpha: float, share: float) -> np.ndarray:
    """The exact group-sequential test's certifying counts on ``schedule``: at the j-th of the
    m looks from ``start`` on, the smallest count whose exact cumulative crossing probability
    at ``p`` stays within alpha * (share + (1 - share) (j - 1) / (m - 1)); n + 1 (never) before
    ``start`` or where no count does (``group_sequential.rejecting_counts`` with those
    increments as levels, uncapped)."""
    m = sum(n >= start for n in schedule)
    later = alpha * (1 - share) / (m - 1) if m > 1 else 0.0
    levels, j = [], 0
    for n in schedule:
        j += n >= start
        levels.append(0.0 if n < start else alpha * (share if m > 1 else 1.0) if j == 1 else later)
    never = tuple(n + 1 for n in schedule)
    return np.array(rejecting_counts(tuple(schedule), tuple(levels), p, never))


def futility(schedule, certifying, project: float = tr.PROJECTION_LEVEL) -> np.ndarray:
    """The largest count that abstains at each look under projected futility (as today's test:
    no later look certifies even if the further votes come at the upper bound at ``project``),
    and whatever does not certify at the last look."""
    abstain = []
    for k, n in enumerate(schedule):
        later = [(c, m) for c, m in zip(certifying[k + 1:], schedule[k + 1:], strict=True)
                 if c <= m]  # fmt: skip
        if k == len(schedule) - 1 or not later:
            abstain.append(min(n, certifying[k] - 1))
            continue
        abstain.append(min(tg.projected_futility(n, later, project), certifying[k] - 1))
    return np.array(abstain)


def simulate(draws, schedule, certifying, abstaining) -> tuple[float, float]:
    """Mean samples per certificate (selection included) and certified accuracy (%) over the
    simulated draws (p_A per run and image, correctness, selection samples, seed)."""
    p, correct, selected, seed = draws
    n, ok = tg.simulate(p, correct, schedule, np.asarray(certifying), np.asarray(abstaining),
                        np.random.default_rng(seed))  # fmt: skip
    return float((n + selected).mean()), 100 * float(ok.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="simulated runs per image")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--shares", type=float, nargs="+", default=[1 / 3, 0.5, 0.65],
                        help="shares of alpha by the first certifying look")  # fmt: skip
    args = parser.parse_args()
    print("| σ, r | v3: exact spend | v3: mean samples (cert. acc.) | v4: exact spend | "
          "v4: v3 ÷ v4 (cert. acc.) | "
          + " | ".join(f"exact, s = {s:.2f}: v3 ÷ it (cert. acc.)" for s in args.shares)
          + " | " + " | ".join(f"union bound, s = {s:.2f}: v3 ÷ it" for s in args.shares)
          + " | fixed n acc. |")  # fmt: skip
    print("|---" * (6 + 2 * len(args.shares)) + "|")
    for model, sigma in tg.MODELS.items():
        k, correct = tg.load_images(model, sigma)
        p = tg.draw_p(k, args.runs, np.random.default_rng(args.seed))
        selected = tg.selection_samples(p, np.random.default_rng(args.seed + 3))

        draws = (p, correct, selected, args.seed + 2)
        for target in tg.TARGETS:
            threshold = tg.GAUSSIAN.threshold(target, sigma)
            schedule = tr.target_schedule(FIRST, CAP, target, tg.GAUSSIAN, sigma, ALPHA)
            today = tr.certifying_counts(schedule, target, tg.GAUSSIAN, sigma, ALPHA)
            if all(c > n for n, c in zip(schedule, today, strict=True)):
                continue  # unreachable at the cap: every look abstains
            spent = crossing_probability(schedule, today, threshold)
            cert, abst = tg.thresholds_from_implementation(schedule, target, sigma, version=3)
            mean, accuracy = simulate(draws, schedule, cert, abst)
            v4 = tr.exact_counts(schedule, target, tg.GAUSSIAN, sigma, ALPHA)
            spent_v4 = crossing_probability(schedule, v4, threshold)
            cert, abst = tg.thresholds_from_implementation(schedule, target, sigma, version=4)
            assert (cert == np.minimum(v4, np.asarray(schedule) + 1)).all()
            mean_v4, accuracy_v4 = simulate(draws, schedule, cert, abst)
            exact, union = [], []
            for share in args.shares:
                start = tr.certifying_size(ALPHA * share, threshold)
                looks = tuple(n for n in tg.geometric(FIRST, CAP, 1.25) if n < start)
                looks += tuple(tg.geometric(start, CAP, 1.25))
                counts = spending_counts(looks, start, threshold, ALPHA, share)
                other, other_accuracy = simulate(draws, looks, counts, futility(looks, counts))
                exact.append(f"{mean / other:.3f}× ({other_accuracy:.2f} %)")
                looks, levels = tg.candidate(target, sigma, 1.25, 1.25, share)
                counts, abstaining = tg.thresholds_from_rules(looks, levels, target, sigma,
                                                              tr.PROJECTION_LEVEL, 0.0)  # fmt: skip
                union.append(f"{mean / simulate(draws, looks, counts, abstaining)[0]:.3f}×")
            fixed = tg.fixed_n_accuracy(p, correct, target, sigma,
                                        np.random.default_rng(args.seed + 1))  # fmt: skip
            print(f"| {sigma}, {target} | {spent / ALPHA:.3f} α | {mean:,.0f} ({accuracy:.2f} %) "
                  f"| {spent_v4 / ALPHA:.3f} α | {mean / mean_v4:.3f}× ({accuracy_v4:.2f} %) "
                  f"| " + " | ".join(exact) + " | " + " | ".join(union) + f" | {fixed:.2f} % |")


if __name__ == "__main__":
    main()
