"""How a batch's noisy samples are made and classified: on the host, or on the backend's device.

The scheduler cuts batches of segments (consecutive samples of one job); a ``NoiseStrategy``,
chosen once per scheduler, turns a batch into class indices. Either way every sample is
x + sigma * eps with eps ~ N(0, I) from an ARS-5 or PCG64 (or, on a GPU, Philox) generator
keyed from the request's own generator, and no two samples share noise.

- ``HostNoise``, for backends that take a batch (``classify``): each job gets a
  ``NoiseStream`` (ARS-5 or PCG64, ``noise.py``), so the noise of sample i depends only on the
  job's key and i, and a seeded request gets the same counts however it is batched. Batches are filled into host buffers
  one at a time, in cut order, by one fill thread (each fill's chunks spread over
  ``noise_threads`` threads), then sent to the backend.
- ``DeviceNoise``, for backends with ``generates_noise``: per segment, a seed drawn from the
  job's generator in cut order; the backend builds x + sigma * eps on its device from that
  seed alone. A seeded request is reproducible when it is cut into the same segments.
- ``RemoteCounts``, for backends whose ``remote_sampling(model)`` is set (Triton with a sampler
  model): per job a key of four 63-bit words drawn from the request's generator; each segment
  sends the clean input, the key and its sample range [start, start + count), and the backend
  returns the segment's vote counts. The noise of sample i is a function of the key and i
  (``triton_sampler/model.py``), so a seeded request gets the same counts however it is cut.

A job may ask for floating-point-sound noise (``sound_noise.py``): its x is then the input's
lattice indices and ``HostNoise`` fills its rows with ``fill_sound_copies``; a segment whose
draw was undecided is reported in ``Classified.refused`` and its votes must not count.
``DeviceNoise`` and ``RemoteCounts`` refuse sound jobs.

At most ``slots`` batches are in flight (the pipeline depth): the scheduler takes a slot
before cutting a batch and gives it back once the batch's classes are in.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from .backends.base import Backend, RemoteSampling
from .errors import FailedPrecondition
from .noise import NoiseStream, noise_stream
from .repository import ModelVersion
from .sound_noise import SoundLattice, fill_sound_copies, sound_lattice

Source = TypeVar("Source")


@dataclass(frozen=True, slots=True)
class Segment(Generic[Source]):
    """``count`` consecutive samples of one job, the first being its sample ``start``."""

    x: np.ndarray  # the clean input; for sound noise its lattice indices
    noise: Source  # the job's noise source, as the strategy's ``source`` made it
    start: int
    count: int


class Classified(NamedTuple):
    classes: np.ndarray | None  # one class index per sample, in segment order
    backend_seconds: float  # the backend's call alone, without the host fill
    refused: tuple[int, ...] = ()  # segments (positions) whose sound draws were undecided
    counts: list[np.ndarray] | None = None  # instead of classes: votes per segment


class NoiseStrategy(ABC, Generic[Source]):
    """Noise and classification of the batches of one model; ``slots`` batches in flight."""

    supports_sound_noise = False
    generator = "device"  # what draws the noise, as GetModelInfo reports it
    batch_size: int | None = None  # samples per batch, when the strategy sets it
    quantum = 1  # segments start at multiples of this where the cut allows

    def __init__(self, model: ModelVersion, backend: Backend, slots: int) -> None:
        self.model = model
        self.backend = backend
        self._slots = asyncio.Semaphore(slots)

    async def acquire(self) -> None:
        """Wait for a free slot: one per batch in flight."""
        await self._slots.acquire()

    def release(self) -> None:
        self._slots.release()

    @abstractmethod
    def source(self, rng: np.random.Generator, sound: bool = False) -> Source:
        """A new job's noise source, keyed from the request's generator; ``sound``: the
        floating-point-sound noise of ``sound_noise.py``."""

    @abstractmethod
    async def classify(self, segments: list[Segment[Source]]) -> Classified:
        """Class indices of the batch's noisy samples. Called while holding a slot, in a task
        per batch started in cut order: whatever it takes from a job's source it takes before
        its first await, so in cut order."""

    def close(self) -> None:
        """Stop the strategy's threads; batches still running are abandoned."""


