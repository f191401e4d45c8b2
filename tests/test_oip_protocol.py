"""Issue 24: the parts of the Open Inference Protocol that were missing, against a live server
with the ecosystem's own clients (tritonclient.grpc, tritonclient.http, gRPC reflection, a
client generated from the shipped proto): Triton's methods SmoothServe does not implement
answer UNIMPLEMENTED without a traceback in the log; REST serves the model config the gRPC
door gives; REST's own refusals are JSON; the metadata gives the shape that is accepted, and
an input with or without its batch axis of one certifies alike, whatever its channel count."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from conftest import LINEAR_SHAPE, LINEAR_SIGMA
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from test_linear_radius import point_at
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as oip_pb
from tritonclient.grpc import service_pb2_grpc as oip_grpc
from tritonclient.utils import InferenceServerException

from smoothserve.transport.oip_grpc import InferenceServicer
from smoothserve_dev.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "clients" / "smoothserve_client" / "api" / "oip"
SERVICE = oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
IMPLEMENTED = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
               "ModelConfig", "ModelInfer", "ModelStatistics", "RepositoryIndex",
               "RepositoryModelLoad", "RepositoryModelUnload"}  # fmt: skip
X = point_at(0.5, 1)  # a (1, 8, 8) input: C = 1
SEEDED = {"n0": 100, "n": 3000, "alpha": 0.001, "seed": 11}


@pytest.fixture(scope="module")
def oip_server(linear_repo):
    with ServerProcess(linear_repo, ["--http-port", "0"]) as server:
        yield server


def grpc_client(server) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(server.address)


def http_client(server) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")


def rest(server, method: str, path: str, body: bytes | None = None):
    """(status, content type, headers, body) of a plain HTTP call."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response, response.read()
    finally:
        connection.close()


# -- methods SmoothServe does not implement ----------------------------------------------------


def test_every_method_of_tritons_service_is_smoothserves_own_not_the_generated_default():
    """The generated base class raises NotImplementedError, which grpc logs as a traceback."""
    for method in SERVICE.methods:
        assert method.name in vars(InferenceServicer), method.name


