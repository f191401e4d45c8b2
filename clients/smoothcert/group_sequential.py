"""The exact boundary of a one-sided group-sequential binomial test: at each look, the fewest
votes that reject H0: p <= threshold while the probability of rejecting at some look, at the
worst null p = threshold, stays within a spending function fixed in advance.

The crossing probability is computed by the recursion of Armitage, McPherson and Rowe (JRSS A,
1969): the distribution of the votes lost so far (not for the tested class) among the paths that
have not yet rejected, convolved with each look's new draws. The spending function is the one
of Lan and DeMets (Biometrika, 1983): the cumulative alpha allowed by look k. The target-radius
test (``procedures.target_radius``, format v4) takes as spending function the running sum of
its union-bound levels, which makes this boundary never above the union bound's at any look
(``ceiling``), so on the same votes it rejects at the same look or earlier.

Pure functions on sample sizes and levels; nothing here depends on the votes of a request.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom

# The spending budget is shaved by this fraction, far above the rounding of the recursion's
# sums (all terms are nonnegative, so a sum of m terms is within about m ulps of its exact
# value: 1e-10 relative even at a million entries; at 10^7 samples they hold about 20,000).
MARGIN = 1e-6
# Each look's new draws, and the distribution of the votes lost so far, are cut where their tails
# hold less than alpha * TAIL; the cut mass is counted as rejected, which only overstates the
# crossing probability. It keeps the arrays at a few dozen standard deviations.
TAIL = 1e-12
# The null p of the recursion is the threshold moved up by this many ulps, so that the float
# threshold's own rounding cannot put the true worst case above it.
NUDGE_ULPS = 4
# Below this alpha the recursion's sums would lose the relative precision MARGIN assumes (floats
# near 1e-300 are subnormal): the ceiling's counts at every look.
SMALLEST_ALPHA = 1e-200
# The recursion stops once its convolutions would pass this many multiply-adds (about 0.3 s
# here), and the ceiling's counts hold from that look on: requests choose the cap, the target
# and alpha, and wide arrays (large caps, tiny alpha) cost their product.
WORK_LIMIT = 5 * 10**8


def crossing_tail(size: int, loss: float, cut: float) -> tuple[int, np.ndarray, float]:
    """The losses among ``size`` new draws (each lost with probability ``loss``) as (first
    count kept, pmf from it on, mass left out), kept within z standard deviations (plus z^2
    above, for the heavier upper tail of a small ``loss``) of the mean, with z^2 / 2 =
    ln(1 / ``cut``): a window that leaves out about ``cut`` on either side. Whatever it leaves
    out is computed exactly (the binomial cdf and sf), for the caller to count as rejected."""
    mean, sd = size * loss, math.sqrt(size * loss * (1 - loss))
    z = math.sqrt(2 * math.log(1 / cut))
    lo = max(math.floor(mean - z * sd) - 1, 0)
    hi = min(math.ceil(mean + z * sd + z * z) + 1, size)
    pmf = binom.pmf(np.arange(lo, hi + 1), size, loss)
    return lo, pmf, float(binom.cdf(lo - 1, size, loss) + binom.sf(hi, size, loss))


def rejecting_counts(
    schedule: tuple[int, ...], levels: tuple[float, ...], threshold: float,
    ceiling: tuple[int, ...],
) -> tuple[int, ...]:  # fmt: skip
    """For each look of ``schedule`` (cumulative sample sizes), the fewest votes for the tested
    class that reject H0: p <= ``threshold`` there; n + 1 (never) at a look whose level is 0.

    At look k with level > 0 the count is the smallest c with

        P_threshold(no rejection before look k, votes at look k >= c) + P(rejection before k)
            <= (1 - MARGIN) * (levels[0] + ... + levels[k - 1]),

    capped at ``ceiling[k]`` (a count whose own tail is within levels[k], such as the union
    bound's Clopper-Pearson count at that level, keeps the sum within alpha by the union bound).
    The recursion tracks the counts actually used. Past WORK_LIMIT, and below SMALLEST_ALPHA,
    the ceiling's counts (n + 1 where the level is 0), valid by the same union bound.

    Guarantee: if each vote goes to the tested class independently with probability
    p <= threshold, the probability that the votes reach some look's count is at most
    sum(levels) (Lan and DeMets 1983: a spending function fixed before the votes). The event
    grows with p (more votes for the class can only bring a rejection sooner), so p = threshold
    is the worst case, and the recursion is run a few ulps above it; every cut tail is counted
    as rejected. Stopping for any other reason (abstaining) only removes rejections.
    """
    if len(schedule) != len(levels) or len(schedule) != len(ceiling):
        raise ValueError("schedule, levels and ceiling must have one entry per look")
    worst = float(threshold)
    for _ in range(NUDGE_ULPS):
        worst = float(np.nextafter(worst, 2.0))
    given = tuple(n + 1 if not level else c
                  for n, level, c in zip(schedule, levels, ceiling, strict=True))  # fmt: skip
    if worst >= 1.0 or sum(levels) < SMALLEST_ALPHA:
        return given
    loss, cut = 1.0 - worst, sum(levels) * TAIL
    first, lost = 0, np.ones(1)  # P(first + i votes lost so far, no rejection yet)
    rejected, budget, before, work, counts = 0.0, 0.0, 0, 0, []
    for k, (n, level, most) in enumerate(zip(schedule, levels, ceiling, strict=True)):
        lo, step, outside = crossing_tail(n - before, loss, cut)
        work += len(lost) * len(step)
        if work > WORK_LIMIT:  # the ceiling from here on (each within its level)
            return (*counts, *given[k:])
        rejected += outside * float(lost.sum())
        if len(lost):  # empty once every path has rejected or been cut
            lost, first = np.convolve(lost, step), first + lo
        before = n
        from_end = np.cumsum(lost[::-1])
        far = int(np.searchsorted(from_end, cut, side="right"))
        if far:  # the paths that lost most: counted as rejected
            rejected += float(from_end[far - 1])
            lost = lost[: len(lost) - far]
        budget += level
        if not level:
            counts.append(n + 1)
            continue
        room = (1 - MARGIN) * budget - rejected
        within = np.nonzero(np.cumsum(lost) <= room)[0]
        losses = first + int(within[-1]) if len(within) else -1  # the most that still reject
        count = min(n - losses, most) if losses >= 0 else most
        drop = max(0, min(n - count - first + 1, len(lost)))  # losses <= n - count reject
        rejected += float(lost[:drop].sum())
        lost, first = lost[drop:], first + drop
        counts.append(int(count))
    return tuple(counts)
