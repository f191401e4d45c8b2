"""The ``smoothserve.v1.SmoothServe`` gRPC service on top of the data plane."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from smoothserve_client.api.v1 import smoothserve_pb2 as pb
from smoothserve_client.api.v1 import smoothserve_pb2_grpc as pb_grpc

from ..dataplane import CERTIFY, PREDICT, DataPlane, PredictInput, PredictOutput
from ..errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SmoothServeError,
    Unavailable,
)
from ..repository import ModelVersion

log = logging.getLogger(__name__)

STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}
MODES = {pb.MODE_CERTIFY: CERTIFY, pb.MODE_PREDICT: PREDICT}
DTYPES = {pb.DTYPE_FLOAT32: "float32", pb.DTYPE_UINT8: "uint8"}


def status_of(error: SmoothServeError) -> grpc.StatusCode:
    for kind, code in STATUS.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def to_input(request: pb.PredictRequest) -> PredictInput:
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
    )


class SmoothServeServicer(pb_grpc.SmoothServeServicer):
    def __init__(self, plane: DataPlane, backend_name: str) -> None:
        self.plane = plane
        self.backend_name = backend_name

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext):
        metrics = self.plane.metrics
        started = time.perf_counter()
        mode = MODES.get(request.options.mode, "unknown")
        # A metric label from a client-chosen string would let clients grow the metrics without
        # bound: names the server does not serve are all counted as "(unknown)".
        model = request.model_name if request.model_name in self.plane.models else (
            "(unknown)" if request.model_name else "(default)"
        )
        outcome = "error"
        failure: tuple[grpc.StatusCode, str] | None = None
        metrics.in_progress.inc()
        try:
            log.debug(
                "Predict model=%r mode=%s shape=%s dtype=%s bytes=%d n0=%s n=%s seeded=%s",
                model, mode, list(request.input.shape), request.input.dtype,
                len(request.input.data), request.options.n0, request.options.n,
                request.options.HasField("seed"),
            )  # fmt: skip - a summary only: inputs and seeds never reach the log
            # The server keeps the client's deadline itself, so no sample is drawn for an
            # answer nobody waits for even if the cancellation from gRPC arrives late.
            out = await asyncio.wait_for(
                self.plane.predict(to_input(request)), context.time_remaining()
            )
            model = out.model.name
            outcome = "abstained" if out.abstain else "certified"
            if mode == CERTIFY and not out.abstain:
                metrics.certified_radius.labels(model).observe(out.radius)
            return to_response(out)
        except SmoothServeError as error:
            outcome = "rejected" if isinstance(error, (ResourceExhausted, Unavailable)) else outcome
            failure = (status_of(error), str(error))
        except asyncio.TimeoutError:
            outcome = "deadline_exceeded"
            failure = (grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline passed")
        except asyncio.CancelledError:
            outcome = "cancelled"
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
        models = [self.plane.resolve(name) for name in sorted(self.plane.models)]
        return pb.ListModelsResponse(
            models=[to_model_info(m, self.plane, self.backend_name) for m in models]
        )

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context):
        try:
            model = self.plane.resolve(request.model_name, request.model_version)
        except SmoothServeError as error:
            await context.abort(status_of(error), str(error))
        return to_model_info(model, self.plane, self.backend_name)

