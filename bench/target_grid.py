"""Offline simulator of the target-radius test's look grid (issue 23): samples per certificate
and certified accuracy on the committed SmoothAdv models, old grid against candidates.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python bench/target_grid.py --runs 20

p_A of each of the first 500 Fashion-MNIST test images comes from the committed per-image
results (``model_repo/<model>/certification.tsv``: CERTIFY at n = 10,000, alpha = 0.001, radius
printed to 3 decimals): the vote count k that gives the printed radius (the middle of the
counts that round to it), and then p_A drawn once per image from the Jeffreys posterior
Beta(k + 1/2, n - k + 1/2), seeded (a saturated radius, k = n, says only p_A > ~0.9997; the
posterior spreads it). Images where CERTIFY abstained get p_A = 1/2. The votes for c_A are
binomial draws (numpy Generator, seeded); the wrong-class pick of selection is not modeled.

The estimation stage is decided per look by count thresholds: certified at look k when the
count reaches C_k (the Clopper-Pearson lower bound at the look's level exceeds the
threshold), abstain when it is at most A_k (last look, futility, or the upper bound at
EARLY_ABSTAIN_LEVEL below the threshold). For the implemented grid the thresholds come from
``target_radius_look`` itself (bisection on the count, every decision being monotone in it);
for candidates from the same rules over the candidate's schedule and levels, checked against
the implementation where they coincide. Selection: the adaptive rule of ``selection`` (looks
8, 16, ..., 100; stop when the top class's lower bound at 0.01 exceeds 1/2), with the top
class's votes Binomial(n, p_A), or a fixed n0 = 100 as in the 2026-12-03 benchmark.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from scipy.stats import norm

from smoothcert.bounds import lower_confidence_bound, upper_confidence_bound
from smoothcert.families import FAMILIES
from smoothcert.procedures import selection
from smoothcert.procedures import target_radius as tr
from smoothcert.procedures.base import look_schedule

ROOT = Path(__file__).resolve().parents[1]
GAUSSIAN = FAMILIES["gaussian"]
MODELS = {"fmnist_cnn_smoothadv_s025": 0.25, "fmnist_cnn_smoothadv_s050": 0.5}
TARGETS = (0.25, 0.5, 0.75, 1.0)
ALPHA, CAP, FIRST, N0, IMAGES = 0.001, 100_000, 64, 100, 500
TSV_N, TSV_ALPHA = 10_000, 0.001
# Mean (median) samples per certificate of the 2026-12-03 run (docs/benchmarks.md), n0 = 100.
MEASURED = {
    (0.25, 0.25): (547, 155), (0.25, 0.5): (859, 496), (0.25, 0.75): (7982, 6406),
    (0.25, 1.0): (164, 164), (0.5, 0.25): (1369, 126), (0.5, 0.5): (669, 155),
    (0.5, 0.75): (841, 235), (0.5, 1.0): (2155, 496),
}  # fmt: skip


# --- the images -------------------------------------------------------------------------------


def count_from_radius(radius: float, sigma: float) -> int:
    """The middle of the vote counts k whose CERTIFY radius at n = TSV_N rounds to ``radius``."""

    def rad(k: int) -> float:
        p = lower_confidence_bound(k, TSV_N, TSV_ALPHA)
        return sigma * norm.ppf(p) if p > 0.5 else 0.0

    def first_at_least(value: float) -> int:  # radius is nondecreasing in k
        lo, hi = 0, TSV_N + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if mid <= TSV_N and rad(mid) < value:
                lo = mid + 1
            else:
                hi = mid
        return lo

    lo, hi = first_at_least(radius - 0.0005), first_at_least(radius + 0.0005) - 1
    return min((lo + max(hi, lo)) // 2, TSV_N)


def load_images(model: str, sigma: float):
    """(k, correct) of the first IMAGES test images: the votes for c_A at n = TSV_N behind the
    printed radius (-1 where CERTIFY abstained)."""
    with open(ROOT / "model_repo" / model / "certification.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:IMAGES]
    k = [-1 if int(row["predict"]) < 0 or float(row["radius"]) <= 0
         else count_from_radius(float(row["radius"]), sigma) for row in rows]  # fmt: skip
    return np.array(k), np.array([row["correct"] == "1" for row in rows])


def draw_p(k: np.ndarray, runs: int, rng: np.random.Generator) -> np.ndarray:
    """p_A per (run, image): Jeffreys posterior draws given k of TSV_N (1/2 where abstained)."""
    a, b = np.where(k < 0, 1.0, k + 0.5), np.where(k < 0, 1.0, TSV_N - k + 0.5)
    p = rng.beta(a, b, size=(runs, len(k)))
    return np.where(k < 0, 0.5, p)


# --- grids --------------------------------------------------------------------------------------


def geometric(start: int, cap: int, ratio: float) -> list[int]:
    """start, ceil(start * ratio), ..., cap."""
    looks, size = [], min(start, cap)
    while size < cap:
        looks.append(size)
        size = max(size + 1, math.ceil(size * ratio))
    looks.append(cap)
    return looks


def candidate(target: float, sigma: float, ratio: float, prefix_ratio: float,
              first_share: float = 0.0) -> tuple[tuple[int, ...], tuple[float, ...]]:  # fmt: skip
    """A candidate grid: certifying looks n*, ratio n*, ..., cap, alpha split evenly over them
    (or ``first_share`` of alpha on n* and the rest evenly); before n*, looks from FIRST with
    ``prefix_ratio`` (no alpha). n* the fewest samples that can certify at its own level."""
    threshold = GAUSSIAN.threshold(target, sigma)
    if tr.certifying_size(ALPHA, threshold) > CAP:
        plain = look_schedule(FIRST, CAP)
        return plain, (0.0,) * len(plain)

    def grid(start: int) -> tuple[list[int], list[float]]:
        looks = geometric(start, CAP, ratio)
        m = len(looks)
        if first_share and m > 1:
            return looks, [ALPHA * first_share] + [ALPHA * (1 - first_share) / (m - 1)] * (m - 1)
        return looks, [ALPHA / m] * m

    lo, hi = tr.certifying_size(ALPHA, threshold), CAP
    while lo < hi:  # the smallest start that can certify at its own level (monotone)
        mid = (lo + hi) // 2
        if tr.certifying_size(grid(mid)[1][0], threshold) <= mid:
            hi = mid
        else:
            lo = mid + 1
    looks, levels = grid(lo)
    prefix = [n for n in geometric(FIRST, CAP, prefix_ratio) if n < lo]
    return tuple(prefix + looks), tuple([0.0] * len(prefix) + levels)


def least(pred, n: int) -> int:
    """The least count in [0, n + 1] where ``pred`` (false, then true) holds."""
    lo, hi = 0, n + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def thresholds_from_rules(schedule, levels, target, sigma, project: float = 0.0,
                          early: float = tr.EARLY_ABSTAIN_LEVEL):  # fmt: skip
    """(C, A) per look from the abstention rules over any schedule and levels: futility (every
    further vote to c_A), early abstention at level ``early`` (0: none), and, with ``project``
    > 0, projected futility: abstain when no later certifying look j would certify even with
    the votes so far plus a share U of the n_j - n further votes, U the upper bound on p_A at
    level ``project`` (format v3: projection at 0.02, no separate early abstention)."""
    threshold = GAUSSIAN.threshold(target, sigma)
    cert = [least(lambda c, n=n, v=v: lower_confidence_bound(c, n, v) > threshold, n)
            if v else n + 1 for n, v in zip(schedule, levels, strict=True)]  # fmt: skip
    abst = []
    for k, n in enumerate(schedule):
        if k == len(schedule) - 1:
            abst.append(cert[k] - 1)  # whatever does not certify
            continue
        later = [(c, m) for c, m, v in zip(cert[k + 1:], schedule[k + 1:], levels[k + 1:],
                                           strict=True) if v and c <= m]  # fmt: skip
        futile = min((c - m for c, m in later), default=n + 1) + n - 1
        dropped = least(lambda c, n=n: upper_confidence_bound(c, n, early) >= threshold,
                        n) - 1 if early else -1  # fmt: skip
        bound = min(n, max(futile, dropped))
        if project and later:
            bound = max(bound, projected_futility(n, later, project))
        abst.append(min(bound, cert[k] - 1))
    return np.array(cert), np.array(abst)


def projected_futility(n: int, later, project: float) -> int:
    """The largest count of n that abstains under projected futility: no later look (need, m)
    of ``later`` certifies even with the further m - n votes at U, the upper bound on p_A at
    level ``project``."""

    def hopeful(c):
        u = upper_confidence_bound(c, n, project)
        return any(c + math.floor(u * (m - n)) >= need for need, m in later)

    return least(hopeful, n) - 1


def thresholds_from_implementation(schedule, target, sigma, version: int = 4):
    """(C, A) per look by bisection on ``target_radius_look``'s own decisions (format
    ``version``'s rules: 4, the exact counts; 3, the union bound's)."""
    cert, abst = [], []
    for k, n in enumerate(schedule, 1):

        def decide(c, n=n, k=k):
            return tr.target_radius_look(c, n, k, schedule, target, GAUSSIAN, sigma, ALPHA,
                                         version).decision  # fmt: skip

        cert.append(least(lambda c, n=n: c <= n and decide(c) == "certified", n))
        abst.append(least(lambda c: decide(c) != "abstain", n) - 1)
    return np.array(cert), np.array(abst)


# --- simulation ---------------------------------------------------------------------------------


def simulate(p, correct, schedule, cert, abst, rng):
    """Estimation samples and certified-and-correct flags per (run, image), p: (runs, images)."""
    sizes = np.diff((0, *schedule))
    counts = np.cumsum(rng.binomial(sizes, p[..., None], size=(*p.shape, len(sizes))), axis=2)
    done = (counts >= cert) | (counts <= abst)
    assert done.any(axis=2).all()
    stop = np.argmax(done, axis=2)
    final = np.take_along_axis(counts, stop[..., None], axis=2)[..., 0]
    return np.asarray(schedule)[stop], (final >= cert[stop]) & correct[None, :]


def selection_samples(p, rng):
    """Selection samples of the adaptive rule, the top class's votes Binomial(n, max(p, 1-p))."""
    looks = selection.selection_schedule(N0)
    need = [least(lambda c, n=n: lower_confidence_bound(c, n, selection.SELECTION_LEVEL) > 0.5, n)
            if n < N0 else 0 for n in looks]  # fmt: skip
    sizes = np.diff((0, *looks))
    q = np.maximum(p, 1 - p)[..., None]
    top = np.cumsum(rng.binomial(sizes, q, size=(*p.shape, len(sizes))), axis=2)
    return np.asarray(looks)[np.argmax(top >= np.array(need), axis=2)]