def test_unimplemented_methods_answer_unimplemented_without_a_traceback(oip_server):
    stub = oip_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(oip_server.address))
    unimplemented = [m for m in SERVICE.methods if m.name not in IMPLEMENTED]
    assert {"ModelStreamInfer", "SystemSharedMemoryRegister", "CudaSharedMemoryStatus",
            "TraceSetting", "LogSettings"} <= {m.name for m in unimplemented}  # fmt: skip
    for method in unimplemented:
        request = getattr(oip_pb, method.input_type.name)()
        call = getattr(stub, method.name)
        with pytest.raises(grpc.RpcError) as refused:
            if method.client_streaming:  # ModelStreamInfer: a stream both ways
                next(iter(call(iter([request]), timeout=10)))
            else:
                call(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, method.name
        assert method.name in refused.value.details(), refused.value.details()
    # and through tritonclient, as applications call them
    client = grpc_client(oip_server)
    for call in (client.get_system_shared_memory_status, client.get_trace_settings,
                 client.get_log_settings):  # fmt: skip
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
    answers = []
    client.start_stream(lambda result, error: answers.append(error))
    tensor = triton_grpc.InferInput("input", [1, *X.shape], "FP32")
    tensor.set_data_from_numpy(X[None])
    # the server may end the stream before the request goes out; the callback says why
    with contextlib.suppress(InferenceServerException):
        client.async_stream_infer("linear", [tensor])
    client.stop_stream()
    assert answers and answers[0] is not None and "UNIMPLEMENTED" in str(answers[0].status())
    assert client.is_server_live()  # the server is unharmed; and its log shows no traceback:
    log = oip_server.log()
    assert "Traceback" not in log and "NotImplementedError" not in log, log[-3000:]


# -- the model config over REST ----------------------------------------------------------------


def test_http_model_config_is_the_grpc_one(oip_server):
    over_http = http_client(oip_server).get_model_config("linear")
    over_grpc = grpc_client(oip_server).get_model_config("linear").config
    assert json_format.ParseDict(over_http, config_pb.ModelConfig()) == over_grpc
    assert over_http["name"] == "linear" and over_http["platform"] == "smoothserve"
    assert over_http["max_batch_size"] == 1
    assert over_http["input"] == [{"name": "input", "data_type": "TYPE_FP32",
                                   "dims": list(LINEAR_SHAPE)}]  # fmt: skip
    outputs = {o["name"]: o for o in over_http["output"]}
    assert outputs["radius"] == {"name": "radius", "data_type": "TYPE_FP64", "dims": [1]}
    assert outputs["counts"]["dims"] == [2] and outputs["label"]["data_type"] == "TYPE_STRING"
    versioned = http_client(oip_server).get_model_config("linear", model_version="1")
    assert versioned == over_http
    status, content_type, _, body = rest(oip_server, "GET", "/v2/models/nope/config")
    assert status == 404 and content_type.startswith("application/json")
    assert "nope" in json.loads(body)["error"]


# -- REST's own refusals -----------------------------------------------------------------------


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v2/nothing/here", 404),
    ("GET", "/v3", 404),
    ("POST", "/v2/models/linear/versions/1/statistics", 404),
    ("GET", "/v2/models/linear/infer", 405),
    ("POST", "/v2/health/live", 405),
    ("DELETE", "/v2/models/linear/config", 405),
])  # fmt: skip
def test_unknown_routes_and_methods_are_json_errors(oip_server, method, path, status):
    got, content_type, response, body = rest(oip_server, method, path, b"{}")
    assert got == status
    assert content_type.startswith("application/json")
    assert isinstance(json.loads(body)["error"], str) and json.loads(body)["error"]
    if status == 405:
        assert response.getheader("Allow")


# -- the input's shape -------------------------------------------------------------------------


def grpc_infer(server, shape, **parameters):
    tensor = triton_grpc.InferInput("input", list(shape), "FP32")
    tensor.set_data_from_numpy(X.reshape(shape))
    return grpc_client(server).infer("linear", [tensor], parameters=parameters)


def http_infer(server, shape, **parameters):
    tensor = triton_http.InferInput("input", list(shape), "FP32")
    tensor.set_data_from_numpy(X.reshape(shape))
    return http_client(server).infer("linear", [tensor], parameters=parameters)


def certificate(answer) -> tuple:
    return tuple(tuple(answer.as_numpy(name).tolist())
                 for name in ("prediction", "abstain", "radius", "p_a_lower", "counts"))  # fmt: skip


def record_of(answer) -> dict:
    response = answer.get_response()
    if isinstance(response, dict):
        return json.loads(response["parameters"]["record"])
    return json.loads(response.parameters["record"].string_param)


def test_the_metadata_shape_and_the_model_shape_both_certify_alike_with_one_channel(oip_server):
    assert LINEAR_SHAPE[0] == 1  # the model's own leading axis is 1: no axis is dropped blindly
    metadata = http_client(oip_server).get_model_metadata("linear")
    batched = metadata["inputs"][0]["shape"]
    assert batched == [1, *LINEAR_SHAPE]
    assert list(grpc_client(oip_server).get_model_metadata("linear").inputs[0].shape) == batched
    answers = [
        infer(oip_server, shape, **SEEDED)
        for infer in (grpc_infer, http_infer)
        for shape in (batched, LINEAR_SHAPE)
    ]
    assert len({certificate(a) for a in answers}) == 1
    assert certificate(answers[0])[0] == (1,)  # a certificate, not an abstention
    for answer in answers:  # the record binds the model's shape (smoothserve-verify checks it)
        assert record_of(answer)["input"]["shape"] == list(LINEAR_SHAPE)


