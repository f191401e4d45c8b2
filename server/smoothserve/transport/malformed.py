"""Bytes that do not parse as the method's request message get INVALID_ARGUMENT.

Left alone, grpc.aio answers a protobuf ``DecodeError`` with UNKNOWN; this interceptor
wraps every handler's request deserializer so a malformed message becomes a clear status,
for SmoothServe and the health and reflection services alike. A method may also have a
``precheck`` of its raw bytes, run before they are parsed, that refuses with
InvalidArgument what would be costly to build (a shape of millions of dimensions). A method
may also have an ``on_refused`` callback (Predict and ModelInfer: ``refused_unread``, which
counts and logs the request as any other), called with the client's request ID, if any,
before the refusal is sent; it returns the ID the refusal then carries back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from ..errors import REQUEST_ID_KEY, InvalidArgument
from .limits import before, kind_of

DETAILS = "the request is not a valid protobuf message for {method}"
Precheck = Callable[[bytes], None]
OnRefused = Callable[[str | None], str]  # the client's request ID -> the one logged


class _Refused:
    """Stands in for a request that failed to deserialize or its precheck."""

    def __init__(self, details: str | None = None) -> None:
        self.details = details


def _safe(
    deserialize: Callable[[bytes], object] | None, precheck: Precheck | None
) -> Callable[[bytes], object] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> object:
        try:
            if precheck is not None:
                precheck(data)
            return deserialize(data)
        except InvalidArgument as refused:
            return _Refused(str(refused))
        except Exception:  # DecodeError, but a deserializer may raise anything on junk
            return _Refused()

    return parse


def _check_one(details: str, on_refused: OnRefused | None = None):
    async def check(request, context: grpc.aio.ServicerContext):
        if isinstance(request, _Refused):
            metadata = ()
            if on_refused is not None:
                given = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY)
                rid = on_refused(given if isinstance(given, str) else None)
                metadata = ((REQUEST_ID_KEY, rid),)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details or details,
                                metadata)  # fmt: skip
        return request

    return check


def _check_each(details: str):
    async def check(requests: AsyncIterator, context: grpc.aio.ServicerContext):
        async def each():
            async for request in requests:
                if isinstance(request, _Refused):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details or details)
                yield request

        return each()

    return check


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, prechecks: dict[str, Precheck] | None = None,
        on_refused: dict[str, OnRefused] | None = None,
    ) -> None:  # fmt: skip
        self.prechecks = prechecks or {}  # full method name -> check of its raw request
        self.on_refused = on_refused or {}  # full method name -> what a refusal also does

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        details = DETAILS.format(method=handler_call_details.method)
        method = handler_call_details.method
        check = (_check_each(details) if handler.request_streaming
                 else _check_one(details, self.on_refused.get(method)))  # fmt: skip
        kind = kind_of(handler)
        return handler._replace(
            request_deserializer=_safe(
                handler.request_deserializer, self.prechecks.get(handler_call_details.method)
            ),
            **{kind: before(getattr(handler, kind), check)},
        )
