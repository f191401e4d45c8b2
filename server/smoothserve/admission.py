"""Admission control: refuse work at the door instead of queueing it without bound.

A Predict request is admitted with its whole sample budget (n0 + n) or not at all: when the
samples already admitted plus its own would exceed ``max_samples_in_flight``, or
``max_concurrent_requests`` are already being served, it gets RESOURCE_EXHAUSTED at once.
While the server drains for shutdown every new request gets UNAVAILABLE. Everything runs on
the event loop, so plain integers need no lock.
"""

from __future__ import annotations

import asyncio

from .errors import ResourceExhausted, ShuttingDown
from .metrics import Metrics


class Ticket:
    """One admitted request's hold on the budget; ``release`` gives samples back as they are
    classified. The ticket owns ``smoothserve_samples_abandoned``: what it still holds when
    closed was admitted and never classified for its request (cancelled, past its deadline or
    failed)."""

    def __init__(self, admission: Admission, samples: int, model: str) -> None:
        self._admission = admission
        self.held = samples
        self.model = model
        self.closed = False

    def release(self, samples: int) -> None:
        samples = min(samples, self.held)
        self.held -= samples
        self._admission._give_back(samples)

    def finish(self) -> None:
        """The request is answered: release what it did not need (a sequential procedure that
        stopped early) without counting it as abandoned, and leave."""
        self.release(self.held)
        self.close()

    def close(self) -> int:
        """Release what is left, count it as abandoned, and leave; return it. Idempotent."""
        if self.closed:
            return 0
        self.closed = True
        left = self.held
        self.release(left)
        if left:
            self._admission.metrics.samples_abandoned.labels(self.model).inc(left)
        self._admission._leave()
        return left


class Admission:
    def __init__(self, max_samples: int, max_requests: int, metrics: Metrics) -> None:
        self.max_samples = max_samples
        self.max_requests = max_requests
        self.metrics = metrics
        metrics.samples_in_flight_limit.set(max_samples)
        self.samples = 0
        self.requests = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def admit(self, samples: int, model: str) -> Ticket:
        if self.draining:
            self.metrics.rejected.labels("shutting_down").inc()
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if self.requests >= self.max_requests:
            self.metrics.rejected.labels("concurrent_requests").inc()
            raise ResourceExhausted(
                f"{self.requests} requests in progress, the limit is {self.max_requests}; retry later"
            )
        if self.samples + samples > self.max_samples:
            self.metrics.rejected.labels("samples_in_flight").inc()
            raise ResourceExhausted(
                f"{samples} more noisy samples would exceed the server's limit of "
                f"{self.max_samples} in flight ({self.samples} admitted); retry later"
            )
        self.samples += samples
        self.requests += 1
        self._idle.clear()
        self.metrics.samples_in_flight.set(self.samples)
        return Ticket(self, samples, model)

    def _give_back(self, samples: int) -> None:
        self.samples -= samples
        self.metrics.samples_in_flight.set(self.samples)

    def _leave(self) -> None:
        self.requests -= 1
        if self.requests == 0:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests; wait up to ``timeout`` s for admitted ones. True if all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
