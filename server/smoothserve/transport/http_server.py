"""An aiohttp application on an open port, with the limits such a port needs: the REST door
(``oip_rest.RestServer``) and the metrics page (``metrics.MetricsServer``) both run on it.

- Header timeout: a connection that has not sent a complete request head within
  ``header_timeout`` seconds of connecting (or of its previous response) is closed; dripping
  header lines does not reset the clock. Also bounds the TLS handshake.
- Body timeout: a request's body must arrive whole within ``body_timeout`` seconds of its head,
  else the connection is closed (and the handler cancelled).
- Connection cap: past ``max_connections`` open connections, a new one closes the oldest
  connection waiting for a request (idle keep-alive or still sending its head); if every one is
  busy with a request, the new connection is closed at once. The cap is also held below the
  process's open-file limit (``FD_RESERVE`` descriptors kept for the rest of the server), so a
  flood of connections cannot starve the server of file descriptors; should accept() fail all
  the same, asyncio's traceback per attempt becomes a throttled line.
- A client that disconnects cancels its handler (aiohttp's ``handler_cancellation``).
- Quiet logs: malformed HTTP, disconnects and timeouts give at most one line per
  ``LOG_INTERVAL_S`` per door, without a traceback, naming how many were not logged;
  a handler's own exception keeps its traceback, under the same throttle.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
REST_MAX_CONNECTIONS = 1_000
METRICS_MAX_CONNECTIONS = 64
LOG_INTERVAL_S = 10.0
# Listen backlog, and so (asyncio) the most connections accepted in one turn of the loop: a
# burst can hold a few such batches of descriptors before the cap closes them.
BACKLOG = 128
# Descriptors a door's cap leaves below the open-file limit: the rest of the server (about 20
# on a quiet one, the metrics door's 64) and accept bursts, so that accept() never fails for
# want of descriptors. Under the common 1,024 limit the REST cap is 512.
FD_RESERVE = 128 + 3 * BACKLOG
ACCEPT_FAILED = "socket.accept() out of system resource"
SHUTDOWN_TIMEOUT_S = 5.0  # app.py drains requests before it stops the doors

# What a client can cause: logged as one line, never with a traceback.
CLIENT_FAULTS = (HttpProcessingError, ConnectionError, RequestPayloadError, asyncio.TimeoutError)


@dataclass(frozen=True)
class HttpLimits:
    header_timeout: float = HEADER_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    max_connections: int = REST_MAX_CONNECTIONS


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to leave ``FD_RESERVE`` of the open-file limit (at least 8)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft - FD_RESERVE))


class _Throttle:
    """At most one line per ``interval`` seconds; counts the lines it held back."""

    def __init__(self, interval: float = LOG_INTERVAL_S) -> None:
        self.interval, self._last, self._held = interval, -float("inf"), 0

    def suppressed(self, now: float) -> int | None:
        """How many lines were held back since the last one, if one may be logged now."""
        if now - self._last < self.interval:
            self._held += 1
            return None
        held, self._held, self._last = self._held, 0, now
        return held


class _Handler(RequestHandler):
    """aiohttp's connection protocol, reporting to its door (cap, body timer, quiet logs)."""

    def __init__(self, manager: web.Server, door: HttpDoor, **kwargs) -> None:
        super().__init__(manager, **kwargs)
        self.door = door
        self.body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.door._opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.door._closed(self)
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        super().connection_lost(exc)

    def waiting_for_request(self) -> bool:
        """Not in a request's handler: idle, still sending a request's head, or just accepted
        (a burst of accepted connections has not run a line of aiohttp's loop yet)."""
        return not self._request_in_progress and not self._force_close

    def log_exception(self, *args, **kwargs) -> None:
        exc = kwargs.get("exc_info")
        try:
            message = str(args[0]) % args[1:] if args else "error"
        except (TypeError, ValueError):
            message = str(args[0])
        if isinstance(exc, CLIENT_FAULTS):
            detail = " ".join(str(exc).split())[:160]  # one line: aiohttp's span several
            self.door.note(f"{message}: {type(exc).__name__}: {detail}")
        else:
            self.door.note(message, exc_info=exc or True)


