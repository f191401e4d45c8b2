"""Errors the data plane and backends raise, and the one table of the status each door answers
with: a gRPC status code (native and OIP gRPC) and an HTTP status (OIP REST)."""

from __future__ import annotations

import grpc


class SmoothServeError(Exception):
    """Base class: the message is safe to show the caller (it never contains input data)."""


class InvalidArgument(SmoothServeError):
    pass


class NotFound(SmoothServeError):
    pass


class FailedPrecondition(SmoothServeError):
    """Refused by the server's policy (such as client-chosen seeds), not by the request's form."""


class ResourceExhausted(SmoothServeError):
    pass


class Unavailable(SmoothServeError):
    pass


class DeadlineExceeded(SmoothServeError):
    pass


class ShuttingDown(Unavailable):
    """Refused at the door while the server drains: a rejection, not an error."""


class ModelFailed(Unavailable):
    """The model named failed to load; the message gives the reason."""


class BadState(SmoothServeError):
    """An internal inconsistency (such as counts that do not sum to the samples drawn): the
    request fails with an error status and a log line, and no certificate is built."""


# Most specific first: ShuttingDown and ModelFailed are Unavailable.
STATUS: dict[type[SmoothServeError], tuple[grpc.StatusCode, int]] = {
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    NotFound: (grpc.StatusCode.NOT_FOUND, 404),
    FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, 400),
    ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, 503),
    DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    BadState: (grpc.StatusCode.INTERNAL, 500),
}
# A request ID travels as this gRPC metadata key and HTTP header.
REQUEST_ID_KEY = "x-request-id"


def grpc_status(error: SmoothServeError) -> grpc.StatusCode:
    return _status(error)[0]


def http_status(error: SmoothServeError) -> int:
    return _status(error)[1]


def _status(error: SmoothServeError) -> tuple[grpc.StatusCode, int]:
    for kind, status in STATUS.items():
        if isinstance(error, kind):
            return status
    return grpc.StatusCode.INTERNAL, 500
