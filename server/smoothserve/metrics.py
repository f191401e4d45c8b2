"""Prometheus metrics. Every name here is documented in docs/operations.md and used by the
Grafana dashboard; a test checks that the dashboard only queries names a scrape shows."""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import threading
import time
from http.server import HTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import MetricsHandler

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BACKEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
FILL_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
SAMPLE_BUCKETS = (100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
                  1_000_000)  # fmt: skip
RADIUS_BUCKETS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)

# The /metrics HTTP server. A connection waits without a thread until it sends something, then
# one of a few workers serves it; past the connection cap the oldest silent one is closed.
METRICS_WORKERS = 4
METRICS_MAX_CONNECTIONS = 64
METRICS_IDLE_TIMEOUT_S = 5.0  # to start sending a request
METRICS_IO_TIMEOUT_S = 5.0  # per read or write once a worker has the connection


class Metrics:
    """The server's metrics, in a registry of their own (so several servers can share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "smoothserve_requests", "Predict requests by model, mode and outcome (certified, "
            "abstained, error, rejected, cancelled or deadline_exceeded).",
            ["model", "mode", "outcome"], registry=r,
        )  # fmt: skip
        self.request_latency = Histogram(
            "smoothserve_request_latency_seconds", "Server-side time per Predict request.",
            ["model", "mode"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.noisy_samples = Counter(
            "smoothserve_noisy_samples", "Noisy samples classified by the backend.", ["model"],
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "smoothserve_batch_size", "Noisy samples per backend batch.", ["model"],
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_fill = Histogram(
            "smoothserve_batch_fill_ratio", "Batch size over the configured batch size.",
            ["model"], buckets=FILL_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "smoothserve_queue_depth", "Sampling jobs waiting for or in backend batches.",
            ["model"], registry=r,
        )  # fmt: skip
        self.backend_latency = Histogram(
            "smoothserve_backend_latency_seconds", "Time the backend takes per batch.",
            ["model", "backend"], buckets=BACKEND_BUCKETS, registry=r,
        )  # fmt: skip
        self.certified_radius = Histogram(
            "smoothserve_certified_radius", "Certified L2 radii of non-abstaining CERTIFY answers.",
            ["model"], buckets=RADIUS_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_progress = Gauge(
            "smoothserve_requests_in_progress", "Predict requests being served.", registry=r
        )
        self.samples_in_flight = Gauge(
            "smoothserve_samples_in_flight", "Noisy samples admitted and not yet classified "
            "(released batch by batch), across all models.", registry=r,
        )  # fmt: skip
        self.samples_in_flight_limit = Gauge(
            "smoothserve_samples_in_flight_limit", "The configured --max-samples-in-flight "
            "(dashboards and alerts show saturation as samples_in_flight over this).", registry=r,
        )  # fmt: skip
        self.samples_abandoned = Counter(
            "smoothserve_samples_abandoned", "Admitted noisy samples never drawn because their "
            "request was cancelled, ran past its deadline or failed.", ["model"], registry=r,
        )  # fmt: skip
        self.samples_per_certificate = Histogram(
            "smoothserve_samples_per_certificate", "Noisy samples (n0 + estimation samples "
            "drawn) per CERTIFY answer, by procedure (fixed_n, target_radius, anytime).",
            ["model", "procedure"], buckets=SAMPLE_BUCKETS, registry=r,
        )  # fmt: skip
        self.models = Gauge(
            "smoothserve_models", "Model versions by state: ready (served) or failed (to load; "
            "ListModels gives the reason).", ["state"], registry=r,
        )  # fmt: skip
        self.seeded_requests = Counter(
            "smoothserve_seeded_requests", "Predict requests that chose the noise seed, by "
            "whether the server accepted them (--allow-client-seeds).", ["model", "accepted"],
            registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "smoothserve_requests_rejected", "Predict requests refused before sampling, by reason "
            "(samples_in_flight, concurrent_requests, shutting_down).", ["reason"], registry=r,
        )  # fmt: skip

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server in a thread; return the bound port (0 picks one)."""
        server = BoundedMetricsServer(host, port, self.registry)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return server.server_port


def _bind_family(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The address family and address to bind for ``host`` (IPv4 or IPv6, as it resolves)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, str(sockaddr[0])


class BoundedMetricsServer(HTTPServer):
    """prometheus_client's exposition handler with a bounded number of threads and connections.

    One thread accepts connections and watches them in a selector until they send a request;
    ``workers`` threads serve the ones that have. Silent connections are closed after
    ``idle_timeout`` seconds, or sooner, oldest first, when ``max_connections`` are open. A
    thread per connection (prometheus_client's own server) lets half-open connections pile up
    threads without limit.
    """

    request_queue_size = 128

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        workers: int = METRICS_WORKERS,
        max_connections: int = METRICS_MAX_CONNECTIONS,
        idle_timeout: float = METRICS_IDLE_TIMEOUT_S,
    ) -> None:
        self.address_family, host = _bind_family(host, port)
        handler = type(
            "MetricsHandler", (MetricsHandler.factory(registry),), {"timeout": METRICS_IO_TIMEOUT_S}
        )
        super().__init__((host, port), handler)
        self.socket.setblocking(False)
        self._workers, self._max_connections = workers, max_connections
        self._idle_timeout = idle_timeout
        self._idle: dict[socket.socket, tuple[float, object]] = {}  # oldest first
        self._queued = 0  # handed to the workers, not yet closed
        self._lock = threading.Lock()
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._selector = selectors.DefaultSelector()
        self._stop, self._stopped = threading.Event(), threading.Event()
        for i in range(workers):  # daemons: a stuck client must not hold up the process's exit
            threading.Thread(target=self._work, name=f"metrics-http-{i}", daemon=True).start()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(poll_interval):
                    if key.fileobj is self.socket:
                        self._accept()
                    else:
                        self._hand_over(key.fileobj)
                self._expire(time.monotonic())
        finally:
            for connection in list(self._idle):
                self._drop(connection)
            for _ in range(self._workers):
                self._ready.put(None)
            self._selector.close()
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait()

    def handle_error(self, request, client_address) -> None:
        log.debug("metrics request from %s failed", client_address, exc_info=True)

    def _accept(self) -> None:
        try:
            connection, address = self.socket.accept()
        except OSError:  # gone before we got to it
            return
        if len(self._idle) + self._queued >= self._max_connections:
            if not self._idle:
                self.close_request(connection)
                return
            self._drop(next(iter(self._idle)))
        self._idle[connection] = (time.monotonic(), address)
        self._selector.register(connection, selectors.EVENT_READ)

    def _hand_over(self, connection: socket.socket) -> None:
        self._selector.unregister(connection)
        _, address = self._idle.pop(connection)
        with self._lock:
            self._queued += 1
        self._ready.put((connection, address))

    def _expire(self, now: float) -> None:
        for connection, (since, _) in list(self._idle.items()):
            if now - since < self._idle_timeout:
                break
            self._drop(connection)

    def _drop(self, connection: socket.socket) -> None:
        self._selector.unregister(connection)
        del self._idle[connection]
        self.close_request(connection)

    def _work(self) -> None:
        while (item := self._ready.get()) is not None:
            connection, address = item
            try:
                self.finish_request(connection, address)
            except Exception:
                self.handle_error(connection, address)
            finally:
                self.shutdown_request(connection)
                with self._lock:
                    self._queued -= 1
