"""Prometheus metrics. Every name here is documented in docs/operations.md and used by the
Grafana dashboard; a test checks that the dashboard only queries names a scrape shows."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BACKEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
FILL_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
RADIUS_BUCKETS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)


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
        self.rejected = Counter(
            "smoothserve_requests_rejected", "Predict requests refused before sampling, by reason "
            "(samples_in_flight, concurrent_requests, shutting_down).", ["reason"], registry=r,
        )  # fmt: skip

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server in a thread; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port
