"""Packs the noisy samples of all in-flight requests into backend batches.

Each request is a job: an input, a count of samples still to draw and its own noise source.
Batches are cut round-robin across jobs, each getting an equal share of a batch (at least
``MIN_SEGMENT`` samples), so eight concurrent requests fill batches together and a large
request cannot starve small ones; the votes of each batch are added to each job's counts.

How the noise is made is the ``NoiseStrategy`` chosen at construction (``sampling.py``): on
the host, where the noise of a job's sample i depends only on the job's key and i, so seeded
requests are reproducible whatever the batching; or on the backend's device, from a seed per
segment drawn in cut order; or where the network runs (Triton's sampler), which returns each
segment's votes instead of a class per sample, the batch then being the strategy's own (one
call's samples) and shares whole blocks of its noise. Noise is generated one batch at a time,
never n copies at once, and at most ``pipeline_depth`` batches are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends.base import Backend
from .errors import BadState, Unavailable
from .metrics import Metrics, ModelStats
from .repository import ModelVersion
from .sampling import NoiseStrategy, Segment, noise_strategy

log = logging.getLogger(__name__)

# Each segment of a batch costs a few Python calls (its noise, its votes, its callback), about
# as much as drawing tens of samples: 256 one-sample segments per batch made a burst of 256
# requests at n = 2,000 run 40 times slower than the same samples in large segments.
MIN_SEGMENT = 64
UNDECIDED = (
    "a floating-point-sound noise draw was undecided (about 1e-16 per pixel drawn): no "
    "certificate was made; retry the request"
)


@dataclass(eq=False)
class Tally:
    """The votes of a job's samples classified so far and how many samples they hold. A caller
    whose job a deadline cancels may keep them: which samples are in depends on the time only
    (the batches back by then), never on their votes. With ``stop_at`` (time.monotonic()), no
    batch is cut for the job from then on and it ends once those in flight are back, with
    fewer samples than asked (``stopped``): a deadline's look that wastes no sample drawn."""

    counts: np.ndarray
    samples: int = 0
    stop_at: float | None = None
    stopped: bool = False


@dataclass(eq=False)
class _Job:
    x: np.ndarray
    noise: Any  # the job's noise source, from the scheduler's NoiseStrategy
    remaining: int
    tally: Tally
    future: asyncio.Future
    assigned: int = 0  # samples cut into batches so far: the next sample's index
    in_flight: int = 0
    done: bool = field(default=False)
    on_classified: Callable[[int], None] | None = None
    enqueued: float = field(default_factory=time.perf_counter)  # its wait is the queue time

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        if not self.future.done():
            if error is None:
                self.future.set_result(self.tally.counts)
            else:
                self.future.set_exception(error)


