"""Limits on what callers without a valid token can cost: failed-token attempts per address,
several authorization headers, half-open connections to /metrics, open health Watch streams.

Choice tested here: only failures are counted, and while an address is over the limit every
call from it gets RESOURCE_EXHAUSTED without its token being looked at, the right one too
(accepting it would tell a guesser which guess was right). Once the bucket refills, the right
token works again.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import health, scrape, write_linear_repo

from smoothserve.metrics import METRICS_WORKERS
from smoothserve.transport.auth import (
    FAILURE_BURST,
    FAILURES_PER_SECOND,
    LOG_INTERVAL_S,
    FailureLimiter,
    peer_address,
)
from smoothserve.transport.limits import MAX_HEALTH_WATCHES
from smoothserve_dev.testing import ServerProcess

TOKEN = "limits-token-0123456789abcdef"
LIST_MODELS = "/smoothserve.v1.SmoothServe/ListModels"
NEW_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_linear_repo(tmp_path_factory.mktemp("auth_limits"))


def _start(repo: Path) -> ServerProcess:
    return ServerProcess(repo, env={"SMOOTHSERVE_AUTH_TOKENS": TOKEN})


@pytest.fixture(scope="module")
def server(repo):
    with _start(repo) as running:
        yield running


def _list_models(channel: grpc.Channel, *values: str) -> grpc.StatusCode:
    call = channel.unary_unary(LIST_MODELS)
    metadata = tuple(("authorization", value) for value in values)
    try:
        call(b"", timeout=5, metadata=metadata)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_failure_limiter_buckets_eviction_and_log_throttle():
    clock = Clock()
    limiter = FailureLimiter(burst=3, per_second=2.0, max_addresses=2, log_interval=10, clock=clock)
    assert not limiter.blocked("a") and len(limiter) == 0  # successes are not tracked
    for _ in range(3):
        limiter.fail("a")
    assert limiter.blocked("a") and not limiter.blocked("b")
    clock.now = 0.4
    assert limiter.blocked("a")
    clock.now = 0.5  # one failure's worth back
    assert not limiter.blocked("a")
    limiter.fail("a")
    assert limiter.blocked("a")
    clock.now = 100.0  # refills to the burst, no further
    for _ in range(3):
        assert not limiter.blocked("a")
        limiter.fail("a")
    assert limiter.blocked("a")
    limiter.fail("b")
    limiter.fail("c")  # over max_addresses: "a", seen least recently, is forgotten
    assert len(limiter) == 2 and not limiter.blocked("a")
    assert limiter.log_now("d") == 0
    assert [limiter.log_now("d") for _ in range(4)] == [None] * 4
    clock.now = 110.0
    assert limiter.log_now("d") == 4


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.1.2.3:50051", "10.1.2.3"),
        ("ipv6:[2001:db8::7]:443", "2001:db8::/64"),
        ("ipv6:%5B2001:db8:0:0:1::7%5D:443", "2001:db8::/64"),
        ("ipv6:[::ffff:10.1.2.3]:443", "10.1.2.3"),
        ("unix:/run/smoothserve.sock", "unix:/run/smoothserve.sock"),
    ],
)
def test_peer_address_drops_the_port(peer, address):
    assert peer_address(peer) == address


def _hammer(address: str, seconds: float) -> dict[str, list[grpc.StatusCode]]:
    """Wrong tokens, each followed by the right one, for ``seconds``, on fresh connections."""
    codes: dict[str, list[grpc.StatusCode]] = {"wrong": [], "right": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with grpc.insecure_channel(address, options=NEW_CONNECTION) as channel:
            for _ in range(5):
                codes["wrong"].append(_list_models(channel, f"Bearer wrong-{len(codes['wrong'])}"))
                codes["right"].append(_list_models(channel, f"Bearer {TOKEN}"))
    return codes


def test_wrong_tokens_are_rate_limited_per_address(repo):
    with _start(repo) as server:
        started = time.monotonic()
        codes = []
        while grpc.StatusCode.RESOURCE_EXHAUSTED not in codes and len(codes) < 3 * FAILURE_BURST:
            # A new connection for every attempt: reconnecting must not reset the count.
            with grpc.insecure_channel(server.address, options=NEW_CONNECTION) as channel:
                codes.append(_list_models(channel, f"Bearer wrong-{len(codes)}"))
        refilled = (time.monotonic() - started) * FAILURES_PER_SECOND
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes
        assert set(codes[:-1]) == {grpc.StatusCode.UNAUTHENTICATED}
        assert FAILURE_BURST <= len(codes) - 1 <= FAILURE_BURST + refilled + 1

        hammer_started = time.monotonic()
        hammered = _hammer(server.address, 1.5)
        seconds = time.monotonic() - hammer_started
        unauthenticated = hammered["wrong"].count(grpc.StatusCode.UNAUTHENTICATED)
        assert unauthenticated <= seconds * FAILURES_PER_SECOND + 2, unauthenticated
        # While the address is over the limit, the right token is not even looked at.
        right = hammered["right"]
        assert right.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 0.8 * len(right), right

        time.sleep(1.5 / FAILURES_PER_SECOND)  # a failure's worth refilled: the token works
        with grpc.insecure_channel(server.address, options=NEW_CONNECTION) as channel:
            assert _list_models(channel, f"Bearer {TOKEN}") == grpc.StatusCode.OK
        elapsed = time.monotonic() - started
        log = server.log()

    refusals = [line for line in log.splitlines() if "refused" in line]
    assert refusals and all(re.search(r"from ipv4:127\.0\.0\.1:\d+", r) for r in refusals)
    # Dozens of refusals, one line per address per interval.
    assert len(refusals) <= 1 + elapsed / LOG_INTERVAL_S, refusals
    assert TOKEN not in log and "wrong-0" not in log


def test_several_authorization_headers_are_refused(server):
    with grpc.insecure_channel(server.address) as channel:
        assert _list_models(channel, f"Bearer {TOKEN}") == grpc.StatusCode.OK
        for second in (f"Bearer {TOKEN}", "Bearer other"):
            code = _list_models(channel, f"Bearer {TOKEN}", second)
            assert code == grpc.StatusCode.UNAUTHENTICATED
        assert _list_models(channel, "Bearer other", f"Bearer {TOKEN}") == (
            grpc.StatusCode.UNAUTHENTICATED
        )


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))


def test_half_open_metrics_connections_do_not_pile_up_threads(server):
    pid = server.process.pid
    before = _threads(pid)
    silent = []
    try:
        for _ in range(300):
            silent.append(socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5))
        time.sleep(1.0)  # time for the server to accept them all
        during = _threads(pid)
        names = {name for name, _, _ in scrape(server.metrics_url)}
        assert "smoothserve_requests_in_progress" in names  # a scrape still works meanwhile
    finally:
        for connection in silent:
            connection.close()
    assert during - before <= METRICS_WORKERS + 8, (before, during)


def _first_answer(call) -> grpc.StatusCode:
    try:
        next(call)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_health_watch_streams_are_bounded(server):
    extra = 10
    request = health_pb2.HealthCheckRequest(service="")
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        calls = [stub.Watch(request, timeout=30) for _ in range(MAX_HEALTH_WATCHES + extra)]
        try:
            codes = [_first_answer(call) for call in calls]
            assert codes.count(grpc.StatusCode.OK) == MAX_HEALTH_WATCHES
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == extra
            assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        finally:
            for call in calls:
                call.cancel()
        # Closed streams give their slots back.
        deadline = time.monotonic() + 10
        while _first_answer(stub.Watch(request, timeout=5)) != grpc.StatusCode.OK:
            assert time.monotonic() < deadline, "Watch slots were not given back"
            time.sleep(0.1)
