"""Packs the noisy samples of all in-flight requests into backend batches.

Each request is a job: an input, a count of samples still to draw and its own noise
generator. Batches are cut round-robin across jobs, each getting an equal share of a batch,
so eight concurrent requests fill batches together and a large request cannot starve small
ones. Noise is generated one batch at a time, never n copies at once. Batches are filled
one after another (a fill overlaps the backend's run of the previous batch), each fill
spread over ``noise_threads`` threads by the chunks of each job's ``NoiseStream``, so seeded
requests are reproducible whatever the batching.

A backend with ``generates_noise`` draws the noise on its device instead: the scheduler keeps
no host buffers and hands it, per segment, the clean input, a count and a seed drawn in order
from the job's generator. A seeded request is then reproducible only when it is cut into the
same segments (same batch size, same concurrent requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .backends.base import Backend
from .errors import BadState
from .metrics import Metrics
from .noise import NoiseStream, fill_noisy
from .repository import ModelVersion

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    x: np.ndarray
    rng: np.random.Generator
    remaining: int
    counts: np.ndarray
    future: asyncio.Future
    stream: NoiseStream | None = None  # host noise; None when the backend draws it
    assigned: int = 0  # samples cut into batches so far: the next sample's index
    in_flight: int = 0
    done: bool = field(default=False)
    on_classified: Callable[[int], None] | None = None

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        if not self.future.done():
            if error is None:
                self.future.set_result(self.counts)
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
    ) -> None:
        self.model = model
        self.backend = backend
        self.metrics = metrics
        self.batch_size = batch_size
        self._jobs: deque[_Job] = deque()
        self._work = asyncio.Event()
        # One token per batch in flight: a host buffer, or None when the backend draws the noise.
        self._free: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        for _ in range(pipeline_depth):
            self._free.put_nowait(
                None
                if backend.generates_noise
                else np.empty((batch_size, *model.config.input_shape), np.float32)
            )
        # One thread orders the fills; the pool draws each fill's chunks in parallel.
        self._noise_thread = ThreadPoolExecutor(1, thread_name_prefix=f"fill-{model.name}")
        self._noise_pool = (
            ThreadPoolExecutor(noise_threads, thread_name_prefix=f"noise-{model.name}")
            if noise_threads > 1 and not backend.generates_noise
            else None
        )
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._closed_with: BaseException | None = None

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
        self._noise_thread.shutdown(wait=False, cancel_futures=True)
        if self._noise_pool:
            self._noise_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def queue_depth(self) -> int:
        return len(self._jobs)

    async def count(
        self,
        x: np.ndarray,
        num: int,
        rng: np.random.Generator,
        on_classified: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Votes of f on ``num`` noisy copies x + N(0, sigma^2 I), one count per class.

        If the caller is cancelled, the job leaves the queue at once and draws no more samples.
        ``on_classified(k)`` is called as each batch holding k of its samples is classified.
        """
        if self._closed_with is not None:
            raise self._closed_with
        counts = np.zeros(self.model.config.num_classes, dtype=np.int64)
        job = _Job(x, rng, num, counts, asyncio.get_running_loop().create_future())
        if not self.backend.generates_noise:
            job.stream = NoiseStream(rng, self.model.config.input_shape)
        job.on_classified = on_classified
        self._jobs.append(job)
        self.metrics.queue_depth.labels(self.model.name).set(len(self._jobs))
        self._work.set()
        try:
            return await job.future
        finally:
            job.done = True
            self._drop(job)
            if job.remaining:  # cancelled or failed: these samples are never drawn
                self.metrics.samples_abandoned.labels(self.model.name).inc(job.remaining)

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
            buffer = await self._free.get()
            segments = self._cut_batch()
            if not segments:
                self._free.put_nowait(buffer)
                continue
            task = asyncio.create_task(self._process(buffer, segments))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _cut_batch(self) -> list[tuple[_Job, int, int]]:
        """Round-robin: every waiting job gets an equal share of the batch, then leftovers.

        Returns (job, index of its first sample, samples) for each job in the batch."""
        segments: dict[_Job, tuple[int, int]] = {}
        space = self.batch_size
        while space:
            waiting = [job for job in self._jobs if job.remaining and not job.done]
            if not waiting:
                break
            share = max(1, math.ceil(space / len(waiting)))
            for job in waiting:
                take = min(share, job.remaining, space)
                start, taken = segments.get(job, (job.assigned, 0))
                segments[job] = (start, taken + take)
                job.assigned += take
                job.remaining -= take
                job.in_flight += take
                space -= take
                if not space:
                    break
        self._jobs.rotate(-1)  # the next batch starts with another job
        return [(job, start, take) for job, (start, take) in segments.items()]

    def _fill(self, buffer: np.ndarray, segments: list[tuple[_Job, int, int]]) -> int:
        sigma = self.model.config.sigma
        work, offset = [], 0
        for job, start, take in segments:
            for rows, generator in job.stream.pieces(buffer[offset : offset + take], start):
                work.append((rows, job.x, generator))
            offset += take
        if self._noise_pool is None or len(work) == 1:
            for rows, x, generator in work:
                fill_noisy(rows, x, sigma, generator)
        else:
            list(self._noise_pool.map(lambda w: fill_noisy(w[0], w[1], sigma, w[2]), work))
        return offset

    async def _process(
        self, buffer: np.ndarray | None, segments: list[tuple[_Job, int, int]]
    ) -> None:
        name = self.model.name
        try:
            if buffer is None:  # the backend draws the noise on its device
                # Seeds are drawn here, before any await, so in the order batches were cut.
                device_segments = [
                    (job.x, take, int(job.rng.integers(2**63))) for job, _, take in segments
                ]
                size = sum(take for _, _, take in segments)
                started = time.perf_counter()
                classes = await self.backend.classify_noisy(
                    self.model, device_segments, self.model.config.sigma
                )
            else:
                loop = asyncio.get_running_loop()
                size = await loop.run_in_executor(self._noise_thread, self._fill, buffer, segments)
                started = time.perf_counter()
                classes = await self.backend.classify(self.model, buffer[:size])
            self.metrics.backend_latency.labels(name, self.backend.name).observe(
                time.perf_counter() - started
            )
            self.metrics.noisy_samples.labels(name).inc(size)
            self.metrics.batch_size.labels(name).observe(size)
            self.metrics.batch_fill.labels(name).observe(size / self.batch_size)
            num_classes = self.model.config.num_classes
            if len(classes) != size or (size and not 0 <= classes.min() <= classes.max() < num_classes):
                raise BadState(
                    f"the backend returned {len(classes)} classes in [{classes.min(initial=0)}, "
                    f"{classes.max(initial=0)}] for {size} samples of a {num_classes}-class model"
                )
            offset = 0
            for job, _, take in segments:
                votes = np.bincount(classes[offset : offset + take], minlength=num_classes)
                offset += take
                job.in_flight -= take
                if job.on_classified is not None:
                    job.on_classified(take)
                if job.done:
                    continue
                job.counts += votes
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
            self._free.put_nowait(buffer)
