"""Request IDs in every log line of a request, and OpenTelemetry spans (off by default).

A request's ID comes from the client (gRPC metadata or HTTP header ``x-request-id``, or the
Open Inference Protocol's ``id``) when it is a short token of safe characters, else the server
makes one; it goes back in the response and into every log line written while the request
runs (a context variable read by a logging filter). With ``--otlp-endpoint`` the server
exports spans around each request's admission, sampling and statistics to an OTLP/gRPC
collector; the OpenTelemetry SDK is the ``tracing`` extra and is imported only then.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_tracer: Any = None
_provider: Any = None


def request_id(given: str | None = None) -> str:
    """``given`` if it is 1-64 characters of [A-Za-z0-9._:-], else a fresh random ID (so a
    client cannot write arbitrary text into the server's logs)."""
    if given and SAFE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the running request's, or "-") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def configure(endpoint: str, service_name: str = "smoothserve") -> None:
    """Export spans to the OTLP/gRPC collector at ``endpoint`` (``http://host:4317``; https
    for TLS); an empty endpoint leaves tracing off."""
    global _tracer, _provider
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    _provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer = _provider.get_tracer("smoothserve")


def shutdown() -> None:
    """Flush the spans not yet exported (at server stop)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A span named ``name`` around the block when tracing is on, with the request's ID."""
    if _tracer is None:
        yield
        return
    attributes = {k: v for k, v in attributes.items() if v is not None}
    with _tracer.start_as_current_span(
        name, attributes={"smoothserve.request_id": REQUEST_ID.get(), **attributes}
    ):
        yield