class BatchScheduler:
    """One per served model: turns ``count(x, num, rng)`` calls into shared backend batches."""

    def __init__(
        self,
        model: ModelVersion,
        backend: Backend,
        metrics: Metrics,
        batch_size: int = 256,
        pipeline_depth: int = 2,
        noise_threads: int = 1,
        generator: str = "pcg64",
        batch_source: str = "flag",
    ) -> None:
        self.model = model
        self.backend = backend
        self.metrics = metrics
        self.noise: NoiseStrategy[Any] = noise_strategy(
            model, backend, batch_size, pipeline_depth, noise_threads, generator
        )
        # a strategy that sends no samples (remote counts) sets its own batch: one call's work
        self.batch_size = self.noise.batch_size or batch_size
        self.batch_source = batch_source  # batch_tuning: flag, config, measured or backend
        self._jobs: deque[_Job] = deque()
        self._work = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._closed_with: BaseException | None = None
        self.stats = ModelStats()  # this version's statistics (the OIP statistics extension)

    @property
    def generator(self) -> str:
        """What draws this model's noise: "ars5" or "pcg64" (host), "device", "remote"."""
        return self.noise.generator

    @property
    def supports_sound_noise(self) -> bool:
        return self.noise.supports_sound_noise

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name=f"scheduler-{self.model.name}")

    def fail_all(self, error: BaseException) -> None:
        """Finish every job with ``error`` and refuse new ones (the grace period is over): the
        requests answer with a status instead of being cancelled under gRPC's feet."""
        self._closed_with = error
        for job in list(self._jobs):
            job.finish(error)
        self._jobs.clear()

    async def close(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for job in self._jobs:
            job.finish(asyncio.CancelledError())
        self.noise.close()

    @property
    def queue_depth(self) -> int:
        return len(self._jobs)

    async def count(
        self,
        x: np.ndarray,
        num: int,
        rng: np.random.Generator,
        on_classified: Callable[[int], None] | None = None,
        sound: bool = False,
        tally: Tally | None = None,
    ) -> np.ndarray:
        """Votes of f on ``num`` noisy copies x + N(0, sigma^2 I), one count per class.

        If the caller is cancelled, the job leaves the queue at once and draws no more samples;
        ``tally`` (a fresh one of this model's classes) then holds the votes of its batches
        classified before.
        ``on_classified(k)`` is called as each batch holding k of its samples is classified.
        ``sound``: floating-point-sound noise (``sound_noise.py``; x holds the input's lattice
        indices); the job fails with Unavailable if one of its draws is undecided.
        """
        if self._closed_with is not None:
            raise self._closed_with
        if tally is None:
            tally = Tally(np.zeros(self.model.config.num_classes, dtype=np.int64))
        if tally.samples or tally.counts.any() or tally.counts.shape != (self.model.config.num_classes,):
            raise ValueError("a job's tally starts empty, one count per class")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        source = self.noise.source(rng, sound)
        job = _Job(x, source, num, tally, future, on_classified=on_classified)
        stop = None
        if tally.stop_at is not None:
            when = loop.time() + (tally.stop_at - time.monotonic())
            stop = loop.call_at(when, self._stop_cutting, job)
        self._jobs.append(job)
        self.metrics.queue_depth.labels(self.model.name).set(len(self._jobs))
        self._work.set()
        try:
            return await job.future
        finally:
            if stop is not None:
                stop.cancel()
            job.done = True
            self._drop(job)
            if job.remaining:  # cancelled or failed: these samples are never drawn
                self.metrics.samples_abandoned.labels(self.model.name).inc(job.remaining)

    def _stop_cutting(self, job: _Job) -> None:
        """``Tally.stop_at`` came: no further batch for the job; it ends with the samples of
        its batches in flight once they are back (at once if none is)."""
        if job.done or not job.remaining:
            return
        self.metrics.samples_abandoned.labels(self.model.name).inc(job.remaining)
        job.remaining, job.tally.stopped = 0, True
        if job.in_flight == 0:
            job.finish()

    def _drop(self, job: _Job) -> None:
        with contextlib.suppress(ValueError):
            self._jobs.remove(job)
        self.metrics.queue_depth.labels(self.model.name).set(len(self._jobs))

    async def _run(self) -> None:
        while True:
            if not any(job.remaining for job in self._jobs):
                self._work.clear()
                await self._work.wait()
                continue
            await self.noise.acquire()
            segments = self._cut_batch()
            if not segments:
                self.noise.release()
                continue
            task = asyncio.create_task(self._process(segments))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _cut_batch(self) -> list[tuple[_Job, int, int]]:
        """Round-robin: every waiting job gets an equal share of the batch, then leftovers, but
        no share below ``MIN_SEGMENT`` samples: with more jobs than that allows, a batch serves
        the next jobs in turn and the following batch starts with the first one left out.

        Returns (job, index of its first sample, samples) for each job in the batch."""
        segments: dict[_Job, tuple[int, int]] = {}
        space = self.batch_size
        smallest = min(MIN_SEGMENT, self.batch_size)
        everyone = True
        while space:
            waiting = [job for job in self._jobs if job.remaining and not job.done]
            if not waiting:
                break
            share = max(smallest, math.ceil(space / len(waiting)))
            share = -(-share // self.noise.quantum) * self.noise.quantum  # whole blocks
            for job in waiting:
                if not job.assigned:  # its first batch: the job's wait in the queue ends
                    self.stats.queued(time.perf_counter() - job.enqueued)
                take = min(share, job.remaining, space)
                start, taken = segments.get(job, (job.assigned, 0))
                segments[job] = (start, taken + take)
                job.assigned += take
                job.remaining -= take
                job.in_flight += take
                space -= take
                if not space:
                    everyone = everyone and all(j in segments for j in waiting)
                    break
        if everyone:
            self._jobs.rotate(-1)  # the next batch starts with another job
        else:  # the jobs just served go to the back
            last = max(i for i, job in enumerate(self._jobs) if job in segments)
            self._jobs.rotate(-(last + 1))
        return [(job, start, take) for job, (start, take) in segments.items()]

    async def _process(self, segments: list[tuple[_Job, int, int]]) -> None:
        """Classify one batch (holding one of the strategy's slots) and count its votes."""
        name = self.model.name
        size = sum(take for _, _, take in segments)
        try:
            batch = [Segment(job.x, job.noise, start, take) for job, start, take in segments]
            result = await self.noise.classify(batch)
            refused = result.refused
            self.metrics.record_batch(name, self.backend.name, size, self.batch_size,
                                      result.backend_seconds, self.stats)  # fmt: skip
            takes = [take for _, _, take in segments]
            if result.counts is not None:
                votes_of = self._checked_counts(result.counts, takes)
            else:
                votes_of = self._votes_of_classes(result.classes, takes)
            for position, (job, _, take) in enumerate(segments):
                votes = votes_of[position]
                job.in_flight -= take
                if job.on_classified is not None:
                    job.on_classified(take)
                if job.done:
                    continue
                if position in refused:  # not exact samples: no certificate may count them
                    job.finish(Unavailable(UNDECIDED))
                    self._drop(job)
                    continue
                job.tally.counts += votes
                job.tally.samples += take
                if job.remaining == 0 and job.in_flight == 0:
                    job.finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the backend failed: every job in this batch fails with it
            log.warning("batch of %s failed: %s", name, exc)
            for job, _, _ in segments:
                job.finish(exc)
                self._drop(job)
        finally:
            self.noise.release()

    def _votes_of_classes(self, classes: np.ndarray, takes: list[int]) -> list[np.ndarray]:
        """Each segment's votes from the class index of every sample of the batch."""
        num_classes, size = self.model.config.num_classes, sum(takes)
        if len(classes) != size or (size and not 0 <= classes.min() <= classes.max() < num_classes):
            raise BadState(
                f"the backend returned {len(classes)} classes in [{classes.min(initial=0)}, "
                f"{classes.max(initial=0)}] for {size} samples of a {num_classes}-class model"
            )
        bounds = np.cumsum([0, *takes])
        return [
            np.bincount(classes[a:b], minlength=num_classes)
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]

    def _checked_counts(self, counts: list[np.ndarray], takes: list[int]) -> list[np.ndarray]:
        """Votes per segment as a remote sampler returned them: K non-negative integers each,
        summing to the segment's samples, or no certificate is made from them."""
        num_classes = self.model.config.num_classes
        if len(counts) != len(takes):
            raise BadState(f"the backend returned {len(counts)} count vectors for {len(takes)}")
        checked = []
        for votes, take in zip(counts, takes, strict=True):
            votes = np.asarray(votes)
            if (
                votes.shape != (num_classes,)
                or votes.dtype.kind not in "iu"
                or votes.min(initial=0) < 0
                or int(votes.sum()) != take
            ):
                raise BadState(
                    f"the backend returned votes {votes.tolist()} for {take} samples of a "
                    f"{num_classes}-class model"
                )
            checked.append(votes.astype(np.int64))
        return checked
