"""SIGTERM: health NOT_SERVING, new requests UNAVAILABLE, in-flight ones finish within the
grace period, exit code 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2
from servers import CLEAR_INPUT, health, metric, write_linear_repo

from smoothserve_client.client import SmoothServeClient, SmoothServeError
from smoothserve_dev.testing import ServerProcess

SLOW = ["--batch-size", "32", "--pipeline-depth", "1"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_linear_repo(tmp_path_factory.mktemp("shutdown"))


def _start_long(server: ServerProcess, pool: ThreadPoolExecutor, n: int):
    before = metric(server.metrics_url, "smoothserve_noisy_samples_total")
    client = SmoothServeClient(server.address, timeout=60)
    future = pool.submit(client.predict, "lin", CLEAR_INPUT, mode="predict", n=n)
    deadline = time.monotonic() + 10
    while metric(server.metrics_url, "smoothserve_noisy_samples_total") == before:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return future


def test_sigterm_drains_then_exits_zero(repo):
    with ServerProcess(repo, [*SLOW, "--grace-period-s", "30"]) as server:
        with ThreadPoolExecutor(1) as pool:
            long = _start_long(server, pool, 300_000)
            server.signal(signal.SIGTERM)
            with grpc.insecure_channel(server.address) as channel:
                deadline = time.monotonic() + 5
                while health(channel) != health_pb2.HealthCheckResponse.NOT_SERVING:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            with SmoothServeClient(server.address, timeout=5) as client:
                with pytest.raises(SmoothServeError) as info:
                    client.predict("lin", CLEAR_INPUT, n0=10, n=10)
                assert info.value.code == grpc.StatusCode.UNAVAILABLE
                assert "shutting down" in info.value.details
            assert not long.done(), "the long request ended before the checks; make it longer"
            assert sum(long.result().counts) == 300_000
        assert server.process.wait(30) == 0
        assert "draining" in server.log()


def test_grace_period_bounds_the_wait(repo):
    with ServerProcess(repo, [*SLOW, "--grace-period-s", "1"]) as server:
        with ThreadPoolExecutor(1) as pool:
            endless = _start_long(server, pool, 1_000_000)
            sent = time.monotonic()
            server.signal(signal.SIGTERM)
            assert server.process.wait(15) == 0
            assert time.monotonic() - sent < 6
            with pytest.raises(SmoothServeError) as info:
                endless.result()
            assert info.value.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        log = server.log()
        assert "grace period over" in log
        # one quiet line per cancelled request, no traceback
        assert "Traceback" not in log and "CancelledError" not in log, log
        assert log.count("cancelled") <= 3, log