class HostNoise(NoiseStrategy[NoiseStream]):
    """Noise drawn on the host into one buffer per slot, then ``backend.classify``."""

    supports_sound_noise = True

    def __init__(
        self,
        model: ModelVersion,
        backend: Backend,
        slots: int,
        batch_size: int,
        noise_threads: int = 1,
        generator: str = "pcg64",
    ) -> None:
        super().__init__(model, backend, slots)
        self.generator = generator
        shape = (batch_size, *model.config.input_shape)
        self._buffers = [np.empty(shape, np.float32) for _ in range(slots)]
        # One thread orders the fills; the pool draws each fill's chunks in parallel.
        self._fill_thread = ThreadPoolExecutor(1, thread_name_prefix=f"fill-{model.name}")
        self._pool = (
            ThreadPoolExecutor(noise_threads, thread_name_prefix=f"noise-{model.name}")
            if noise_threads > 1
            else None
        )

    def source(self, rng: np.random.Generator, sound: bool = False) -> NoiseStream:
        if sound:
            self.lattice()  # built (and cached) before the job's first batch
        c = self.model.config
        return noise_stream(rng, c.input_shape, self.generator, sound, c.family)

    def lattice(self) -> SoundLattice:
        c = self.model.config
        return sound_lattice(c.sigma, *c.value_range)

    async def classify(self, segments: list[Segment[NoiseStream]]) -> Classified:
        buffer = self._buffers.pop()  # the caller holds a slot, so one is free
        try:
            # Submitted before the first await: the fill thread fills batches in cut order.
            fill = asyncio.get_running_loop().run_in_executor(
                self._fill_thread, self._fill, buffer, segments
            )
            size, refused = await fill
            started = time.perf_counter()
            classes = await self.backend.classify(self.model, buffer[:size])
            return Classified(classes, time.perf_counter() - started, refused)
        finally:
            self._buffers.append(buffer)

    def _fill(
        self, buffer: np.ndarray, segments: list[Segment[NoiseStream]]
    ) -> tuple[int, tuple[int, ...]]:
        """Fill the batch's rows; returns their number and the segments with undecided draws."""
        sigma = self.model.config.sigma
        work: list[tuple[int, np.ndarray, np.ndarray, NoiseStream, Any]] = []
        offset = 0
        for position, segment in enumerate(segments):
            rows = buffer[offset : offset + segment.count]
            for piece, generator in segment.noise.pieces(rows, segment.start):
                work.append((position, piece, segment.x, segment.noise, generator))
            offset += segment.count
        lattice = self.lattice() if any(w[3].sound for w in work) else None

        def fill(item: tuple[int, np.ndarray, np.ndarray, NoiseStream, Any]) -> int:
            _, piece, x, stream, generator = item
            if stream.sound:
                return fill_sound_copies(piece, x, lattice, generator)
            stream.fill(piece, x, sigma, generator)
            return 0

        if self._pool is None or len(work) == 1:
            undecided = [fill(item) for item in work]
        else:
            undecided = list(self._pool.map(fill, work))
        refused = sorted({item[0] for item, count in zip(work, undecided, strict=True) if count})
        return offset, tuple(refused)

    def close(self) -> None:
        self._fill_thread.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class DeviceNoise(NoiseStrategy[np.random.Generator]):
    """Noise drawn by the backend on its device (``classify_noisy``); no host buffers."""

    def source(self, rng: np.random.Generator, sound: bool = False) -> np.random.Generator:
        if sound:
            raise FailedPrecondition(
                f"backend {self.backend.name!r} draws the noise on its device, which has no "
                "floating-point-sound mode; sound noise needs a host-noise backend (onnxruntime, "
                "triton)"
            )
        return rng  # each segment's seed is drawn from the request's generator

    async def classify(self, segments: list[Segment[np.random.Generator]]) -> Classified:
        noisy = [(s.x, s.count, int(s.noise.integers(2**63))) for s in segments]
        started = time.perf_counter()
        classes = await self.backend.classify_noisy(self.model, noisy)
        return Classified(classes, time.perf_counter() - started)


class RemoteCounts(NoiseStrategy[tuple[int, ...]]):
    """Noise, network and votes where the network runs (``count_noisy``): only the clean input,
    the job's key and sample ranges go out, and K counts per segment come back."""

    generator = "remote"

    def __init__(
        self, model: ModelVersion, backend: Backend, slots: int, remote: RemoteSampling
    ) -> None:
        super().__init__(model, backend, slots)
        self.batch_size = remote.samples_per_call
        self.quantum = remote.block

    def source(self, rng: np.random.Generator, sound: bool = False) -> tuple[int, ...]:
        if sound:
            raise FailedPrecondition(
                f"model {self.model.name!r} is sampled by Triton's sampler, which has no "
                "floating-point-sound mode; serve it without the sampler for sound noise"
            )
        return tuple(int(word) for word in rng.integers(2**63, size=4))  # the job's key

    async def classify(self, segments: list[Segment[tuple[int, ...]]]) -> Classified:
        asked = [(s.x, s.noise, s.start, s.count) for s in segments]
        started = time.perf_counter()
        counts = await self.backend.count_noisy(self.model, asked)
        return Classified(None, time.perf_counter() - started, counts=counts)


def noise_strategy(
    model: ModelVersion,
    backend: Backend,
    batch_size: int,
    pipeline_depth: int,
    noise_threads: int = 1,
    generator: str = "pcg64",
) -> NoiseStrategy[Any]:
    """Remote counts when the backend samples the model where it runs (``remote_sampling``),
    device noise when it draws the noise (``generates_noise``), host noise otherwise."""
    remote = backend.remote_sampling(model)
    if remote is not None:
        return RemoteCounts(model, backend, pipeline_depth, remote)
    if backend.generates_noise:
        return DeviceNoise(model, backend, pipeline_depth)
    return HostNoise(model, backend, pipeline_depth, batch_size, noise_threads, generator)
