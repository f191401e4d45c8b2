"""Checks that need the call's context, and a bound on concurrent health Watch streams.

A grpc.aio interceptor sees only the method name and the metadata, not the peer, and it
cannot hold anything for the length of a call. What needs either wraps the handler's
behaviour instead: ``guarded`` runs a check when the call arrives, ``HealthWatchLimit``
holds a slot while a Watch stream is open.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

import grpc

WATCH_METHOD = "/grpc.health.v1.Health/Watch"
# Health needs no token (transport/auth.py), so anyone who reaches the port can open Watch
# streams; each holds tens of kilobytes until the client goes away. Probes use Check.
MAX_HEALTH_WATCHES = 100
TOO_MANY_WATCHES = "too many health Watch streams are open; use Check, or retry later"

Check = Callable[[grpc.aio.ServicerContext], Awaitable[None]]
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def kind_of(handler: grpc.RpcMethodHandler) -> str:
    return next(k for k in KINDS if getattr(handler, k) is not None)


def before(behavior, first: Callable):
    """``behavior`` with its input replaced by ``await first(input, context)``; keeps the kind
    of callable (coroutine or async generator) grpc.aio dispatches on."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request, context: grpc.aio.ServicerContext):
            async for response in behavior(await first(request, context), context):
                yield response

        return stream

    async def call(request, context: grpc.aio.ServicerContext):
        return await behavior(await first(request, context), context)

    return call


async def _parsed(requests: AsyncIterable[bytes], parse: Callable) -> AsyncIterator:
    async for request in requests:
        yield parse(request)


def guarded(handler: grpc.RpcMethodHandler, check: Check) -> grpc.RpcMethodHandler:
    """``handler`` that awaits ``check(context)`` (which aborts to refuse) before anything else.

    The request bytes are parsed only once the check has passed, so a refused caller never
    reaches the protobuf parser.
    """
    parse = handler.request_deserializer or (lambda request: request)

    if handler.request_streaming:

        async def first(requests, context: grpc.aio.ServicerContext):
            await check(context)
            return _parsed(requests, parse)

    else:

        async def first(request, context: grpc.aio.ServicerContext):
            await check(context)
            return parse(request)

    kind = kind_of(handler)
    return handler._replace(
        request_deserializer=None, **{kind: before(getattr(handler, kind), first)}
    )


class _Slots:
    """A count of open calls with a ceiling; single event loop, so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    async def take(self, context: grpc.aio.ServicerContext, details: str) -> None:
        if self.used >= self.limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        self.used += 1

    def give(self) -> None:
        self.used -= 1


def _holding(behavior, slots: _Slots, details: str):
    """``behavior`` holding one of ``slots`` from its start to its end (cancellation included)."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request, context: grpc.aio.ServicerContext):
            await slots.take(context, details)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                slots.give()

        return stream

    async def call(request, context: grpc.aio.ServicerContext):
        await slots.take(context, details)
        try:
            return await behavior(request, context)
        finally:
            slots.give()

    return call


class HealthWatchLimit(grpc.aio.ServerInterceptor):
    """At most ``limit`` concurrent grpc.health.v1 Watch streams; more get RESOURCE_EXHAUSTED."""

    def __init__(self, limit: int = MAX_HEALTH_WATCHES) -> None:
        self._slots = _Slots(limit)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method != WATCH_METHOD:
            return handler
        kind = kind_of(handler)
        behavior = _holding(getattr(handler, kind), self._slots, TOO_MANY_WATCHES)
        return handler._replace(**{kind: behavior})


__all__ = ["MAX_HEALTH_WATCHES", "HealthWatchLimit", "guarded"]
