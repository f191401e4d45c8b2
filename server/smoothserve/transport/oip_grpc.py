"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), on the same
port, interceptors (tokens, limits) and data plane as the native API. The protocol's messages
come from tritonclient's published definitions (the ``oip`` extra)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as oip_pb
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from ..dataplane import DataPlane
from ..errors import REQUEST_ID_KEY, InvalidArgument, SmoothServeError, grpc_status
from ..records import server_version
from . import oip
from .predict_call import answer
from .wire import check_model_infer

SERVICE = oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
INFER_METHOD = f"/{SERVICE}/ModelInfer"
PRECHECKS = {INFER_METHOD: check_model_infer}
# each contents field in its protobuf type (uint32, float): oip.to_input checks the range
INPUT_CONTENTS = {"UINT8": ("uint_contents", np.uint32), "FP32": ("fp32_contents", np.float32)}


def parameter_value(parameter: oip_pb.InferParameter):
    return getattr(parameter, parameter.WhichOneof("parameter_choice") or "string_param")


def set_parameter(parameter: oip_pb.InferParameter, value) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def input_values(request: oip_pb.ModelInferRequest) -> tuple[str, list[int], bytes | np.ndarray]:
    """(datatype, shape, data) of the one input: its raw bytes, or its typed contents as an
    array whose values ``oip.to_input`` checks against the datatype. An input sent both ways,
    or as more than one raw buffer, is ambiguous and refused (``wire.check_model_infer``
    refuses the costly cases before parsing)."""
    if len(request.inputs) != 1:
        raise InvalidArgument(f"ModelInfer takes one input tensor, got {len(request.inputs)}")
    tensor = request.inputs[0]
    given = [field.name for field, _ in tensor.contents.ListFields()]
    if len(request.raw_input_contents) > 1:
        raise InvalidArgument("ModelInfer takes one input: send one raw_input_contents buffer")
    if request.raw_input_contents:
        if given:
            raise InvalidArgument("the input is in both raw_input_contents and contents; send one")
        return tensor.datatype, list(tensor.shape), request.raw_input_contents[0]
    field, dtype = INPUT_CONTENTS.get(tensor.datatype, (None, None))
    if field is None:
        raise InvalidArgument("input datatype must be UINT8 or FP32")
    if any(name != field for name in given):
        raise InvalidArgument(f"a {tensor.datatype} input's values go in contents.{field}")
    return tensor.datatype, list(tensor.shape), np.asarray(getattr(tensor.contents, field), dtype)


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig,
    ModelInfer, ModelStatistics and the model repository extension (RepositoryIndex,
    RepositoryModelLoad, RepositoryModelUnload); the other methods of Triton's service answer
    UNIMPLEMENTED."""

    def __init__(self, plane: DataPlane, ready: Callable[[], bool]) -> None:
        self.plane = plane
        self.ready = ready

    async def ServerLive(self, request, context):
        return oip_pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return oip_pb.ServerReadyResponse(ready=self.ready())

    async def ModelReady(self, request, context):
        try:
            info = self.plane.model_info(request.name, request.version)
        except SmoothServeError:
            return oip_pb.ModelReadyResponse(ready=False)
        return oip_pb.ModelReadyResponse(ready=self.ready() and info.state == "READY")

    async def ServerMetadata(self, request, context):
        return oip_pb.ServerMetadataResponse(name="smoothserve", version=server_version(),
                                             extensions=list(oip.EXTENSIONS))  # fmt: skip

    async def ModelMetadata(self, request, context):
        try:
            info = self.plane.model_info(request.name, request.version)
        except SmoothServeError as error:
            await context.abort(grpc_status(error), str(error))
        tensor = oip_pb.ModelMetadataResponse.TensorMetadata
        name, datatype, shape = oip.metadata_input(info)
        return oip_pb.ModelMetadataResponse(
            name=info.name, versions=list(info.available_versions), platform=oip.PLATFORM,
            inputs=[tensor(name=name, datatype=datatype, shape=shape)],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, d, s in oip.metadata_outputs(info)],
        )  # fmt: skip

    async def ModelConfig(self, request, context):
        """``oip.model_config``: the same config as REST's ``/v2/models/{name}/config``."""
        try:
            info = self.plane.model_info(request.name, request.version)
        except SmoothServeError as error:
            await context.abort(grpc_status(error), str(error))
        config = json_format.ParseDict(oip.model_config(info), config_pb.ModelConfig())
        return oip_pb.ModelConfigResponse(config=config)

    async def ModelInfer(self, request: oip_pb.ModelInferRequest, context):
        def make_input():
            info = self.plane.model_info(request.model_name, request.model_version)
            datatype, shape, data = input_values(request)
            params = {k: parameter_value(v) for k, v in request.parameters.items()}
            return oip.to_input(request.model_name, request.model_version, datatype, shape,
                                data, params, context.time_remaining(),
                                [o.name for o in request.outputs], info.input_shape)  # fmt: skip

        metadata = dict(context.invocation_metadata() or ())
        given = request.id or metadata.get(REQUEST_ID_KEY)
        try:
            result = await answer(self.plane, request.model_name, make_input,
                                  context.time_remaining(), given_id=given)  # fmt: skip
        except SmoothServeError as error:
            await context.abort(grpc_status(error), str(error))
        wanted = {o.name for o in request.outputs}
        response = oip_pb.ModelInferResponse(
            model_name=result.model_name, model_version=result.model_version,
            id=result.request_id,
        )
        for tensor in oip.outputs(result):
            if wanted and tensor.name not in wanted:
                continue
            # Raw, as Triton answers (tritonclient reads raw_output_contents only).
            response.outputs.add(name=tensor.name, datatype=tensor.datatype,
                                 shape=list(tensor.shape))  # fmt: skip
            response.raw_output_contents.append(oip.raw_bytes(tensor))
        for name, value in oip.parameters(result).items():
            set_parameter(response.parameters[name], value)
        return response

    # Triton's other methods, each refused with UNIMPLEMENTED and a message saying so (the
    # generated base class raises NotImplementedError, which grpc logs with a traceback).

    async def ModelStreamInfer(self, request_iterator, context):
        await unimplemented(context, "ModelStreamInfer (streaming inference); use ModelInfer")

    # The statistics and model repository extensions (docs/api.md): the engine's
    # ModelControl and each version's statistics (metrics.ModelStats), as REST gives them.

    async def ModelStatistics(self, request, context):
        try:
            stats = self.plane.statistics(request.name, request.version)
        except SmoothServeError as error:
            await context.abort(grpc_status(error), str(error))
        body = {"model_stats": [s.to_json(name, version) for name, version, s in stats]}
        return json_format.ParseDict(body, oip_pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):
        try:
            control = oip.repository_control(self.plane, request.repository_name)
        except SmoothServeError as error:
            await context.abort(grpc_status(error), str(error))
        model_index = oip_pb.RepositoryIndexResponse.ModelIndex
        return oip_pb.RepositoryIndexResponse(models=[
            model_index(name=e.name, version=e.version, state=e.state, reason=e.reason)
            for e in control.index(request.ready)
        ])  # fmt: skip

    async def RepositoryModelLoad(self, request, context):
        try:
            control = oip.repository_control(self.plane, request.repository_name)
            oip.check_load_parameters(request.parameters)
            await control.request_load(request.model_name)
        except SmoothServeError as error:
            await context.abort(grpc_status(error), str(error))
        return oip_pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            control = oip.repository_control(self.plane, request.repository_name)
            await control.request_unload(request.model_name)
        except SmoothServeError as error:
            await context.abort(grpc_status(error), str(error))
        return oip_pb.RepositoryModelUnloadResponse()

    async def SystemSharedMemoryStatus(self, request, context):
        await unimplemented(context, SHARED_MEMORY.format("SystemSharedMemoryStatus"))

    async def SystemSharedMemoryRegister(self, request, context):
        await unimplemented(context, SHARED_MEMORY.format("SystemSharedMemoryRegister"))

    async def SystemSharedMemoryUnregister(self, request, context):
        await unimplemented(context, SHARED_MEMORY.format("SystemSharedMemoryUnregister"))

    async def CudaSharedMemoryStatus(self, request, context):
        await unimplemented(context, SHARED_MEMORY.format("CudaSharedMemoryStatus"))

    async def CudaSharedMemoryRegister(self, request, context):
        await unimplemented(context, SHARED_MEMORY.format("CudaSharedMemoryRegister"))

    async def CudaSharedMemoryUnregister(self, request, context):
        await unimplemented(context, SHARED_MEMORY.format("CudaSharedMemoryUnregister"))

    async def TraceSetting(self, request, context):
        await unimplemented(context, "TraceSetting; tracing is configured by the server's "
                                     "OpenTelemetry options")  # fmt: skip

    async def LogSettings(self, request, context):
        await unimplemented(context, "LogSettings; logging is configured by the server's "
                                     "options")  # fmt: skip


SHARED_MEMORY = "{} (the shared-memory extensions); send the input in the request"


async def unimplemented(context: grpc.aio.ServicerContext, what: str) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"SmoothServe does not implement {what}")


def add_to_server(plane: DataPlane, ready: Callable[[], bool], server: grpc.aio.Server) -> None:
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane, ready), server)
