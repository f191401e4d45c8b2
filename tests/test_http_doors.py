"""The HTTP doors (the metrics port and the REST port) against hostile clients, on a real server:
partial requests, slowloris header-dripping, slow bodies, connection floods under a low
open-file limit, clients that disconnect mid-request, malformed HTTP before the token check,
and token guesses split between the REST and gRPC ports (one failure budget per address)."""

from __future__ import annotations

import contextlib
import json
import math
import resource
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from servers import metric, scrape, write_linear_repo

from smoothserve.transport.auth import FAILURE_BURST, FAILURES_PER_SECOND
from smoothserve_dev.testing import ServerProcess

TOKEN = "doors-token-0123456789abcdef"
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
ARGS = [
    "--http-port", "0", "--auth-tokens", TOKEN,
    "--http-header-timeout-s", str(HEADER_TIMEOUT_S), "--http-body-timeout-s", str(BODY_TIMEOUT_S),
    "--batch-size", "16", "--pipeline-depth", "1",
]  # fmt: skip
PROMPT_S = 2.0  # a scrape or a readiness check made under attack answers within this


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_linear_repo(tmp_path_factory.mktemp("doors"))


@pytest.fixture(scope="module")
def server(repo):
    with ServerProcess(repo, ARGS) as running:
        yield running


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def closed_by_server(connection: socket.socket, wait: float = 0.0) -> bool:
    """Whether the server has closed ``connection`` (EOF or reset), waiting up to ``wait`` s."""
    readable, _, _ = select.select([connection], [], [], wait)
    if not readable:
        return False
    try:
        while chunk := connection.recv(65536):  # an error response may come first
            if not select.select([connection], [], [], 0.5)[0]:
                return False
            del chunk
    except (ConnectionResetError, TimeoutError):
        return True
    return True


def timed_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, float]:
    started = time.monotonic()
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status, time.monotonic() - started


def ready_url(server) -> str:
    return f"http://127.0.0.1:{server.http_port}/v2/health/ready"


def assert_no_traceback(server) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "Invalid file descriptor" not in log and "Too many open files" not in log


def test_metrics_port_survives_hundreds_of_partial_requests(server):
    partial = []
    try:
        for _ in range(300):
            connection = connect(server.metrics_port)
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: ")
            partial.append(connection)
        status, seconds = timed_get(server.metrics_url)
        assert status == 200 and seconds < PROMPT_S, (status, seconds)
    finally:
        for connection in partial:
            connection.close()
    time.sleep(0.5)
    names = {name for name, _, _ in scrape(server.metrics_url)}
    assert "smoothserve_requests_in_progress" in names
    assert_no_traceback(server)


class Dripper:
    """Slowloris: connections that each send a request line, then one header line every
    ``every`` seconds, forever; records how long the server took to close each one."""

    def __init__(self, ports: list[int], every: float = 0.25) -> None:
        self.connections = [connect(port) for port in ports]
        for connection in self.connections:
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        self.started = time.monotonic()
        self.closed_after: dict[int, float] = {}
        self.every, self._stop = every, threading.Event()
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()

    def _drip(self) -> None:
        while not self._stop.wait(self.every):
            for i, connection in enumerate(self.connections):
                if i in self.closed_after:
                    continue
                if closed_by_server(connection):
                    self.closed_after[i] = time.monotonic() - self.started
                    continue
                with contextlib.suppress(OSError):
                    connection.sendall(b"X-Drip: still here\r\n")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self.connections:
            connection.close()


def test_slowloris_is_closed_by_the_header_timeout_and_blocks_no_scrape(server):
    dripper = Dripper([server.metrics_port] * 8 + [server.http_port] * 8)
    try:
        time.sleep(0.3)  # every connection is dripping
        status, seconds = timed_get(server.metrics_url)
        assert status == 200 and seconds < PROMPT_S, ("scrape", status, seconds)
        status, seconds = timed_get(ready_url(server))
        assert status == 200 and seconds < PROMPT_S, ("ready", status, seconds)
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 4
        while len(dripper.closed_after) < len(dripper.connections):
            assert time.monotonic() < deadline, f"still open: {dripper.closed_after}"
            time.sleep(0.1)
    finally:
        dripper.stop()
    assert max(dripper.closed_after.values()) < HEADER_TIMEOUT_S + 3
    assert_no_traceback(server)


def test_a_body_that_does_not_arrive_in_time_closes_the_connection(server):
    connection = connect(server.http_port)
    try:
        connection.sendall(
            b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n".encode()
            + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"inputs": '
        )
        started = time.monotonic()
        assert closed_by_server(connection, BODY_TIMEOUT_S + 3)
        assert time.monotonic() - started < BODY_TIMEOUT_S + 2
    finally:
        connection.close()


