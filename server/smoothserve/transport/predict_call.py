"""One Predict through the data plane with its request metrics and its access log line,
whatever the transport: the outcome label, the latency, the certified radius, and errors as
``SmoothServeError``s that each transport maps to its own status (gRPC code, HTTP status)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from smoothserve_client.types import PredictResult

from ..dataplane import UNKNOWN_MODEL, DataPlane
from ..errors import (
    BadState,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ShuttingDown,
    SmoothServeError,
    Unavailable,
)
from ..request import CERTIFY, MAX_NAME_CHARS, PredictInput
from ..tracing import REQUEST_ID, request_id, span

log = logging.getLogger(__name__)
# One INFO line per Predict on every door (--access-log false, or this logger's level, turns
# it off). Its fields are the server's own words: the model label (a served model's name or
# "(unknown)"), mode, procedure, outcome, status, counts, never a client's input or names.
ACCESS_LOGGER = "smoothserve.access"
access_log = logging.getLogger(ACCESS_LOGGER)
# The gRPC status name of each error (the REST door maps the same classes to HTTP statuses).
STATUS_NAMES = (
    (InvalidArgument, "INVALID_ARGUMENT"), (NotFound, "NOT_FOUND"),
    (FailedPrecondition, "FAILED_PRECONDITION"), (ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (Unavailable, "UNAVAILABLE"), (DeadlineExceeded, "DEADLINE_EXCEEDED"),
)  # fmt: skip


async def answer(
    plane: DataPlane,
    model_name: str,
    make_input: Callable[[], PredictInput],
    seconds_left: float | None,
    mode: str = CERTIFY,
    given_id: str | None = None,
) -> PredictResult:
    """Run ``make_input()`` through ``plane.predict`` within ``seconds_left``, counted in the
    request metrics under ``model_name`` (or "(unknown)") and ``mode``, under the request ID
    ``given_id`` (or a fresh one: ``tracing.request_id``), which the result carries back."""
    REQUEST_ID.set(request_id(given_id))
    started = time.perf_counter()
    model = plane.metric_label(model_name[: MAX_NAME_CHARS + 1])
    outcome, radius, status = "error", None, "INTERNAL"
    procedure = version = samples = None  # unknown until the request parses, or answers
    plane.request_started()
    try:
        # No task of its own (as wait_for would make): admission runs in this very step.
        async with asyncio.timeout(seconds_left):
            request = make_input()
            mode, procedure = request.mode, request.procedure
            log.debug(
                "Predict model=%s mode=%s rank=%d dtype=%s bytes=%d n0=%s n=%s seeded=%s",
                model, mode, len(request.shape), request.dtype, len(request.data), request.n0,
                request.n, request.seed is not None,
            )  # fmt: skip - a summary only: inputs, names and seeds never reach the log
            with span("Predict", model=model, mode=mode):
                result = await plane.predict(request)
        model, version, procedure = result.model_name, result.model_version, result.procedure
        outcome, status = "abstained" if result.abstain else "certified", "OK"
        samples = result.n0 + result.n
        if result.mode == CERTIFY and not result.abstain:
            radius = result.radius
        return replace(result, request_id=REQUEST_ID.get())
    except SmoothServeError as error:
        if isinstance(error, ResourceExhausted | ShuttingDown):
            outcome = "rejected"
        status = next((name for kind, name in STATUS_NAMES if isinstance(error, kind)), status)
        raise
    except TimeoutError:
        outcome, status = "deadline_exceeded", "DEADLINE_EXCEEDED"
        raise DeadlineExceeded("the request's deadline passed") from None
    except asyncio.CancelledError:
        outcome, status = "cancelled", "CANCELLED"
        log.info("Predict cancelled (model %s)", model)
        raise
    except Exception:
        log.exception("Predict failed")
        raise BadState("internal error; see the server log") from None
    finally:
        seconds = time.perf_counter() - started
        plane.request_finished(model, mode, outcome, seconds, radius)
        _log_access(model, version, mode, procedure, outcome, status, samples, seconds)


def refused_unread(plane: DataPlane, status: str, given_id: str | None = None) -> str:
    """A Predict refused before it could be read (a message that does not parse, a body over
    the size limit): counted in the request metrics and logged like any other, under the model
    "(unknown)" and the mode "unknown", so that no door refuses out of sight. Returns the
    request ID it was logged under (``given_id`` when the client sent a usable one)."""
    rid = request_id(given_id)
    REQUEST_ID.set(rid)
    plane.request_started()
    plane.request_finished(UNKNOWN_MODEL, "unknown", "error", 0.0)
    _log_access(UNKNOWN_MODEL, None, "unknown", None, "error", status, None, 0.0)
    return rid


def _log_access(model, version, mode, procedure, outcome, status, samples, seconds) -> None:
    if access_log.isEnabledFor(logging.INFO):
        fields = {
            "model": model, "version": version, "mode": mode, "procedure": procedure,
            "outcome": outcome, "status": status, "samples": samples,
            "latency_s": round(seconds, 6),
        }  # fmt: skip
        access_log.info(
            "Predict %s", " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items()),
            extra=fields,
        )


def _logfmt(value: object) -> str:
    """A value of a text access line: as is, or JSON-quoted when it holds a space, a quote or
    an equals sign (a model folder's name may), so that the line still splits on spaces."""
    text = "-" if value is None else str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\\') else text
