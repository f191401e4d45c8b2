from __future__ import annotations

import asyncio
import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from smoothcert.model_config import ModelConfigError, SmoothModelConfig

from .. import repository
from ..repository import ModelStates, ModelVersion

T = TypeVar("T")
DEFAULT_LOAD_TIMEOUT_S = 60.0  # --model-load-timeout-s
NoisySegment = tuple[np.ndarray, int, int]  # (clean input (C, H, W), count, seed < 2**63)
# (clean input, the job's noise key (4 words < 2**63), index of the first sample, samples)
CountSegment = tuple[np.ndarray, tuple[int, ...], int, int]


class RemoteSampling(NamedTuple):
    """How a backend that returns votes (``count_noisy``) wants a model's work cut."""

    samples_per_call: int  # samples per scheduler batch (one call)
    block: int  # segments start at multiples of this many samples where the cut allows


class Backend(ABC):
    """Runs base networks. ``classify`` is called concurrently from the event loop.

    A backend whose ``generates_noise`` is True draws the noise itself, on its device: the
    scheduler then calls ``classify_noisy`` instead of ``classify`` and fills no host buffers.
    A backend whose ``remote_sampling(model)`` is not None draws the noise, runs the network and
    counts the votes where the network runs: the scheduler calls ``count_noisy``.
    """

    name: str
    model_repo: Path  # a repository backend's (``start`` scans it)
    generates_noise: bool = False
    uses_host_cpu: bool = False  # the networks run on this process's CPU cores
    # Loads models from the repository one at a time (``load_model``/``unload_model``), so the
    # engine can load and unload them at runtime (--model-control-mode); a backend that
    # discovers its models elsewhere (Triton) answers ``connect`` with them instead.
    model_control: bool = False

    async def start(self) -> ModelStates:
        """Load or discover models: those ready to serve, and why the others failed.

        A model is ready only once its network was checked against its config (input shape,
        output name, one logit per label), so no certificate comes from a mismatched pair.
        A repository backend loads each model of its repository with ``load_model``, as the
        engine does at runtime."""
        discovered = await self.connect()
        if discovered is not None:
            return discovered
        states = repository.scan(self.model_repo)
        for name in list(states.ready):
            await self.load_model(states, name)
        return states

    async def connect(self) -> ModelStates | None:
        """Get ready to load models; a backend that discovers its models (Triton) returns them,
        a repository backend None: the engine then loads each one with ``load_model``."""
        return None

    async def load_model(self, states: ModelStates, name: str) -> None:
        """Load every version of ``states.ready[name]``; on a failure, unload those loaded and
        fail the model in ``states`` (``states.fail``) with the reason."""
        raise NotImplementedError(f"backend {self.name!r} does not load models one by one")

    def unload_model(self, model: ModelVersion) -> None:
        """Drop the network of ``model`` (its ``key``); no request uses it any more."""
        return None

    @abstractmethod
    async def classify(self, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        """Class index (int64) of the base network f for each row of ``batch`` (N, C, H, W)."""

    async def classify_noisy(self, model: ModelVersion, segments: list[NoisySegment]) -> np.ndarray:
        """Class indices of f on ``count`` draws of x + N(0, sigma^2 I) per segment, sigma being
        ``model.config.sigma``; concatenated in segment order. Each segment's noise is drawn on
        the device and is a function of its whole seed alone."""
        raise NotImplementedError(f"backend {self.name!r} does not generate noise")

    def remote_sampling(self, model: ModelVersion) -> RemoteSampling | None:
        """Not None when the backend draws the noise, runs the network and counts the votes of
        ``model`` remotely (Triton's sampler): the scheduler then calls ``count_noisy``."""
        return None

    async def count_noisy(
        self, model: ModelVersion, segments: list[CountSegment]
    ) -> list[np.ndarray]:
        """Votes (int64, one per class) of f on samples [start, start + count) of each segment's
        job, x + N(0, sigma^2 I) with sigma ``model.config.sigma``; the noise of sample i is a
        function of the job's key and i alone. Raises BadState for votes that do not sum to the
        samples asked for."""
        raise NotImplementedError(f"backend {self.name!r} does not count votes remotely")

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def probe_batch(config: SmoothModelConfig, rows: int = 2) -> np.ndarray:
    """A small batch of clean inputs in the model's pixel range, to check a network at load."""
    low, high = config.value_range
    return np.full((rows, *config.input_shape), (low + high) / 2, np.float32)


def check_logits(config: SmoothModelConfig, logits: np.ndarray, rows: int) -> None:
    """The network must give one logit per label: otherwise votes for the classes the config
    does not name would be lost, and a certificate built from the rest would be false."""
    if logits.shape != (rows, config.num_classes):
        raise ModelConfigError(
            f"the network outputs logits of shape {list(logits.shape[1:])} per input, but the "
            f"config has {config.num_classes} labels"
        )


def first_line(error: BaseException, limit: int = 300) -> str:
    """A short, one-line description of ``error`` for a log line or a status message."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class LoadTimeout(Exception):
    """Loading a model (building its network, running the probe batch) took too long."""


async def within(
    seconds: float, work: Callable[[], T], stop: Callable[[], None] | None = None
) -> T:
    """``work()`` in a thread of its own, for at most ``seconds``; past them, ``stop()`` (if
    given) asks the work to end and LoadTimeout is raised.

    A thread cannot be killed: work that ignores ``stop`` (ONNX Runtime building a session)
    runs on, abandoned, until it ends. It is a daemon thread, so it never keeps the process
    from exiting, and the event loop goes on meanwhile (the other models load and serve)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if done.done():  # the wait is over: a late result is dropped
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="model-load", daemon=True).start()
    try:
        return await asyncio.wait_for(done, seconds)  # cancels ``done``: a late result is dropped
    except TimeoutError:
        if stop is not None:
            stop()
        raise LoadTimeout(f"did not finish within {seconds:g} s") from None
