"""Errors the data plane and backends raise; the transport maps each to one gRPC status."""


class SmoothServeError(Exception):
    """Base class: the message is safe to show the caller (it never contains input data)."""


class InvalidArgument(SmoothServeError):
    pass


class NotFound(SmoothServeError):
    pass


class ResourceExhausted(SmoothServeError):
    pass


class Unavailable(SmoothServeError):
    pass


class DeadlineExceeded(SmoothServeError):
    pass
