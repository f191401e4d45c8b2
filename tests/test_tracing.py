"""Request IDs (client-given or made by the server, in the response and in every log line of
the request) and OpenTelemetry spans exported to a real OTLP/gRPC receiver."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
import tritonclient.grpc as triton_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from test_linear_radius import point_at

from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_dev.testing import ServerProcess

X = point_at(0.5, 1)


@pytest.fixture(scope="module")
def debug_server(linear_repo):
    with ServerProcess(linear_repo, ["--log-level", "DEBUG", "--http-port", "0"]) as server:
        yield server


def lines_with(server, text: str) -> list[str]:
    return [line for line in server.log().splitlines() if text in line]


def test_a_client_request_id_comes_back_and_tags_every_log_line(debug_server):
    with SmoothServeClient(debug_server.address) as client:
        result = client.predict("linear", X, n0=50, n=500, request_id="order-42.a")
        with pytest.raises(SmoothServeError):
            client.predict("nope", X, n=500, request_id="order-43")
    assert result.request_id == "order-42.a"
    assert lines_with(debug_server, "[order-42.a]"), debug_server.log()[-2000:]
    assert any("Predict model=" in line for line in lines_with(debug_server, "[order-42.a]"))
    assert lines_with(debug_server, "[order-43]")
    # lines outside any request say "-"
    assert any(" [-]: " in line for line in debug_server.log().splitlines())


def test_a_missing_or_unsafe_id_is_replaced(debug_server):
    with SmoothServeClient(debug_server.address) as client:
        made = client.predict("linear", X, n0=50, n=500).request_id
        unsafe = client.predict("linear", X, n0=50, n=500, request_id="a b;" + "x" * 80).request_id
    assert re.fullmatch(r"[0-9a-f]{32}", made) and re.fullmatch(r"[0-9a-f]{32}", unsafe)
    assert "x" * 80 not in debug_server.log()


def test_the_inference_protocol_echoes_its_id(debug_server):
    client = triton_grpc.InferenceServerClient(debug_server.address)
    tensor = triton_grpc.InferInput("input", [1, *X.shape], "FP32")
    tensor.set_data_from_numpy(X[None])
    answer = client.infer("linear", [tensor], request_id="oip-7", parameters={"n": 500})
    assert answer.get_response().id == "oip-7"
    body = json.dumps({"id": "rest-9", "parameters": {"n": 500}, "inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, *X.shape],
         "data": X.ravel().tolist()}]}).encode()  # fmt: skip
    url = f"http://127.0.0.1:{debug_server.http_port}/v2/models/linear/infer"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as response:
        assert json.loads(response.read())["id"] == "rest-9"
        assert response.headers["x-request-id"] == "rest-9"
    assert lines_with(debug_server, "[rest-9]")


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver: keeps every span exported to it."""

    def __init__(self) -> None:
        self.spans: list = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_an_otlp_collector(linear_repo):
    receiver = Receiver()
    collector = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    try:
        args = ["--otlp-endpoint", f"http://127.0.0.1:{port}"]
        env = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # export every 0.1 s, not every 5 s
        with ServerProcess(linear_repo, args, env=env) as server:
            with SmoothServeClient(server.address) as client:
                client.predict("linear", X, n0=50, n=500, request_id="traced-1")
                client.predict("linear", X, n=2000, procedure="target_radius",
                               target_radius=0.25, request_id="traced-2")  # fmt: skip
            waited = time.monotonic() + 15
            while len({s.name for s in receiver.spans}) < 5:
                assert time.monotonic() < waited, [s.name for s in receiver.spans]
                time.sleep(0.1)
    finally:
        collector.stop(0)

    def attributes(span) -> dict:
        return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}

    names = {s.name for s in receiver.spans}
    assert {"Predict", "admission", "sampling", "statistics", "sign"} <= names
    first = [s for s in receiver.spans if attributes(s).get("smoothserve.request_id") == "traced-1"]
    assert {s.name for s in first} >= {"Predict", "admission", "sampling", "statistics"}
    root = next(s for s in first if s.name == "Predict")
    children = [s for s in first if s.name != "Predict"]
    assert all(s.trace_id == root.trace_id for s in children)
    assert sum(attributes(s)["samples"] for s in first if s.name == "sampling") == 550


def test_tracing_is_off_by_default(debug_server):
    assert "opentelemetry" not in debug_server.log()
