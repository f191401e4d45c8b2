"""The Open Inference Protocol (KServe v2) against a live server, with the ecosystem's own
clients, unmodified: tritonclient.grpc and tritonclient.http."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from conftest import LINEAR_SHAPE
from servers import metric
from test_linear_radius import point_at
from tritonclient.grpc import service_pb2 as oip_pb
from tritonclient.utils import InferenceServerException

from smoothserve.app import Server
from smoothserve.config import ServerConfig
from smoothserve.transport import oip_rest
from smoothserve_client import SmoothServeClient
from smoothserve_dev.testing import ServerProcess

X = point_at(0.5, 1)
TOKEN = "oip-test-token"


@pytest.fixture(scope="module")
def oip_server(linear_repo):
    with ServerProcess(linear_repo, ["--http-port", "0"]) as server:
        yield server


def grpc_infer(server, x, **parameters):
    client = triton_grpc.InferenceServerClient(server.address)
    tensor = triton_grpc.InferInput("input", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(x[None])
    return client.infer("linear", [tensor], parameters=parameters)


def http_client(server, **kwargs):
    return triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}", **kwargs)


def http_infer(server, x, binary: bool = True, outputs=None, headers=None, **parameters):
    tensor = triton_http.InferInput("input", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(x[None], binary_data=binary)
    return http_client(server).infer("linear", [tensor], outputs=outputs, headers=headers,
                                     parameters=parameters)  # fmt: skip


def test_grpc_and_http_give_the_native_certificate_for_a_seeded_request(oip_server):
    with SmoothServeClient(oip_server.address) as client:
        native = client.predict("linear", X, n0=100, n=5000, alpha=0.001, seed=3)
    options = {"n0": 100, "n": 5000, "alpha": 0.001, "seed": 3}
    for answer in (grpc_infer(oip_server, X, **options), http_infer(oip_server, X, **options)):
        assert answer.as_numpy("prediction").tolist() == [native.prediction]
        assert answer.as_numpy("abstain").tolist() == [native.abstain]
        assert answer.as_numpy("radius").tolist() == [native.radius]
        assert answer.as_numpy("counts").tolist() == list(native.counts)
        assert answer.as_numpy("label").tolist() == [native.label.encode()]
        assert answer.as_numpy("p_a_lower").tolist() == [native.p_a_lower]


def test_the_certificate_travels_in_the_parameters_too(oip_server):
    response = http_infer(oip_server, X, n=2000).get_response()
    parameters = response["parameters"]
    assert parameters["n"] == 2000 and parameters["mode"] == "certify"
    assert sum(int(c) for c in parameters["counts"].split(",")) == 2000
    record = json.loads(parameters["record"])
    assert record["n"] == 2000 and record["radius"] == parameters["radius"]
    grpc_parameters = grpc_infer(oip_server, X, n=2000).get_response().parameters
    assert grpc_parameters["n"].int64_param == 2000
    assert grpc_parameters["record_signature"].string_param


def test_json_outputs_and_predict_mode_over_http(oip_server):
    outputs = [triton_http.InferRequestedOutput("prediction", binary_data=False),
               triton_http.InferRequestedOutput("label", binary_data=True)]  # fmt: skip
    answer = http_infer(oip_server, X, binary=False, outputs=outputs, n=2000, mode="predict")
    assert answer.as_numpy("prediction").tolist() == [1]
    assert answer.as_numpy("label").tolist() == [b"positive"]
    assert answer.as_numpy("radius") is None  # not requested, not sent
    assert answer.get_response()["parameters"]["mode"] == "predict"


def test_health_and_metadata(oip_server):
    grpc_client, http = triton_grpc.InferenceServerClient(oip_server.address), http_client(oip_server)
    for client in (grpc_client, http):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("linear") and not client.is_model_ready("nope")
    metadata = http.get_model_metadata("linear")
    assert metadata["platform"] == "smoothserve" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32",
                                   "shape": [1, *LINEAR_SHAPE]}]  # fmt: skip
    names = [o.name for o in grpc_client.get_model_metadata("linear").outputs]
    assert names[:3] == ["prediction", "abstain", "radius"] and "counts" in names
    assert http.get_server_metadata()["name"] == "smoothserve"


def test_errors_map_to_the_protocols_codes(oip_server):
    with pytest.raises(InferenceServerException) as unknown:
        http_client(oip_server).infer("nope", [triton_http.InferInput("input", [1], "FP32")])
    assert unknown.value.status() == "404"
    with pytest.raises(InferenceServerException) as bad_n:
        grpc_infer(oip_server, X, n=-1)
    assert bad_n.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as bad_n_http:
        http_infer(oip_server, X, n=-1)
    assert bad_n_http.value.status() == "400"
    with pytest.raises(InferenceServerException) as bad_type:
        grpc_infer(oip_server, X, n="many")
    assert bad_type.value.status() == "StatusCode.INVALID_ARGUMENT"
    request = urllib.request.Request(
        f"http://127.0.0.1:{oip_server.http_port}/v2/models/linear/infer", data=b"{not json",
        method="POST",
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as not_json:
        urllib.request.urlopen(request, timeout=10)
    assert not_json.value.code == 400 and "JSON" in json.loads(not_json.value.read())["error"]


def test_requests_count_in_the_same_metrics(oip_server):
    def served() -> float:
        return metric(oip_server.metrics_url, "smoothserve_requests_total", model="linear",
                      outcome="certified")  # fmt: skip

    before = served()
    grpc_infer(oip_server, X, n=1000)
    http_infer(oip_server, X, n=1000)
    assert served() == before + 2


def test_admission_limits_hold_on_the_new_endpoints(linear_repo):
    """One request at a time: with a long one admitted (over OIP), the next is refused at once."""
    args = ["--http-port", "0", "--max-concurrent-requests", "1", "--batch-size", "32",
            "--pipeline-depth", "1"]  # fmt: skip
    with ServerProcess(linear_repo, args) as server:
        long = start_long_request(server)
        with pytest.raises(InferenceServerException) as grpc_refused:
            grpc_infer(server, X, n=100)
        assert grpc_refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        with pytest.raises(InferenceServerException) as http_refused:
            http_infer(server, X, n=100)
        assert http_refused.value.status() == "429"
        server.process.kill()
        long.join(30)


def test_tokens_guard_inference_but_not_liveness(linear_repo):
    with ServerProcess(linear_repo, ["--http-port", "0", "--auth-tokens", TOKEN]) as server:
        grpc_client = triton_grpc.InferenceServerClient(server.address)
        assert grpc_client.is_server_live() and grpc_client.is_server_ready()
        assert http_client(server).is_server_live()
        with pytest.raises(InferenceServerException) as refused:
            grpc_infer(server, X, n=500)
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as refused_http:
            http_infer(server, X, n=500)
        assert refused_http.value.status() == "401"
        with pytest.raises(InferenceServerException):
            http_client(server).get_model_metadata("linear")
        bearer = {"authorization": f"Bearer {TOKEN}"}  # copied per call: clients add to it
        assert http_infer(server, X, headers=dict(bearer), n=500).as_numpy("prediction").tolist() == [1]
        tensor = triton_grpc.InferInput("input", [1, *X.shape], "FP32")
        tensor.set_data_from_numpy(X[None])
        answer = grpc_client.infer("linear", [tensor], headers=dict(bearer), parameters={"n": 500})
        assert answer.as_numpy("prediction").tolist() == [1]


def test_readiness_flips_off_during_the_drain(linear_repo):
    """Ready once serving; on SIGTERM, not ready while admitted requests finish, live all along."""
    args = ["--http-port", "0", "--batch-size", "32", "--pipeline-depth", "1",
            "--grace-period-s", "20"]  # fmt: skip
    with ServerProcess(linear_repo, args) as server:
        grpc_client, http = triton_grpc.InferenceServerClient(server.address), http_client(server)
        assert grpc_client.is_server_ready() and http.is_server_ready()
        long = start_long_request(server)
        server.process.send_signal(signal.SIGTERM)
        waited = time.monotonic() + 10
        while http.is_server_ready():
            assert time.monotonic() < waited, "still ready while draining"
            time.sleep(0.05)
        assert not grpc_client.is_server_ready() and not grpc_client.is_model_ready("linear")
        assert grpc_client.is_server_live() and http.is_server_live()
        server.process.kill()
        long.join(30)


def start_long_request(server) -> threading.Thread:
    """A 1,000,000-sample ModelInfer in a thread, returned once the server has admitted it."""
    long = threading.Thread(target=lambda: _quietly(lambda: grpc_infer(server, X, n=1_000_000)))
    long.start()
    waited = time.monotonic() + 10
    while metric(server.metrics_url, "smoothserve_requests_in_progress") < 1:
        assert time.monotonic() < waited
        time.sleep(0.05)
    return long


def _quietly(call) -> None:
    with contextlib.suppress(InferenceServerException, grpc.RpcError):
        call()


def test_sound_noise_travels_as_a_parameter(oip_server):
    lattice = (np.round(X * 255) / 255).astype(np.float32)
    answer = http_infer(oip_server, lattice, n=1000, sound_noise=True)
    assert answer.get_response()["parameters"]["sound_noise"] is True
    with pytest.raises(InferenceServerException) as off_lattice:
        grpc_infer(oip_server, X, n=1000, sound_noise=True)
    assert off_lattice.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_model_config_describes_the_smoothed_model(oip_server):
    config = triton_grpc.InferenceServerClient(oip_server.address).get_model_config("linear").config
    assert config.name == "linear" and config.platform == "smoothserve"
    assert config.max_batch_size == 1 and list(config.input[0].dims) == list(LINEAR_SHAPE)
    assert [o.name for o in config.output][:3] == ["prediction", "abstain", "radius"]


def test_readiness_is_off_until_start_up_ends(linear_repo):
    """In process: while start-up is still under way (held at its last step, the REST port),
    the gRPC port answers ServerReady false; once it ends, true."""
    config = ServerConfig.from_args(
        ["--model-repo", str(linear_repo), "--port", "0", "--metrics-port", "-1",
         "--http-port", "0", "--host", "127.0.0.1"], environ={},
    )  # fmt: skip

    async def scenario() -> tuple[bool, bool]:
        server = Server(config)
        release, holding = asyncio.Event(), asyncio.Event()
        original = oip_rest.RestServer.start

        async def held_start(self, *args):  # the gRPC port is serving by now
            holding.set()
            await release.wait()
            return await original(self, *args)

        oip_rest.RestServer.start = held_start
        try:
            starting = asyncio.ensure_future(server.start())
            await asyncio.wait_for(holding.wait(), 60)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                ready = channel.unary_unary(
                    "/inference.GRPCInferenceService/ServerReady",
                    request_serializer=oip_pb.ServerReadyRequest.SerializeToString,
                    response_deserializer=oip_pb.ServerReadyResponse.FromString,
                )
                during = (await ready(oip_pb.ServerReadyRequest())).ready
                release.set()
                await starting
                after = (await ready(oip_pb.ServerReadyRequest())).ready
            return during, after
        finally:
            oip_rest.RestServer.start = original
            await server.stop(grace=0)

    assert asyncio.run(scenario()) == (False, True)
