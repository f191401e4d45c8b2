"""Errors the data plane and backends raise; the transport maps each to one gRPC status."""


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
