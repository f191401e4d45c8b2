"""Bytes that do not parse as the method's request message get INVALID_ARGUMENT.

Left alone, grpc.aio answers a protobuf ``DecodeError`` with UNKNOWN; this interceptor
wraps every handler's request deserializer so a malformed message becomes a clear status,
for SmoothServe and the health and reflection services alike. A method may also have a
``precheck`` of its raw bytes, run before they are parsed, that refuses with
InvalidArgument what would be costly to build (a shape of millions of dimensions).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from ..errors import InvalidArgument
from .limits import before, kind_of

DETAILS = "the request is not a valid protobuf message for {method}"
Precheck = Callable[[bytes], None]


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


def _check_one(details: str):
    async def check(request, context: grpc.aio.ServicerContext):
        if isinstance(request, _Refused):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details or details)
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
    def __init__(self, prechecks: dict[str, Precheck] | None = None) -> None:
        self.prechecks = prechecks or {}  # full method name -> check of its raw request

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        details = DETAILS.format(method=handler_call_details.method)
        check = _check_each(details) if handler.request_streaming else _check_one(details)
        kind = kind_of(handler)
        return handler._replace(
            request_deserializer=_safe(
                handler.request_deserializer, self.prechecks.get(handler_call_details.method)
            ),
            **{kind: before(getattr(handler, kind), check)},
        )