@pytest.mark.parametrize("alpha", [0.001, 1e-300, 5e-324])
def test_target_radius_certificates_verify_on_every_door(oip_server, alpha):
    """A target-radius certificate (format v4's exact counts) over native gRPC, OIP gRPC and
    OIP REST: one result type, so the same kind of answer with a record that recomputes, at
    alphas down to the smallest float (where alpha split over the looks underflows, which once
    raised in the schedule, and where the exact counts fall back to v3's)."""
    from smoothcert.verify import recompute
    from smoothserve_client import SmoothServeClient

    options = {"procedure": "target_radius", "target_radius": 0.25, "n": 20_000, "alpha": alpha}
    with SmoothServeClient(oip_server.address) as client:
        native = json.loads(client.predict("linear", X, **options).record)
    records = [native] + [record_of(infer(oip_server, LINEAR_SHAPE, **options))
                          for infer in (grpc_infer, http_infer)]  # fmt: skip
    for record in records:
        assert record["format"] == "smoothserve.certificate.v4"
        assert record["procedure"] == "target_radius" and record["alpha"] == alpha
        assert recompute(record) == [], record
    assert {r["abstain"] for r in records} == {False}  # certified: X lies at 0.5, 2 sigma


def test_a_batch_of_two_is_refused_saying_one_input_per_request(oip_server):
    two = np.stack([X, X])
    tensor = triton_grpc.InferInput("input", list(two.shape), "FP32")
    tensor.set_data_from_numpy(two)
    with pytest.raises(InferenceServerException) as over_grpc:
        grpc_client(oip_server).infer("linear", [tensor], parameters={"n": 100})
    assert over_grpc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "one input" in over_grpc.value.message()
    tensor = triton_http.InferInput("input", list(two.shape), "FP32")
    tensor.set_data_from_numpy(two)
    with pytest.raises(InferenceServerException) as over_http:
        http_client(oip_server).infer("linear", [tensor], parameters={"n": 100})
    assert over_http.value.status() == "400" and "one input" in over_http.value.message()
    # what the metadata and config promise is exactly what is taken: a batch of one
    config = http_client(oip_server).get_model_config("linear")
    assert config["max_batch_size"] == 1 and [1, *config["input"][0]["dims"]] == [1, *LINEAR_SHAPE]
    # other shapes: refused naming the model's shape (no axis dropped that is not a batch axis)
    for shape in ((8, 8), (1, 1, 1, 8, 8), (64,)):
        with pytest.raises(InferenceServerException) as refused:
            grpc_infer(oip_server, shape, n=100)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert str(list(LINEAR_SHAPE)) in refused.value.message()


# -- reflection --------------------------------------------------------------------------------


def test_reflection_lists_the_inference_service_when_it_is_on(oip_server, linear_repo):
    database = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(oip_server.address))
    assert SERVICE.full_name in database.get_services()
    pool = descriptor_pool.DescriptorPool(database)  # as grpcurl does: the files via reflection
    described = pool.FindServiceByName(SERVICE.full_name)
    assert [m.name for m in described.methods] == [m.name for m in SERVICE.methods]
    parameter = pool.FindMessageTypeByName("inference.InferParameter")
    assert "double_param" in parameter.fields_by_name
    with ServerProcess(linear_repo, ["--oip-grpc", "false"]) as server:
        database = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(server.address))
        services = set(database.get_services())
    assert "smoothserve.v1.SmoothServe" in services and SERVICE.full_name not in services


# -- the shipped proto -------------------------------------------------------------------------


