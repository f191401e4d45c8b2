"""Admission control on a real server: bounded samples in flight, bounded concurrency,
bounded message size; each refusal is RESOURCE_EXHAUSTED at once, never a queue."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from servers import CLEAR_INPUT, metric, write_linear_repo

from smoothserve.config import ServerConfig
from smoothserve_client.client import SmoothServeClient, SmoothServeError
from smoothserve_dev.testing import ServerProcess

MAX_SAMPLES = 320_000
MAX_REQUESTS = 3
IN_FLIGHT = "smoothserve_samples_in_flight"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = [
        "--batch-size", "32", "--pipeline-depth", "1",  # small batches: long requests
        "--max-n0", "1000", "--max-n", "300000",
        "--max-samples-in-flight", str(MAX_SAMPLES),
        "--max-concurrent-requests", str(MAX_REQUESTS),
        "--max-message-bytes", str(64 * 1024),
    ]  # fmt: skip
    with ServerProcess(write_linear_repo(tmp_path_factory.mktemp("limits")), args) as server:
        yield server


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _refusal(client: SmoothServeClient, n: int) -> tuple[SmoothServeError, float]:
    started = time.monotonic()
    with pytest.raises(SmoothServeError) as info:
        client.predict("lin", CLEAR_INPUT, mode="predict", n=n)
    return info.value, time.monotonic() - started


def _long(pool: ThreadPoolExecutor, client: SmoothServeClient, n: int) -> Future:
    return pool.submit(client.predict, "lin", CLEAR_INPUT, mode="predict", n=n)


def test_samples_in_flight_are_bounded(server):
    with SmoothServeClient(server.address, timeout=60) as client, ThreadPoolExecutor(2) as pool:
        first = _long(pool, client, 250_000)
        _wait_for(lambda: metric(server.metrics_url, IN_FLIGHT) > 0)  # admitted
        error, seconds = _refusal(client, 300_000)  # fits alone, not beside the first
        assert not first.done(), "the first request ended too early to prove anything"
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and seconds < 1.0
        assert "in flight" in error.details
        assert client.predict("lin", CLEAR_INPUT, mode="predict", n=50_000).n == 50_000  # fits
        assert sum(first.result().counts) == 250_000
    _wait_for(lambda: metric(server.metrics_url, IN_FLIGHT) == 0)
    assert client_predict_ok(server, 100_000)  # admitted once the budget is free again
    rejected = metric(
        server.metrics_url, "smoothserve_requests_rejected_total", reason="samples_in_flight"
    )
    assert rejected >= 1


def test_the_gauge_falls_batch_by_batch(server):
    readings = []
    with SmoothServeClient(server.address, timeout=60) as client, ThreadPoolExecutor(1) as pool:
        running = _long(pool, client, 250_000)
        while not running.done():
            readings.append(metric(server.metrics_url, IN_FLIGHT))
            time.sleep(0.05)
        assert sum(running.result().counts) == 250_000
    assert any(0 < value < 200_000 for value in readings), readings  # released as classified
    assert metric(server.metrics_url, IN_FLIGHT) == 0


def client_predict_ok(server, n: int) -> bool:
    with SmoothServeClient(server.address, timeout=60) as client:
        return sum(client.predict("lin", CLEAR_INPUT, mode="predict", n=n).counts) == n


def test_concurrent_requests_are_bounded(server):
    with SmoothServeClient(server.address, timeout=60) as client, ThreadPoolExecutor(3) as pool:
        running = [_long(pool, client, 100_000) for _ in range(MAX_REQUESTS)]
        # Over 200,000 samples in flight: all three are admitted.
        _wait_for(lambda: metric(server.metrics_url, IN_FLIGHT) > 200_000)
        error, seconds = _refusal(client, 10)
        assert not all(f.done() for f in running), "requests ended too early to prove anything"
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and seconds < 1.0
        assert "requests in progress" in error.details
        assert all(sum(f.result().counts) == 100_000 for f in running)
    assert client_predict_ok(server, 10)


def test_oversized_message_gets_a_clear_status(server):
    huge = np.zeros((1, 128, 128), np.float32)  # 64 KiB of data plus the envelope
    with SmoothServeClient(server.address, timeout=10) as client:
        with pytest.raises(SmoothServeError) as info:
            client.predict("lin", huge, n=10)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in info.value.details, info.value.details
        assert "--max-message-bytes" in info.value.details
        assert client.predict("lin", CLEAR_INPUT, n0=10, n=100).prediction == 1


def test_n_and_n0_limits_are_invalid_argument(server):
    with SmoothServeClient(server.address, timeout=10) as client:
        for kwargs in ({"n": 300_001}, {"n0": 1001, "n": 10}, {"n": 0}):
            with pytest.raises(SmoothServeError) as info:
                client.predict("lin", CLEAR_INPUT, **kwargs)
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-samples-in-flight", "1000"],  # below max_n0 + max_n
        ["--max-concurrent-requests", "0"],
        ["--grace-period-s", "-1"],
    ],
)
def test_inconsistent_limits_are_refused_at_startup(argv):
    with pytest.raises(SystemExit):
        ServerConfig.from_args(argv, environ={})
