"""The sampling of one request after admission: the selection samples, and the estimation
samples drawn look by look, planned by the procedure or, for an anytime certificate under a
deadline, sized to the time left. It sees the scheduler only through a ``draw(num, tally)``
coroutine (the data plane's), and the statistics only through the procedure's pure functions
(``smoothcert.procedures``); time is measured here (``DrawClock``, ``AnswerOverhead``), never
read from the votes."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np

from smoothcert.errors import NumericalError
from smoothcert.procedures import CONTINUE, Outcome, Plan, Procedure, anytime, selection

from .errors import BadState, DeadlineExceeded
from .repository import ModelVersion
from .scheduler import Tally
from .tracing import span

log = logging.getLogger(__name__)
Draw = Callable[..., Awaitable[np.ndarray]]  # draw(num, tally=None): the votes of num samples

# Anytime certificates stop sampling a margin before the deadline: the server's own answer
# overhead as measured (``AnswerOverhead``), at least this much (the transport's share, which
# the data plane does not see) and at most ANSWER_MARGIN_MAX_S.
ANSWER_MARGIN_FLOOR_S = 0.005
ANSWER_MARGIN_MAX_S = 0.1
# ... plus this share of the request's whole time budget: the answer's way back through gRPC's
# threads, which share the cores with the noise and the network, grows with the look cut at the
# margin (a 1 s anytime request lost about one answer in ten to it without).
ANSWER_MARGIN_SHARE = 0.02
# The last look is sized to all the time left, and the deadline cuts it if the measured time per
# sample was optimistic; the horizon, which sets the looks' levels, is this share of it, so that a
# look cut a little short still gets nearly all of alpha (a look past the horizon gets more).
LOOK_TIME_SHARE = 0.8


class DrawClock:
    """How long a draw of ``num`` samples takes on one scheduler, as measured: seconds = a + b
    num, with a (the cost of a draw of any size) the exponentially weighted mean time of small
    draws (at most SMALL samples) and b (per sample) that of large draws (at least LARGE)
    beyond a, over the latest draws of every request; a request's own draws count as soon as
    they are made, so a busy server shows at once. Until a large draw is seen, b is the time
    per sample of the largest draw so far, all of it (pessimistic). Anytime looks are sized
    with it; it sees the time only, never the votes."""

    SMALL, LARGE = 128, 512
    WEIGHT = 0.3  # of the latest draw in each mean

    def __init__(self) -> None:
        self.fixed: float | None = None  # a
        self.per_sample: float | None = None  # b, from large draws
        self.largest: tuple[int, float] = (0, 0.0)  # the largest draw: (num, seconds)
        # how long before the answer margin a look stops cutting batches: the mean measured
        # time for those in flight to come back (a late drain is cut at the margin, keeping
        # what is back, so the mean loses less than a safety term would); seconds
        self.drain = 0.01

    @property
    def calibrated(self) -> bool:
        """Whether b comes from a large draw."""
        return self.per_sample is not None

    def add(self, num: int, seconds: float) -> None:
        if num <= self.SMALL:
            self.fixed = seconds if self.fixed is None else (
                self.fixed + self.WEIGHT * (seconds - self.fixed))  # fmt: skip
        if num >= self.largest[0]:
            self.largest = (num, seconds)
        if num >= self.LARGE:
            rate = max(seconds - (self.fixed or 0.0), 0.0) / num
            self.per_sample = rate if self.per_sample is None else (
                self.per_sample + self.WEIGHT * (rate - self.per_sample))  # fmt: skip

    def add_drain(self, seconds: float) -> None:
        """A look stopped from cutting batches took ``seconds`` to get those in flight back."""
        self.drain += self.WEIGHT * (max(0.0, seconds) - self.drain)

    def fits(self, seconds: float) -> int:
        """How many samples one draw can take in ``seconds`` (0 if none, or nothing measured)."""
        if self.per_sample is not None and self.per_sample > 0:
            a, b = self.fixed or 0.0, self.per_sample
        elif self.largest[0] > 0:
            a, b = 0.0, self.largest[1] / self.largest[0]
        else:
            return 0
        return max(0, int((seconds - a) / b)) if b > 0 and seconds > 0 else 0


class AnswerOverhead:
    """The time from the end of a request's sampling (or the moment a deadline was due to cut
    its last look) to its signed answer, as measured on this server: statistics, record,
    signature, and the event loop's lag on a loaded machine. The margin is the larger of the
    exponentially weighted mean plus four mean absolute deviations and 1.5 times the recent
    peak (the largest overhead seen, decaying by PEAK_DECAY with each request: a spike raises
    the margin at once), plus ANSWER_MARGIN_FLOOR_S, at most ANSWER_MARGIN_MAX_S."""

    WEIGHT = 0.1
    PEAK_DECAY = 0.95

    def __init__(self, mean: float = 0.003, deviation: float = 0.002) -> None:
        self.mean, self.deviation, self.peak = mean, deviation, mean

    def add(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.deviation += self.WEIGHT * (abs(seconds - self.mean) - self.deviation)
        self.mean += self.WEIGHT * (seconds - self.mean)
        self.peak = max(seconds, self.peak * self.PEAK_DECAY)

    def margin(self) -> float:
        spread = max(self.mean + 4 * self.deviation, 1.5 * self.peak)
        return min(ANSWER_MARGIN_MAX_S, spread + ANSWER_MARGIN_FLOOR_S)


@dataclass
class Looks:
    """What the estimation looks gave: the answer's outcome, the counts and index of the look
    it comes from, the schedule a record names (planned; a deadline's: the looks made), all
    the estimation samples drawn, anytime's horizon and whether a deadline timed the looks,
    and when sampling ended (or was due to end)."""

    outcome: Outcome
    counts: np.ndarray
    look: int
    schedule: tuple[int, ...]
    drawn: int
    horizon: int = 0
    timed: bool = False
    ended: float = 0.0


@dataclass
class Timing:
    """What times one request's looks: its deadline (time.monotonic(); None: none) and when it
    arrived, its model's clock, and the server's answer overhead."""

    deadline: float | None
    arrived: float
    clock: DrawClock
    overhead: AnswerOverhead

    def seconds_left(self) -> float | None:
        """Seconds to the deadline less the answer margin (the measured answer overhead and
        ANSWER_MARGIN_SHARE of the request's budget); None without a deadline."""
        if self.deadline is None:
            return None
        share = ANSWER_MARGIN_SHARE * max(0.0, self.deadline - self.arrived)
        return self.deadline - self.overhead.margin() - share - time.monotonic()


async def select(
    procedure: Procedure, n0: int, draw: Draw, timing: Timing, classes: int
) -> np.ndarray:
    """The selection counts: n0 samples, or, for a procedure with adaptive selection,
    looks of ``selection.selection_schedule(n0)`` until ``selection.selection_stops`` (the
    top class clear) or the time left before a deadline would not hold the next one twice
    over. Any rule is valid here: the estimation samples are drawn afterwards, afresh."""
    if not procedure.adaptive_selection:
        return await draw(n0)
    counts, drawn = np.zeros(classes, np.int64), 0
    for size in selection.selection_schedule(n0):
        if drawn:
            left = timing.seconds_left()
            if left is not None and timing.clock.fits(left / 2) < size - drawn:
                break  # the deadline: keep the time for the estimation looks
        counts += await draw(size - drawn)
        drawn = size
        if selection.selection_stops(counts):
            break
    return counts


def start_first_look(procedure: Procedure, plan: Plan, draw: Draw, timing: Timing):
    """Under a deadline an anytime certificate's first look is drawn beside the selection (one
    round trip less): its samples are a separate draw, independent of the selection's, and its
    size comes from the clock. Returns (its size, its draw's future), or None."""
    if not (procedure.timed and timing.deadline is not None):
        return None
    clock = timing.clock
    fits = clock.fits(timing.seconds_left()) if clock.calibrated else plan.first_look
    size = anytime.timed_look_size(0, plan.cap, plan.first_look, fits, plan.tolerance)
    return size, asyncio.ensure_future(draw(size))


async def estimate(
    procedure: Procedure, plan: Plan, draw: Draw, selection_counts: np.ndarray | None,
    timing: Timing, model: ModelVersion, early=None,
) -> Looks:  # fmt: skip
    """The estimation samples, drawn look by look on the procedure's schedule (one look
    at n unless it is sequential), each look decided by the procedure
    (``smoothcert.procedures``): stops as soon as it decides, or at the cap. An anytime
    certificate under a deadline sizes its looks to the time left (``timed_looks``), and
    answers with its best look."""
    if procedure.timed and timing.deadline is not None:
        return await timed_looks(procedure, plan, draw, selection_counts, timing, model, early)
    schedule = procedure.schedule(plan)
    await prepare(procedure, plan, schedule)
    counts = np.zeros(model.config.num_classes, np.int64)
    outcomes: list[Outcome] = []
    snapshots: list[np.ndarray] = []
    drawn = 0
    for k, size in enumerate(schedule, 1):
        counts += await draw(size - drawn)
        drawn = size
        outcome = decide(procedure, plan, schedule, k, selection_counts, counts)
        outcomes.append(outcome)
        snapshots.append(counts.copy())
        if outcome.decision != CONTINUE:
            break
    answer = anytime.best(outcomes) if procedure.anytime else len(outcomes) - 1
    return Looks(outcomes[answer], snapshots[answer], answer + 1, schedule, drawn,
                 ended=time.monotonic())  # fmt: skip

async def timed_looks(
    procedure: Procedure, plan: Plan, draw: Draw, selection_counts: np.ndarray | None,
    timing: Timing, model: ModelVersion, early=None,
) -> Looks:  # fmt: skip
    """Anytime looks under a deadline: each sized by ``anytime.timed_look_size`` to what
    the time left (less the answer margin) holds at the measured time per sample
    (``DrawClock``), the horizon fixed before the second look as ``LOOK_TIME_SHARE`` of the
    samples the time left holds. A look stops cutting batches a measured drain time before
    the margin (``Tally.stop_at``) and ends with those in flight, so no sample drawn is lost;
    one still running at the margin is cut there and keeps the batches classified by then.
    Either is a look of that many samples if it adds at least a tenth to the samples before
    it (else the looks before it stand). Sizes, stops, cuts and horizon come from the clock,
    never from the votes. Answers with the best look;
    DeadlineExceeded only when the first look is not back in time. ``early``: the first
    look's size and its draw, started beside the selection."""
    classes, clock = model.config.num_classes, timing.clock
    counts = np.zeros(classes, np.int64)
    made: list[int] = []
    outcomes: list[Outcome] = []
    snapshots: list[np.ndarray] = []
    drawn, ended, decided = 0, None, False
    while True:
        left = timing.seconds_left()
        # the first look shrinks only for a clock measured on a large draw
        fits = clock.fits(left) if made or clock.calibrated else plan.first_look
        size = anytime.timed_look_size(drawn, plan.cap, plan.first_look, fits,
                                       plan.tolerance, plan.horizon, len(made),
                                       clock.calibrated)  # fmt: skip
        if not made and early is not None:
            size = early[0]
        if size == 0:
            break
        if len(made) == 1:  # the horizon, fixed before the second look, from the clock
            horizon = drawn + int(LOOK_TIME_SHARE * fits)
            plan = replace(plan, horizon=max(made[0], min(plan.cap, horizon)))
        stop_at = timing.deadline if not made else time.monotonic() + left
        # no batch is cut for the look from a drain time before the margin, so that those in
        # flight are back by then and count; the margin itself cuts whatever is not
        drain_at = stop_at - clock.drain if made else None
        tally, began = Tally(np.zeros(classes, np.int64), stop_at=drain_at), time.perf_counter()
        try:
            async with asyncio.timeout_at(loop_time(stop_at)):
                if not made and early is not None:
                    new = await early[1]
                else:
                    new = await draw(size - drawn, tally)
        except TimeoutError:
            if not made:
                raise DeadlineExceeded("the deadline passed before the first look was "
                                       "complete") from None  # fmt: skip
            ended = stop_at  # cut at the margin: what was classified by then
            if tally.samples:  # what the cut look drew in its time teaches the clock
                clock.add(tally.samples, time.perf_counter() - began)
            check_counts(tally.counts, tally.samples, model)
            new = tally.counts
        if tally.stopped:  # no batch cut from drain_at: back by the margin, or cut there
            clock.add_drain(time.monotonic() - drain_at if ended is None
                            else 2 * (stop_at - drain_at))  # fmt: skip
            ended = time.monotonic() if ended is None else ended
        if ended is not None and tally.samples < max(1, math.ceil(drawn / 10)):
            break  # a stopped or cut look adding less than a tenth: the looks before it stand
        counts += new
        drawn = size if ended is None else drawn + tally.samples
        made.append(drawn)
        outcome = decide(procedure, plan, tuple(made), len(made), selection_counts, counts)
        outcomes.append(outcome)
        snapshots.append(counts.copy())
        if ended is not None:
            break
        if outcome.decision != CONTINUE:
            decided = True
            break
    if not outcomes:
        raise DeadlineExceeded("the deadline passed before the first look was complete")
    answer = anytime.best(outcomes)
    ended = time.monotonic() if ended is None else ended
    planned = procedure.schedule(replace(plan, horizon=0))
    if decided and plan.horizon in (0, plan.cap) and tuple(made) == planned[: len(made)]:
        # a deadline that never bound: the planned looks at the planned levels, as without
        return Looks(outcomes[answer], snapshots[answer], answer + 1, planned, drawn,
                     ended=ended)  # fmt: skip
    return Looks(outcomes[answer], snapshots[answer], answer + 1, tuple(made), drawn,
                 horizon=plan.horizon, timed=True, ended=ended)  # fmt: skip

async def prepare(procedure: Procedure, plan: Plan, schedule: tuple[int, ...]) -> None:
    """The tables the procedure's looks read, built off the event loop (format v4's exact
    target-radius counts take up to 0.2 s for a new schedule and target); a bound that does not
    come out as a number is bad state, as in ``decide``. Procedures without tables (fixed n,
    anytime) skip the thread."""
    if type(procedure).prepare is Procedure.prepare:
        return
    try:
        await asyncio.to_thread(procedure.prepare, plan, schedule)
    except NumericalError as exc:
        raise BadState(str(exc)) from None


def decide(procedure, plan, schedule, k, selection_counts, counts) -> Outcome:
    with span("statistics", procedure=procedure.name, look=k):
        try:
            return procedure.look(plan, schedule, k, selection_counts, counts)
        except NumericalError as exc:
            raise BadState(str(exc)) from None

def loop_time(monotonic: float) -> float:
    """A time.monotonic() instant in event-loop time."""
    return asyncio.get_running_loop().time() + (monotonic - time.monotonic())


def check_counts(counts: np.ndarray, drawn: int, model: ModelVersion) -> None:
    """Votes must account for every sample drawn, one per class of the model: anything else
    means a backend and its config disagree, and no certificate may come of it."""
    total = int(counts.sum())
    if counts.shape != (model.config.num_classes,) or total != drawn or counts.min() < 0:
        log.error(
            "%s version %s: %d votes over %d classes for %d samples drawn; no certificate",
            model.name, model.version, total, counts.size, drawn,
        )  # fmt: skip
        raise BadState(f"model {model.name!r} gave inconsistent votes; no certificate was made")