def compile_shipped_proto(out: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The shipped .proto files compiled with protoc: Python stubs in ``out``, and their
    descriptors by file name."""
    descriptors = out / "oip.pb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={out}",
         f"--grpc_python_out={out}", f"--descriptor_set_out={descriptors}",
         str(PROTO_DIR / "grpc_service.proto"), str(PROTO_DIR / "model_config.proto")],
        check=True,
    )  # fmt: skip
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes()).file
    return {f.name: f for f in files}


def without_json_names(file: descriptor_pb2.FileDescriptorProto) -> None:
    """protoc writes json_name into a descriptor set; Python's generated modules leave it out."""

    def clear(message: descriptor_pb2.DescriptorProto) -> None:
        for field in message.field:
            field.ClearField("json_name")
        for nested in message.nested_type:
            clear(nested)

    for message in file.message_type:
        clear(message)


def fields(file: descriptor_pb2.FileDescriptorProto, path: str) -> dict:
    message = next(m for m in file.message_type if m.name == path.split(".")[0])
    for name in path.split(".")[1:]:
        message = next(m for m in message.nested_type if m.name == name)
    return {f.name: (f.number, f.type, f.label, f.type_name, f.oneof_index if f.HasField(
        "oneof_index") else None) for f in message.field}  # fmt: skip


def test_the_shipped_proto_is_the_protocol_the_server_speaks(tmp_path):
    compiled = compile_shipped_proto(tmp_path)
    for module in (oip_pb, config_pb):
        served = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        shipped = compiled[served.name]
        shipped.ClearField("source_code_info")
        without_json_names(shipped)
        for path in (
            (
                "ModelInferRequest",
                "ModelInferRequest.InferInputTensor",
                "ModelInferResponse",
                "ModelInferResponse.InferOutputTensor",
                "InferParameter",
                "InferTensorContents",
            )
            if module is oip_pb
            else ()
        ):
            assert fields(shipped, path) == fields(served, path), path
        assert shipped == served, served.name  # every message, enum and method alike
    parameter = fields(compiled["grpc_service.proto"], "InferParameter")
    assert parameter["double_param"][:2] == (4, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)
    methods = {m.name for m in compiled["grpc_service.proto"].service[0].method}
    assert methods == {m.name for m in SERVICE.methods}
    package_data = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())
    patterns = package_data["tool"]["setuptools"]["package-data"]["smoothserve_client"]
    package = ROOT / "clients" / "smoothserve_client"
    shipped_files = {p for pattern in patterns for p in package.glob(pattern)}
    assert {PROTO_DIR / "grpc_service.proto", PROTO_DIR / "model_config.proto"} <= shipped_files


CLIENT = textwrap.dedent("""
    import json, sys
    import grpc, numpy as np
    import grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc
    assert "tritonclient" not in sys.modules
    address, x = sys.argv[1], np.load(sys.argv[2])
    request = pb.ModelInferRequest(model_name="linear", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    for name, value in (("n0", 100), ("n", 3000), ("seed", 11)):
        request.parameters[name].int64_param = value
    request.parameters["alpha"].double_param = 0.001
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    response = stub.ModelInfer(request, timeout=60)
    raw = dict(zip([o.name for o in response.outputs], response.raw_output_contents))
    print(json.dumps({
        "prediction": int(np.frombuffer(raw["prediction"], "<i4")[0]),
        "radius": float(np.frombuffer(raw["radius"], "<f8")[0]),
        "sigma": response.parameters["sigma"].double_param,
        "alpha": response.parameters["alpha"].double_param,
        "config_dims": list(stub.ModelConfig(pb.ModelConfigRequest(name="linear")).config
                            .input[0].dims),
    }))
""")


def test_a_client_generated_from_the_shipped_proto_certifies(oip_server, tmp_path):
    compile_shipped_proto(tmp_path)
    (tmp_path / "client.py").write_text(CLIENT)
    np.save(tmp_path / "x.npy", X[None])
    result = subprocess.run(
        [sys.executable, str(tmp_path / "client.py"), oip_server.address, str(tmp_path / "x.npy")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    reference = grpc_infer(oip_server, [1, *LINEAR_SHAPE], **SEEDED)
    assert answer["prediction"] == reference.as_numpy("prediction")[0]
    assert answer["radius"] == reference.as_numpy("radius")[0]
    assert answer["sigma"] == LINEAR_SIGMA and answer["alpha"] == 0.001  # double_param
    assert answer["config_dims"] == list(LINEAR_SHAPE)
