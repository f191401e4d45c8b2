"""The ``smoothserve.v1.SmoothServe`` gRPC service on top of the data plane."""

from __future__ import annotations

import logging
import time

import grpc

from smoothserve_client.api.v1 import smoothserve_pb2 as pb
from smoothserve_client.api.v1 import smoothserve_pb2_grpc as pb_grpc
from smoothserve_client.types import DTYPE_NAMES, PROCEDURE_NAMES

from ..dataplane import DataPlane
from ..errors import REQUEST_ID_KEY, InvalidArgument, SmoothServeError, grpc_status
from ..request import (
    CERTIFY,
    MAX_NAME_CHARS,
    PREDICT,
    PredictInput,
    check_request_bounds,
    check_tensor_header,
)
from ..schema.request_envelope_pb2 import PredictRequestOutline
from ..tracing import REQUEST_ID, request_id
from .predict_call import answer

log = logging.getLogger(__name__)

MODES = {pb.MODE_CERTIFY: CERTIFY, pb.MODE_PREDICT: PREDICT}


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


def to_input(request: pb.PredictRequest, seconds_left: float | None = None) -> PredictInput:
    check_request_bounds(request.model_name, request.model_version, len(request.input.shape))
    options = request.options
    if options.mode not in MODES:
        raise InvalidArgument(f"unknown mode {options.mode}")
    if options.procedure not in PROCEDURE_NAMES:
        raise InvalidArgument(f"unknown procedure {options.procedure}")
    return PredictInput(
        model_name=request.model_name,
        model_version=request.model_version,
        shape=tuple(request.input.shape),
        dtype=DTYPE_NAMES.get(request.input.dtype, ""),
        data=request.input.data,
        mode=MODES[options.mode],
        n0=options.n0 if options.HasField("n0") else None,
        n=options.n if options.HasField("n") else None,
        alpha=options.alpha if options.HasField("alpha") else None,
        seed=options.seed if options.HasField("seed") else None,
        procedure=PROCEDURE_NAMES[options.procedure],
        target_radius=options.target_radius if options.HasField("target_radius") else None,
        tolerance=options.tolerance if options.HasField("tolerance") else None,
        deadline=None if seconds_left is None else time.monotonic() + seconds_left,
        sound_noise=options.sound_noise if options.HasField("sound_noise") else None,
    )


class SmoothServeServicer(pb_grpc.SmoothServeServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext):
        mode = MODES.get(request.options.mode, "unknown")
        given = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY)
        rid = request_id(given if isinstance(given, str) else None)
        REQUEST_ID.set(rid)  # from here on, every log line of this request shows it
        # Trailing metadata, not initial: sending initial metadata would await before
        # admission, and a refusal must not wait for a turn of the event loop.
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        # The server keeps the client's deadline itself (``answer``), so no sample is drawn
        # for an answer nobody waits for even if the cancellation from gRPC arrives late.
        try:
            result = await answer(
                self.plane, request.model_name,
                lambda: to_input(request, context.time_remaining()),
                context.time_remaining(), mode, rid,
            )  # fmt: skip
        except SmoothServeError as error:
            # abort() sends the status at once; ``answer`` counted the request first, so a
            # scrape that follows the caller's error always includes it.
            await context.abort(grpc_status(error), str(error), ((REQUEST_ID_KEY, rid),))
        return result.to_proto()

    async def GetSigningKey(self, request: pb.GetSigningKeyRequest, context):
        return self.plane.signing_key().to_proto()

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext):
        return pb.ListModelsResponse(models=[m.to_proto() for m in self.plane.list_models()])

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context):
        try:
            return self.plane.model_info(request.model_name, request.model_version).to_proto()
        except SmoothServeError as error:
            await context.abort(grpc_status(error), str(error))