class HttpDoor:
    """One aiohttp ``app`` served on one port within ``limits``; ``name`` labels its log lines."""

    def __init__(self, app: web.Application, name: str, limits: HttpLimits = HttpLimits()) -> None:
        self.app, self.name, self.limits = app, name, limits
        self.max_connections = connection_cap(limits.max_connections)
        self._open: dict[_Handler, None] = {}  # oldest first
        self._throttle = _Throttle()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on ``host:port`` (0 picks a port); return the bound port."""
        if self.max_connections < self.limits.max_connections:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.warning("%s: at most %d connections, not %d: the open-file limit is %d (ulimit -n)",
                        self.name, self.max_connections, self.limits.max_connections, soft)  # fmt: skip
        handler_args = dict(
            keepalive_timeout=self.limits.header_timeout,
            logger=log,
            access_log=None,
        )
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S, **handler_args
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        server.request_factory = self._timed_body(server.request_factory)
        loop = asyncio.get_running_loop()

        def protocol() -> _Handler:
            return _Handler(server, self, loop=loop, **handler_args)

        self._quiet_accept_failures(loop)
        self._server = await loop.create_server(
            protocol, host, port, ssl=tls, backlog=BACKLOG, reuse_address=True,
            ssl_handshake_timeout=self.limits.header_timeout if tls else None,
        )  # fmt: skip
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # no new connections
        if self._runner is not None:
            await self._runner.cleanup()  # idle ones closed, handlers given SHUTDOWN_TIMEOUT_S
        for handler in list(self._open):
            handler.force_close()

    def note(self, message: str, exc_info: object = None) -> None:
        """One throttled line about what a client did (or a handler's own error)."""
        held = self._throttle.suppressed(asyncio.get_running_loop().time())
        if held is not None:
            more = f" ({held} similar lines not logged)" if held else ""
            log.warning("%s: %s%s", self.name, message, more, exc_info=exc_info)

    def _quiet_accept_failures(self, loop: asyncio.AbstractEventLoop) -> None:
        """asyncio logs a traceback each time accept() on our port runs out of descriptors
        (retrying every second); one throttled line instead. Other reports pass through."""
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
            listening = self._server.sockets if self._server is not None else ()
            if context.get("message") == ACCEPT_FAILED and any(
                s.fileno() == getattr(context.get("socket"), "fileno", lambda: -2)()
                for s in listening
            ):
                self.note(f"cannot accept connections: {context.get('exception')}")
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    def _opened(self, handler: _Handler) -> None:
        self._open[handler] = None
        if len(self._open) <= self.max_connections:
            return
        victim = next((h for h in self._open if h.waiting_for_request()), handler)
        self.note(f"{len(self._open) - 1} connections open, at the cap of "
                  f"{self.max_connections}: closed {'the new' if victim is handler else 'the oldest idle'} one")  # fmt: skip
        self._open.pop(victim, None)
        victim.force_close()

    def _closed(self, handler: _Handler) -> None:
        self._open.pop(handler, None)

    def _timed_body(self, make_request: Callable) -> Callable:
        """Wrap the request factory: a request's body gets ``body_timeout`` seconds to arrive."""
        timeout = self.limits.body_timeout

        def factory(message, payload, protocol, writer, task):
            if isinstance(protocol, _Handler):
                if protocol.body_timer is not None:
                    protocol.body_timer.cancel()
                    protocol.body_timer = None
                if not payload.is_eof():
                    timer = protocol._loop.call_later(timeout, self._body_late, protocol, payload)
                    protocol.body_timer = timer
                    payload.on_eof(timer.cancel)
            return make_request(message, payload, protocol, writer, task)

        return factory

    def _body_late(self, protocol: _Handler, payload) -> None:
        protocol.body_timer = None
        if payload.is_eof() or payload.exception() is not None or protocol.transport is None:
            return
        peer = protocol.transport.get_extra_info("peername")
        self.note(f"closed a connection from {peer[0] if peer else '?'}: the request body "
                  f"took over {self.limits.body_timeout:g} s")  # fmt: skip
        protocol.force_close()


__all__ = [
    "BODY_TIMEOUT_S",
    "HEADER_TIMEOUT_S",
    "METRICS_MAX_CONNECTIONS",
    "REST_MAX_CONNECTIONS",
    "HttpDoor",
    "HttpLimits",
    "connection_cap",
]