def fixed_n_accuracy(p, correct, target, sigma, rng) -> float:
    """Certified accuracy of CERTIFY at n = CAP (the same p_A draws)."""
    threshold = GAUSSIAN.threshold(target, sigma)
    need = least(lambda c: lower_confidence_bound(c, CAP, ALPHA) > threshold, CAP)
    return 100 * float(((rng.binomial(CAP, p) >= need) & correct[None, :]).mean())


EARLY = tr.EARLY_ABSTAIN_LEVEL
GRIDS = {  # name: (ratio, prefix ratio, first share, projection level, early abstention level)
    "x1.5": (1.5, 1.5, 0.0, 0.0, EARLY),
    "x1.25": (1.25, 1.25, 0.0, 0.0, EARLY),
    "x1.25 f1/4": (1.25, 1.25, 0.25, 0.0, EARLY),
    "x1.25 f1/3": (1.25, 1.25, 1 / 3, 0.0, EARLY),
    "x1.25 f1/2": (1.25, 1.25, 0.5, 0.0, EARLY),
    "x1.4 f1/3": (1.4, 1.4, 1 / 3, 0.0, EARLY),
    "x1.25 f1/3 proj.01": (1.25, 1.25, 1 / 3, 0.01, EARLY),
    "x1.25 f1/4 proj.01": (1.25, 1.25, 0.25, 0.01, EARLY),
    "x1.4 f1/3 proj.01": (1.4, 1.4, 1 / 3, 0.01, EARLY),
    "x1.25 f1/3 proj.02": (1.25, 1.25, 1 / 3, 0.02, EARLY),
    "x1.25 f1/3 proj.01 only": (1.25, 1.25, 1 / 3, 0.01, 0.0),
    "x1.25 f1/3 proj.02 only": (1.25, 1.25, 1 / 3, 0.02, 0.0),
    "x1.25 f1/3 proj.05 only": (1.25, 1.25, 1 / 3, 0.05, 0.0),
    "x1.25 f1/3 proj.1 only": (1.25, 1.25, 1 / 3, 0.1, 0.0),
    "x1.25 f1/3 proj.2 only": (1.25, 1.25, 1 / 3, 0.2, 0.0),
}


