"""The ``smoothserve.v1.SmoothServe`` gRPC service on top of the data plane."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from smoothserve_client.api.v1 import smoothserve_pb2 as pb
from smoothserve_client.api.v1 import smoothserve_pb2_grpc as pb_grpc

from ..dataplane import (
    CERTIFY,
    MAX_NAME_CHARS,
    MAX_VERSION_CHARS,
    PREDICT,
    DataPlane,
    PredictInput,
    PredictOutput,
    check_request_bounds,
    check_tensor_header,
)
from ..errors import (
    BadState,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ShuttingDown,
    SmoothServeError,
    Unavailable,
)
from ..repository import ModelVersion
from ..schema.request_envelope_pb2 import PredictRequestOutline

log = logging.getLogger(__name__)

STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    BadState: grpc.StatusCode.INTERNAL,
}
MODES = {pb.MODE_CERTIFY: CERTIFY, pb.MODE_PREDICT: PREDICT}
DTYPES = {pb.DTYPE_FLOAT32: "float32", pb.DTYPE_UINT8: "uint8"}


def status_of(error: SmoothServeError) -> grpc.StatusCode:
    for kind, code in STATUS.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def check_predict_outline(data: bytes) -> None:
    """Bounds of a Predict request checked on its raw bytes, before it is parsed: the name
    and version lengths and the size of the input's shape (see ``schema/request_envelope``)."""
    outline = PredictRequestOutline.FromString(data)
    names = (outline.model_name, outline.model_version)
    if any(len(name) > 4 * MAX_NAME_CHARS for name in names):  # UTF-8: at most 4 bytes a char
        raise InvalidArgument(f"model name or version longer than {MAX_NAME_CHARS} characters")
    tensor = outline.input
    check_tensor_header(tensor.ByteSize() - len(tensor.data))


PREDICT_METHOD = f"/{pb.DESCRIPTOR.services_by_name['SmoothServe'].full_name}/Predict"
PRECHECKS = {PREDICT_METHOD: check_predict_outline}


def to_input(request: pb.PredictRequest) -> PredictInput:
    check_request_bounds(request.model_name, request.model_version, len(request.input.shape))
    options = request.options
    if options.mode not in MODES:
        raise InvalidArgument(f"unknown mode {options.mode}")
    return PredictInput(
        model_name=request.model_name,
        model_version=request.model_version,
        shape=tuple(request.input.shape),
        dtype=DTYPES.get(request.input.dtype, ""),
        data=request.input.data,
        mode=MODES[options.mode],
        n0=options.n0 if options.HasField("n0") else None,
        n=options.n if options.HasField("n") else None,
        alpha=options.alpha if options.HasField("alpha") else None,
        seed=options.seed if options.HasField("seed") else None,
    )


def to_response(out: PredictOutput) -> pb.PredictResponse:
    response = pb.PredictResponse(
        prediction=out.prediction,
        label=out.label,
        abstain=out.abstain,
        radius=out.radius,
        p_a_lower=out.p_a_lower,
        p_value=out.p_value,
        candidate=out.candidate,
        counts=out.counts.tolist(),
        selection_counts=[] if out.selection_counts is None else out.selection_counts.tolist(),
        mode=pb.MODE_CERTIFY if out.mode == CERTIFY else pb.MODE_PREDICT,
        n0=out.n0,
        n=out.n,
        alpha=out.alpha,
        sigma=out.sigma,
        model_name=out.model.name,
        model_version=out.model.version,
        model_sha256=out.model.sha256,
        server_time_seconds=out.server_time_seconds,
    )
    if out.seed is not None:
        response.seed = out.seed
    return response


def to_model_info(model: ModelVersion, plane: DataPlane, backend: str) -> pb.ModelInfo:
    c, cfg = model.config, plane.config
    return pb.ModelInfo(
        name=model.name,
        version=model.version,
        available_versions=sorted(plane.models[model.name], key=int),
        sha256=model.sha256,
        sigma=c.sigma,
        labels=list(c.labels),
        input_shape=list(c.input_shape),
        value_low=c.value_range[0],
        value_high=c.value_range[1],
        backend=backend,
        platform=c.platform,
        max_batch_size=c.max_batch_size,
        default_n0=cfg.default_n0,
        default_n=cfg.default_n,
        default_alpha=cfg.default_alpha,
        max_n=cfg.max_n,
        state="READY",
        max_alpha=cfg.max_alpha,
        min_n=cfg.min_n,
    )


def failed_model_info(name: str, reason: str) -> pb.ModelInfo:
    return pb.ModelInfo(name=name, state="FAILED", failure_reason=reason)


class SmoothServeServicer(pb_grpc.SmoothServeServicer):
    def __init__(self, plane: DataPlane, backend_name: str) -> None:
        self.plane = plane
        self.backend_name = backend_name

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext):
        metrics = self.plane.metrics
        started = time.perf_counter()
        mode = MODES.get(request.options.mode, "unknown")
        model = self.plane.metric_label(request.model_name[:MAX_NAME_CHARS + 1])
        outcome = "error"
        failure: tuple[grpc.StatusCode, str] | None = None
        metrics.in_progress.inc()
        try:
            log.debug(
                "Predict model=%s mode=%s rank=%d dtype=%s bytes=%d n0=%s n=%s seeded=%s",
                model, mode, len(request.input.shape), request.input.dtype,
                len(request.input.data), request.options.n0, request.options.n,
                request.options.HasField("seed"),
            )  # fmt: skip - a summary only: inputs, names and seeds never reach the log
            # The server keeps the client's deadline itself, so no sample is drawn for an
            # answer nobody waits for even if the cancellation from gRPC arrives late.
            # No task of its own (as wait_for would make): admission runs in this very step,
            # so a refusal never waits for a turn of the event loop.
            async with asyncio.timeout(context.time_remaining()):
                out = await self.plane.predict(to_input(request))
            model = out.model.name
            outcome = "abstained" if out.abstain else "certified"
            if mode == CERTIFY and not out.abstain:
                metrics.certified_radius.labels(model).observe(out.radius)
            return to_response(out)
        except SmoothServeError as error:
            # refused at the door; a backend that cannot run is an error the alerts must see
            outcome = "rejected" if isinstance(error, (ResourceExhausted, ShuttingDown)) else outcome
            failure = (status_of(error), str(error))
        except TimeoutError:
            outcome = "deadline_exceeded"
            failure = (grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline passed")
        except asyncio.CancelledError:
            outcome = "cancelled"
            log.info("Predict cancelled (model %s)", model)
            raise
        except Exception:
            log.exception("Predict failed")
            failure = (grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            metrics.in_progress.dec()
            metrics.requests.labels(model, mode, outcome).inc()
            metrics.request_latency.labels(model, mode).observe(time.perf_counter() - started)
        # abort() sends the status at once: count the request first, so a scrape that follows
        # the caller's error always includes it.
        assert failure is not None  # every path that gets here set it
        await context.abort(*failure)

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext):
        plane = self.plane
        ready = [to_model_info(plane.resolve(name), plane, self.backend_name) for name in plane.models]
        failed = [failed_model_info(name, reason) for name, reason in plane.failed.items()]
        return pb.ListModelsResponse(models=sorted(ready + failed, key=lambda m: m.name))

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context):
        name = request.model_name
        if name in self.plane.failed and len(request.model_version) <= MAX_VERSION_CHARS:
            return failed_model_info(name, self.plane.failed[name])
        try:
            model = self.plane.resolve(name, request.model_version)
        except SmoothServeError as error:
            await context.abort(status_of(error), str(error))
        return to_model_info(model, self.plane, self.backend_name)