def infer_request(n: int) -> bytes:
    body = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                    "data": [0.8] * 64}],
        "parameters": {"n": n},
    }).encode()  # fmt: skip
    head = (
        "POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_client_that_disconnects_frees_its_request_and_samples(server):
    url = server.metrics_url
    wait_for(lambda: metric(url, "smoothserve_requests_in_progress") == 0, 30, "server busy")
    clients = [connect(server.http_port) for _ in range(3)]
    for connection in clients:
        connection.sendall(infer_request(1_000_000))
    try:
        wait_for(lambda: metric(url, "smoothserve_requests_in_progress") == 3, 10, "not admitted")
        assert metric(url, "smoothserve_samples_in_flight") > 0
    finally:
        for connection in clients:
            connection.close()
    wait_for(lambda: metric(url, "smoothserve_requests_in_progress") == 0, 5,
             "disconnected requests still in progress")  # fmt: skip
    wait_for(lambda: metric(url, "smoothserve_samples_in_flight") == 0, 5,
             "disconnected requests still hold samples")  # fmt: skip
    assert metric(url, "smoothserve_requests_total", outcome="cancelled") >= 3
    assert_no_traceback(server)


def test_malformed_http_before_auth_logs_no_traceback(server):
    before = server.log()
    hostile = [
        b"GARBAGE\r\n\r\n",
        b"GET /v2/models/lin HTTP/1.1\r\nthis is no header\r\n\r\n",
        b"GET /v2/models/lin HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b'POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{"in',
        # With the token: the handler is reading the body when the client drops.
        infer_request(100)[:-40],
    ]
    for _ in range(20):
        for payload in hostile:
            with connect(server.http_port) as connection:
                connection.sendall(payload)
                if payload.startswith(b"POST"):
                    time.sleep(0.01)  # the head is parsed, the body under way
    status, _ = timed_get(ready_url(server))
    assert status == 200
    time.sleep(0.5)
    new = server.log()[len(before) :]
    assert "Traceback" not in new, new[-3000:]
    # 100 hostile requests: one throttled line per 10 s (two if the test straddles a window).
    assert new.count("smoothserve.transport.http_server") <= 2, new


def test_token_failures_on_rest_count_toward_grpc_blocking(repo):
    with ServerProcess(repo, ["--http-port", "0", "--auth-tokens", TOKEN]) as running:
        url = f"http://127.0.0.1:{running.http_port}/v2/models/lin"
        half = FAILURE_BURST // 2
        started = time.monotonic()
        for _ in range(half):
            assert timed_get(url, {"Authorization": "Bearer wrong"})[0] == 401
        guesses = 0  # gRPC guesses answered UNAUTHENTICATED before the address is blocked
        with grpc.insecure_channel(running.address) as channel:
            call = channel.unary_unary("/smoothserve.v1.SmoothServe/ListModels")
            for _ in range(2 * FAILURE_BURST):
                try:
                    call(b"", timeout=5, metadata=(("authorization", "Bearer wrong"),))
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        break
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                guesses += 1
        # The bucket refills while the test runs; separate limiters would allow a whole burst.
        refilled = math.ceil((time.monotonic() - started) * FAILURES_PER_SECOND)
        assert FAILURE_BURST - half <= guesses <= FAILURE_BURST - half + refilled, guesses
        assert guesses < FAILURE_BURST
        # And the other way round: the REST door refuses the address too, right token or not.
        assert timed_get(url, {"Authorization": f"Bearer {TOKEN}"})[0] == 429


@contextlib.contextmanager
def open_file_limit(soft: int):
    """Lower this process's soft open-file limit (children inherit it) for the block."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def test_idle_connections_beyond_the_cap_do_not_stop_readiness(repo):
    """Under a 768-descriptor limit, 900 silent connections: the REST door keeps its cap below
    the limit (closing the oldest idle ones), so readiness still answers at once."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip("needs an open-file limit of at least 1024 for the client side")
    with open_file_limit(768):
        running = ServerProcess(repo, ["--http-port", "0"]).start()
    idle = []
    try:
        for _ in range(900):
            idle.append(connect(running.http_port))
        time.sleep(0.5)
        status, seconds = timed_get(ready_url(running))
        assert status == 200 and seconds < PROMPT_S, (status, seconds)
        assert closed_by_server(idle[0], 2.0), "the oldest idle connection is still open"
        assert not closed_by_server(idle[-1]), "the newest connection was closed"
        log = running.log()
        assert "at most 256 connections" in log
        assert "Traceback" not in log and "Too many open files" not in log, log[-3000:]
    finally:
        for connection in idle:
            connection.close()
        running.stop()
