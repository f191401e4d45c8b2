"""The Predict service end to end through a real server on loopback."""

from __future__ import annotations

import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import LINEAR_SHAPE, LINEAR_SIGMA
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from servers import metric

from smoothcert.model_config import sha256_of
from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_dev.testing import ServerProcess


def grey() -> np.ndarray:
    return np.full(LINEAR_SHAPE, 0.7, dtype=np.float32)


def test_certify_response_names_everything_the_certificate_depends_on(client, linear_repo) -> None:
    r = client.predict("linear", grey(), n0=50, n=2_000, alpha=0.01, seed=5)
    assert r.mode == "certify"
    assert (r.n0, r.n, r.alpha, r.sigma) == (50, 2_000, 0.01, LINEAR_SIGMA)
    assert sum(r.counts) == 2_000 and sum(r.selection_counts) == 50
    assert (r.model_name, r.model_version) == ("linear", "1")
    assert r.model_sha256 == sha256_of(linear_repo / "linear" / "1" / "model.onnx")
    assert r.server_time_seconds > 0
    assert r.seed == 5
    assert r.label == ("positive" if r.prediction == 1 else "negative")


def test_server_defaults_apply_when_options_are_unset(client) -> None:
    r = client.predict("linear", grey())
    assert (r.n0, r.n, r.alpha) == (100, 10_000, 0.001)
    assert r.seed is None


def test_predict_mode_returns_no_radius(client) -> None:
    r = client.predict("linear", grey(), mode="predict", n=1_000, alpha=0.001)
    assert r.mode == "predict" and r.radius == 0.0 and r.n0 == 0
    assert r.selection_counts == () and sum(r.counts) == 1_000
    assert 0 <= r.p_value <= 0.001 or r.abstain


def test_seed_reproduces_counts_and_no_seed_does_not(client) -> None:
    x = np.full(LINEAR_SHAPE, 0.52, dtype=np.float32)
    a = client.predict("linear", x, n=5_000, seed=42)
    b = client.predict("linear", x, n=5_000, seed=42)
    c = client.predict("linear", x, n=5_000)
    d = client.predict("linear", x, n=5_000)
    assert a.counts == b.counts and a.selection_counts == b.selection_counts
    # Fresh noise: the selection and estimation counts together differ (the estimation counts
    # alone, with a standard deviation of about 35, coincide about one time in 130).
    assert len({(r.selection_counts, r.counts) for r in (a, c, d)}) == 3


def test_uint8_input_is_scaled_to_the_value_range(client) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=LINEAR_SHAPE, dtype=np.uint8)
    as_uint8 = client.predict("linear", pixels, n=3_000, seed=9)
    as_float = client.predict("linear", pixels.astype(np.float32) / 255, n=3_000, seed=9)
    assert as_uint8.counts == as_float.counts


def test_empty_model_name_means_the_default_model(client) -> None:
    assert client.predict("", grey(), n=100).model_name == "linear"


def test_concurrent_requests_all_answer(client) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda s: client.predict("linear", grey(), n=20_000, seed=s), range(8)))
    assert all(sum(r.counts) == 20_000 for r in results)


def test_list_models_and_model_info(client) -> None:
    (info,) = client.list_models()
    assert info.name == "linear" and info.version == "1" and info.available_versions == ("1",)
    assert info.sigma == LINEAR_SIGMA and info.labels == ("negative", "positive")
    assert info.input_shape == LINEAR_SHAPE and info.value_range == (0.0, 1.0)
    assert info.backend == "onnxruntime"
    assert client.model_info("linear") == info
    with pytest.raises(SmoothServeError) as error:
        client.model_info("nope")
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_health_service_reports_serving(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "smoothserve.v1.SmoothServe"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
    assert {"smoothserve.v1.SmoothServe", "grpc.health.v1.Health"} <= names


def scrape(server) -> dict[str, float]:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def test_metrics_move_with_requests(server, client) -> None:
    before = scrape(server)
    client.predict("linear", grey(), n=4_000, seed=1)
    client.predict("linear", np.full(LINEAR_SHAPE, 0.5, np.float32), n=1_000, seed=1)  # abstains
    with pytest.raises(SmoothServeError):
        client.predict("linear", grey(), n=-1)
    after = scrape(server)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    certified = 'smoothserve_requests_total{mode="certify",model="linear",outcome="certified"}'
    abstained = 'smoothserve_requests_total{mode="certify",model="linear",outcome="abstained"}'
    errors = 'smoothserve_requests_total{mode="certify",model="linear",outcome="error"}'
    assert delta(certified) == 1 and delta(abstained) == 1 and delta(errors) == 1
    assert delta('smoothserve_noisy_samples_total{model="linear"}') == 4_100 + 1_100
    assert delta('smoothserve_certified_radius_count{model="linear"}') == 1
    assert delta('smoothserve_request_latency_seconds_count{mode="certify",model="linear"}') == 3
    assert delta('smoothserve_batch_size_count{model="linear"}') >= 4
    assert delta('smoothserve_backend_latency_seconds_count{backend="onnxruntime",model="linear"}') >= 4
    assert 'smoothserve_queue_depth{model="linear"}' in after


def test_unknown_model_names_do_not_become_metric_labels(server, client) -> None:
    for name in ("resnet-a", "resnet-b", "x" * 200):
        with pytest.raises(SmoothServeError) as error:
            client.predict(name, grey(), n=10)
        assert error.value.code == grpc.StatusCode.NOT_FOUND
    labels = {key for key in scrape(server) if key.startswith("smoothserve_requests_total")}
    assert not any("resnet" in key or "xxxx" in key for key in labels)
    assert any('model="(unknown)"' in key for key in labels)


def test_channel_options_spread_requests_over_servers(linear_repo):
    """Client-side round robin over two servers (as over the pods behind a headless Service):
    every server gets requests."""
    with ServerProcess(linear_repo) as a, ServerProcess(linear_repo) as b:
        address = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
        with SmoothServeClient(address, channel_options=[("grpc.lb_policy_name", "round_robin")]) as client:
            for _ in range(6):
                client.predict("linear", grey(), n0=10, n=100)
        served = [metric(s.metrics_url, "smoothserve_noisy_samples_total") for s in (a, b)]
    assert all(count > 0 for count in served), served


def test_max_connection_age_recycles_client_connections(linear_repo):
    """With --max-connection-age-s 1, the server closes an idle client's connection after about
    a second (so clients re-resolve DNS and reach new pods); without it, it stays open."""
    def left_ready(args: list[str]) -> bool:
        with ServerProcess(linear_repo, args) as server:
            channel = grpc.insecure_channel(server.address)
            states: list[grpc.ChannelConnectivity] = []
            channel.subscribe(states.append, try_to_connect=True)
            grpc.channel_ready_future(channel).result(timeout=10)
            time.sleep(3)
            channel.unsubscribe(states.append)
            channel.close()
        after = states[states.index(grpc.ChannelConnectivity.READY):]
        return any(s != grpc.ChannelConnectivity.READY for s in after)

    assert left_ready(["--max-connection-age-s", "1"])
    assert not left_ready([])
