"""One Predict through the data plane with its request metrics, whatever the transport: the
outcome label, the latency, the certified radius, and errors as ``SmoothServeError``s that
each transport maps to its own status (gRPC code, HTTP status)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from smoothserve_client.types import PredictResult

from ..dataplane import DataPlane
from ..errors import BadState, DeadlineExceeded, ResourceExhausted, ShuttingDown, SmoothServeError
from ..request import CERTIFY, MAX_NAME_CHARS, PredictInput
from ..tracing import REQUEST_ID, request_id, span

log = logging.getLogger(__name__)


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
    outcome, radius = "error", None
    plane.request_started()
    try:
        # No task of its own (as wait_for would make): admission runs in this very step.
        async with asyncio.timeout(seconds_left):
            request = make_input()
            mode = request.mode
            log.debug(
                "Predict model=%s mode=%s rank=%d dtype=%s bytes=%d n0=%s n=%s seeded=%s",
                model, mode, len(request.shape), request.dtype, len(request.data), request.n0,
                request.n, request.seed is not None,
            )  # fmt: skip - a summary only: inputs, names and seeds never reach the log
            with span("Predict", model=model, mode=mode):
                result = await plane.predict(request)
        model = result.model_name
        outcome = "abstained" if result.abstain else "certified"
        if result.mode == CERTIFY and not result.abstain:
            radius = result.radius
        return replace(result, request_id=REQUEST_ID.get())
    except SmoothServeError as error:
        if isinstance(error, ResourceExhausted | ShuttingDown):
            outcome = "rejected"
        raise
    except TimeoutError:
        outcome = "deadline_exceeded"
        raise DeadlineExceeded("the request's deadline passed") from None
    except asyncio.CancelledError:
        outcome = "cancelled"
        log.info("Predict cancelled (model %s)", model)
        raise
    except Exception:
        log.exception("Predict failed")
        raise BadState("internal error; see the server log") from None
    finally:
        plane.request_finished(model, mode, outcome, time.perf_counter() - started, radius)
