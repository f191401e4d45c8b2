"""Issue 24: the Open Inference Protocol's statistics extension (Triton's ModelStatistics) on
both doors, read by tritonclient.grpc and tritonclient.http: per model version, the samples
drawn (inference_count), backend batches (execution_count), requests that succeeded or
failed and their times, the queue, the backend's and certification's times; the samples are
the ones the Prometheus metrics count."""

from __future__ import annotations

import http.client
import json

import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from conftest import LINEAR_SHAPE, LINEAR_SIGMA, linear_weights
from google.protobuf import json_format
from servers import metric
from test_linear_radius import point_at
from tritonclient.grpc import service_pb2 as oip_pb
from tritonclient.utils import InferenceServerException

from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess

X = point_at(0.5, 1)
REQUESTS = [(100, 1000), (50, 3000), (20, 500)]  # (n0, n) of each certificate


@pytest.fixture(scope="module")
def stats_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("stats_repo")
    w, b = linear_weights()
    for name in ("counted", "idle"):
        write_linear_model(repo, name, w, b, LINEAR_SIGMA, LINEAR_SHAPE)
    with ServerProcess(repo, ["--batch-size", "256", "--http-port", "0"]) as server:
        yield server


def infer(server, name: str, **parameters):
    tensor = triton_grpc.InferInput("input", [1, *X.shape], "FP32")
    tensor.set_data_from_numpy(X[None])
    client = triton_grpc.InferenceServerClient(server.address)
    return client.infer(name, [tensor], parameters=parameters)


def test_statistics_count_samples_batches_requests_and_times_on_both_doors(stats_server):
    server = stats_server
    for n0, n in REQUESTS:
        infer(server, "counted", n0=n0, n=n)
    with pytest.raises(InferenceServerException):  # refused after the model was resolved
        infer(server, "counted", n=0)

    grpc_client = triton_grpc.InferenceServerClient(server.address)
    http_client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    over_grpc = grpc_client.get_inference_statistics("counted")
    over_http = http_client.get_inference_statistics("counted")
    (stats,) = over_http["model_stats"]
    # the same numbers both ways
    assert json_format.ParseDict(over_http, oip_pb.ModelStatisticsResponse()) == over_grpc

    samples = sum(n0 + n for n0, n in REQUESTS)
    assert stats["name"] == "counted" and stats["version"] == "1"
    assert stats["inference_count"] == samples  # every noisy sample classified
    assert stats["inference_count"] == metric(server.metrics_url, "smoothserve_noisy_samples_total",
                                              model="counted")  # fmt: skip
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == len(REQUESTS) and inference["success"]["ns"] > 0
    assert inference["fail"]["count"] == 1
    assert inference["queue"]["count"] == 2 * len(REQUESTS)  # selection and estimation jobs
    assert inference["compute_infer"]["count"] == stats["execution_count"] >= len(REQUESTS)
    assert inference["compute_infer"]["ns"] > 0
    assert inference["compute_output"]["count"] == len(REQUESTS)  # certification
    assert 0 < inference["compute_output"]["ns"] < inference["success"]["ns"]
    assert stats["last_inference"] > 0
    batches = stats["batch_stats"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == samples
    assert max(b["batch_size"] for b in batches) <= 256

    # per version, and every model; a model nobody asked has zeros
    versioned = http_client.get_inference_statistics("counted", "1")["model_stats"]
    assert versioned[0]["inference_count"] == samples
    every = {s["name"]: s for s in http_client.get_inference_statistics()["model_stats"]}
    assert set(every) == {"counted", "idle"} and every["idle"]["inference_count"] == 0
    grpc_every = grpc_client.get_inference_statistics().model_stats
    assert {s.name: s.inference_count for s in grpc_every} == {"counted": samples, "idle": 0}
    assert grpc_every[0].inference_stats.success.count == len(REQUESTS)


def test_statistics_of_an_unknown_model_or_version_are_not_found(stats_server):
    grpc_client = triton_grpc.InferenceServerClient(stats_server.address)
    for name, version in (("nope", ""), ("counted", "7")):
        with pytest.raises(InferenceServerException) as missing:
            grpc_client.get_inference_statistics(name, version)
        assert missing.value.status() == "StatusCode.NOT_FOUND"
    connection = http.client.HTTPConnection("127.0.0.1", stats_server.http_port, timeout=30)
    connection.request("GET", "/v2/models/nope/stats")
    response = connection.getresponse()
    assert response.status == 404 and "nope" in json.loads(response.read())["error"]
    connection.close()


def test_server_metadata_names_the_extensions(stats_server):
    extensions = triton_http.InferenceServerClient(
        f"127.0.0.1:{stats_server.http_port}").get_server_metadata()["extensions"]
    assert {"model_repository", "statistics"} <= set(extensions)
    over_grpc = triton_grpc.InferenceServerClient(stats_server.address).get_server_metadata()
    assert {"model_repository", "statistics"} <= set(over_grpc.extensions)
