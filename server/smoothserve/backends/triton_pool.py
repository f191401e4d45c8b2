"""Triton endpoints: connection, health, least-outstanding-work choice and backoff.

An endpoint that fails a call is taken out and revived in the background, with exponential
backoff between probes. When every endpoint is out, a request probes them once at once
(a refused connection answers in milliseconds), so the caller gets UNAVAILABLE promptly
while Triton is down and the first request after it is back succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import KeepAliveOptions
from tritonclient.utils import InferenceServerException

from ..errors import Unavailable

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's limit, which tritonclient and tritonserver both set


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's defaults, plus a private subchannel pool so that a reconnect opens a
    fresh TCP connection instead of reusing one stuck in gRPC's own reconnect backoff."""
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


class Endpoint:
    """One Triton server. ``client`` is usable only while ``up``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: triton_aio.InferenceServerClient | None = None
        self.up = False
        self.outstanding = 0  # samples sent and not yet answered
        self.failures = 0
        self.last_error = "never connected"
        self.lock = asyncio.Lock()
        self.reviver: asyncio.Task | None = None
        self.last_probe = -1.0


# Called with a fresh client before an endpoint is marked up (e.g. to register shared memory).
OnConnect = Callable[[triton_aio.InferenceServerClient], Awaitable[None]]


class EndpointPool:
    def __init__(
        self,
        urls: tuple[str, ...] | list[str],
        probe_timeout_s: float = 2.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        on_connect: OnConnect | None = None,
    ) -> None:
        if not urls:
            raise ValueError("no Triton endpoint given")
        self.endpoints = [Endpoint(url) for url in urls]
        self.probe_timeout_s = probe_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.on_connect = on_connect
        self._turn = itertools.count()
        self._closed = False

    async def connect_all(self) -> list[Endpoint]:
        """Try every endpoint once; the ones that fail start reviving. Returns those up."""
        await asyncio.gather(*(self.connect(e) for e in self.endpoints))
        for endpoint in self.endpoints:
            if not endpoint.up:
                self._start_reviver(endpoint)
        return [e for e in self.endpoints if e.up]

    async def connect(self, endpoint: Endpoint) -> bool:
        """(Re)open the channel and check that the server is live; True when up."""
        async with endpoint.lock:
            if endpoint.up or self._closed:
                return endpoint.up
            endpoint.last_probe = time.monotonic()
            if endpoint.client is not None:
                with contextlib.suppress(Exception):
                    await endpoint.client.close()
            client = triton_aio.InferenceServerClient(endpoint.url, channel_args=channel_args())
            try:
                # live, not ready: with strict readiness one unloaded model makes the whole
                # server unready, while the others still serve; models are checked per call
                if not await client.is_server_live(client_timeout=self.probe_timeout_s):
                    raise Unavailable("server is not live")
                if self.on_connect is not None:
                    await self.on_connect(client)
            except (InferenceServerException, Unavailable, OSError) as exc:
                endpoint.last_error = describe(exc)
                with contextlib.suppress(Exception):
                    await client.close()
                endpoint.client = None
                return False
            endpoint.client, endpoint.up, endpoint.failures = client, True, 0
            log.info("Triton %s is up", endpoint.url)
            return True

    def mark_down(self, endpoint: Endpoint, error: str) -> None:
        endpoint.last_error = error
        if endpoint.up:
            endpoint.up = False
            log.warning("Triton %s taken out: %s", endpoint.url, error)
        self._start_reviver(endpoint)

    def _start_reviver(self, endpoint: Endpoint) -> None:
        if not self._closed and (endpoint.reviver is None or endpoint.reviver.done()):
            endpoint.reviver = asyncio.create_task(self._revive(endpoint))

    async def _revive(self, endpoint: Endpoint) -> None:
        while not endpoint.up and not self._closed:
            endpoint.failures += 1
            delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (endpoint.failures - 1))
            await asyncio.sleep(delay)
            await self.connect(endpoint)

    async def pick(self, exclude: set[Endpoint]) -> Endpoint:
        """The up endpoint with the least outstanding work; when none is up, probe them all
        at once. Raises Unavailable when no endpoint outside ``exclude`` answers."""
        candidates = [e for e in self.endpoints if e.up and e not in exclude]
        if not candidates:
            down = [e for e in self.endpoints if not e.up and e not in exclude]
            # a probe less than 50 ms old is as good as a new one
            fresh = [e for e in down if time.monotonic() - e.last_probe > 0.05]
            await asyncio.gather(*(self.connect(e) for e in fresh))
            candidates = [e for e in self.endpoints if e.up and e not in exclude]
        if not candidates:
            raise Unavailable(self.summary())
        turn = next(self._turn)
        n = len(candidates)
        return min(candidates, key=lambda e: (e.outstanding, (candidates.index(e) - turn) % n))

    def summary(self) -> str:
        states = "; ".join(f"{e.url}: {e.last_error}" for e in self.endpoints)
        return f"no Triton endpoint is available ({states})"

    async def close(self) -> None:
        self._closed = True
        for endpoint in self.endpoints:
            if endpoint.reviver:
                endpoint.reviver.cancel()
            if endpoint.client is not None:
                with contextlib.suppress(Exception):
                    await endpoint.client.close()
            endpoint.up, endpoint.client = False, None


def describe(exc: BaseException) -> str:
    if isinstance(exc, InferenceServerException):
        status = (exc.status() or "").replace("StatusCode.", "")
        return f"{status}: {exc.message()}" if status else str(exc.message())
    return str(exc) or type(exc).__name__
