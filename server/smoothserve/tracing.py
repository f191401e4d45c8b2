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
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_tracer: Any = None
_provider: Any = None
log = logging.getLogger(__name__)
# A dead or black-hole collector must not hold up a stop: with the SDK's defaults (a 10 s
# export timeout, a 30 s shutdown) SIGTERM took 16-28 s, past Kubernetes' 30 s grace once the
# 25 s drain is added. One export (retries included) may take EXPORT_TIMEOUT_S unless
# OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT says otherwise; the flush at stop, SHUTDOWN_TIMEOUT_S.
EXPORT_TIMEOUT_S = 3.0
SHUTDOWN_TIMEOUT_S = 3.0


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

    # shutdown_on_exit=False: an exit hook would flush again, unbounded; shutdown() does it.
    _provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False
    )
    timeout = None if _timeout_from_environment() else EXPORT_TIMEOUT_S
    exporter = OTLPSpanExporter(
        endpoint=endpoint, insecure=not endpoint.startswith("https://"), timeout=timeout
    )
    _provider.add_span_processor(
        BatchSpanProcessor(exporter, export_timeout_millis=EXPORT_TIMEOUT_S * 1000)
    )
    _tracer = _provider.get_tracer("smoothserve")


def _timeout_from_environment() -> bool:
    return any(
        os.environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    )


def shutdown(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Flush the spans not yet exported (at server stop), for at most ``timeout_s``: the SDK's
    own shutdown waits up to 30 s on a collector that does not answer, so it runs in a daemon
    thread that is abandoned (its spans dropped, with a warning) when the time is up."""
    global _tracer, _provider
    provider, _tracer, _provider = _provider, None, None
    if provider is None:
        return
    flush = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    flush.start()
    flush.join(timeout_s)
    if flush.is_alive():
        log.warning(
            "tracing: the OTLP collector did not take the last spans within %.0f s; "
            "they are dropped", timeout_s,
        )  # fmt: skip


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