def old_grid(target, sigma):
    """Today's (format v2) schedule and levels."""
    schedule_of = getattr(tr, "target_schedule_v2", tr.target_schedule)
    levels_of = getattr(tr, "target_levels_v2", tr.target_levels)
    schedule = schedule_of(FIRST, CAP, target, GAUSSIAN, sigma, ALPHA)
    return schedule, levels_of(schedule, target, GAUSSIAN, sigma, ALPHA)


BANDS = (-1.0, -0.01, -0.001, 0.0, 0.001, 0.01, 1.0)


def by_margin(runs: int, seed: int) -> None:
    """The implemented test's expected samples per certificate (selection included) split by
    each image's p_A - threshold: share of the images, mean cost, contribution to the mean,
    and how often the test and fixed n = CAP certify them."""
    print("| σ, r | p_A − Φ(r/σ) | images | mean samples | share of the mean | certified | "
          "fixed n certifies |")  # fmt: skip
    print("|---" * 7 + "|")
    for model, sigma in MODELS.items():
        k, correct = load_images(model, sigma)
        p = draw_p(k, runs, np.random.default_rng(seed))
        sel = selection_samples(p, np.random.default_rng(seed + 3))
        for target in TARGETS:
            threshold = GAUSSIAN.threshold(target, sigma)
            schedule = tr.target_schedule(FIRST, CAP, target, GAUSSIAN, sigma, ALPHA)
            cert, abst = thresholds_from_implementation(schedule, target, sigma)
            n, certified = simulate(p, np.ones_like(correct), schedule, cert, abst,
                                    np.random.default_rng(seed + 2))  # fmt: skip
            total = n + sel
            need = least(lambda c, t=threshold: lower_confidence_bound(c, CAP, ALPHA) > t, CAP)
            fixed = np.random.default_rng(seed + 1).binomial(CAP, p) >= need
            margin = p - threshold
            for lo, hi in zip(BANDS[:-1], BANDS[1:], strict=True):
                band = (margin > lo) & (margin <= hi)
                if band.any():
                    print(f"| {sigma}, {target} | ({lo}, {hi}] | {100 * band.mean():.1f} % | "
                          f"{total[band].mean():,.0f} | {total[band].sum() / total.size:,.0f} "
                          f"of {total.mean():,.0f} | {100 * certified[band].mean():.0f} % | "
                          f"{100 * fixed[band].mean():.0f} % |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="simulated runs per image")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--grids", nargs="*", default=list(GRIDS))
    parser.add_argument("--implemented", action="store_true",
                        help="also the grid target_radius.py implements now")  # fmt: skip
    parser.add_argument("--by-margin", action="store_true",
                        help="the implemented test's cost split by p_A - threshold, instead")
    args = parser.parse_args()
    if args.by_margin:
        by_margin(args.runs, args.seed)
        return
    header = (
        "| σ, r | grid | looks | mean est. | + n0 = 100 | + adaptive sel. | median | "
        "old (n0 = 100) ÷ this | measured (2026-12-03) ÷ this | cert. acc. | fixed-n acc. |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for model, sigma in MODELS.items():
        k, correct = load_images(model, sigma)
        p = draw_p(k, args.runs, np.random.default_rng(args.seed))
        sel = selection_samples(p, np.random.default_rng(args.seed + 3))
        for target in TARGETS:
            old = old_grid(target, sigma)
            grids = {"old (v2)": (*old, 0.0, EARLY)}
            for name in args.grids:
                ratio, prefix, share, project, early = GRIDS[name]
                grids[name] = (*candidate(target, sigma, ratio, prefix, share), project, early)
            if args.implemented:
                now = tr.target_schedule(FIRST, CAP, target, GAUSSIAN, sigma, ALPHA)
                grids["implemented"] = (now, None, 0.0, 0.0)
            fixed = fixed_n_accuracy(
                p, correct, target, sigma, np.random.default_rng(args.seed + 1)
            )
            baseline = None
            for name, (schedule, levels, project, early) in grids.items():
                if levels is None:
                    cert, abst = thresholds_from_implementation(schedule, target, sigma)
                else:
                    cert, abst = thresholds_from_rules(schedule, levels, target, sigma, project,
                                                       early)  # fmt: skip
                if name == "old (v2)" and not hasattr(tr, "target_schedule_v2"):
                    check = thresholds_from_implementation(schedule, target, sigma)
                    assert (check[0] == cert).all() and (check[1] == abst).all(), name
                n, certified = simulate(p, correct, schedule, cert, abst,
                                        np.random.default_rng(args.seed + 2))  # fmt: skip
                total = n + sel
                if baseline is None:
                    baseline = n.mean() + N0
                print(f"| {sigma}, {target} | {name} | {len(schedule)} | {n.mean():,.0f} | "
                      f"{n.mean() + N0:,.0f} | {total.mean():,.0f} | {np.median(total):,.0f} | "
                      f"{baseline / total.mean():.2f}× | "
                      f"{MEASURED[(sigma, target)][0] / total.mean():.2f}× | "
                      f"{100 * certified.mean():.2f} % | {fixed:.2f} % |")  # fmt: skip


if __name__ == "__main__":
    main()
