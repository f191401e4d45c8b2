"""Prometheus metrics. Every name here is documented in docs/operations.md and used by the
Grafana dashboard; a test checks that the dashboard only queries names a scrape shows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import logging
import platform
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted

from .noise import resolve_generator
from .records import server_version
from .transport.http_server import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    METRICS_MAX_CONNECTIONS,
    HttpDoor,
    HttpLimits,
)

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BACKEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
FILL_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
SAMPLE_BUCKETS = (100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
                  1_000_000)  # fmt: skip
MAX_BATCH_STATS = 64  # batch sizes itemized in a version's statistics (batch_stats)
RADIUS_BUCKETS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)

# Every reason admission refuses a request for (admission.py), each series made at start-up so
# that the dashboard's rejection panel and rate() see a 0 before the first refusal.
REJECT_REASONS = ("samples_in_flight", "concurrent_requests", "shutting_down")

# The /metrics HTTP server: one thread, running an event loop of its own (transport/http_server.py
# holds its timeouts and its cap of METRICS_MAX_CONNECTIONS connections).
METRICS_WORKERS = 1


class Metrics:
    """The server's metrics, in a registry of their own (so several servers can share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No *_created series (a creation timestamp beside every counter, histogram and
        # summary: 49 series nobody queries). prometheus_client has one switch for the whole
        # process, read at each scrape.
        disable_created_metrics()
        self.registry = registry or CollectorRegistry()
        self._server: MetricsServer | None = None
        r = self.registry
        # process_* (CPU, memory, open files, start time) and python_* (interpreter, GC), as
        # prometheus_client exports them on its default registry.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge(
            "smoothserve_build_info", "Always 1; the labels say what runs: the server's "
            "version, Python's, ONNX Runtime's, and the host noise generator that "
            "--noise-generator auto picks (ars5 when the fastnoise extra is installed).",
            ["version", "python_version", "onnxruntime_version", "noise_generator"], registry=r,
        )  # fmt: skip
        self.build_info.labels(*build_labels()).set(1)
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
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)

    def record_batch(self, model: str, backend: str, samples: int, batch_size: int,
                     backend_seconds: float, stats: ModelStats) -> None:  # fmt: skip
        """One backend batch of ``samples`` noisy samples of ``model``: the Prometheus metrics
        (by model) and the version's ``stats`` (the statistics extension) in one place."""
        self.backend_latency.labels(model, backend).observe(backend_seconds)
        self.noisy_samples.labels(model).inc(samples)
        self.batch_size.labels(model).observe(samples)
        self.batch_fill.labels(model).observe(samples / batch_size)
        stats.batch(samples, backend_seconds)

    def serve(self, host: str, port: int, limits: HttpLimits | None = None) -> int:
        """Start the /metrics HTTP server on a thread of its own; return the bound port (0 picks
        one). ``stop()`` closes it."""
        self._server = MetricsServer(self.registry, limits or metrics_limits())
        return self._server.start(host, port)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None


@dataclass
class Duration:
    """A count of events and their total time in nanoseconds (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, round(seconds * 1e9))

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """One model version's statistics since it was loaded, as the Open Inference Protocol's
    statistics extension reports them (Triton's ModelStatistics, docs/api.md):

    - ``inference_count``: noisy samples classified (each sample is one inference of the base
      network, as Triton counts each element of a batch); ``execution_count``: backend batches;
    - ``success``/``fail``: Predict requests answered or failed, and their time in the server;
    - ``queue``: sampling jobs' wait in the scheduler for their first batch;
    - ``compute_infer``: the backend's time per batch; ``batches``: the same by batch size
      (the first ``MAX_BATCH_STATS`` sizes seen: a batch's size varies with the requests in it);
    - ``compute_output``: certification (the statistics and the signed record) per request,
      the time a request spent outside sampling.
    """

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0  # milliseconds since the epoch of the last answer
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)

    def batch(self, samples: int, backend_seconds: float) -> None:
        self.inference_count += samples
        self.execution_count += 1
        self.compute_infer.add(backend_seconds)
        if samples in self.batches or len(self.batches) < MAX_BATCH_STATS:
            self.batches.setdefault(samples, Duration()).add(backend_seconds)

    def queued(self, seconds: float) -> None:
        self.queue.add(seconds)

    def request(self, succeeded: bool, seconds: float, sampling_seconds: float) -> None:
        """A Predict request on this version ended after ``seconds``, ``sampling_seconds`` of
        them waiting for samples; a successful one's remainder is its certification."""
        self.last_inference_ms = int(time.time() * 1000)
        if succeeded:
            self.success.add(seconds)
            self.compute_output.add(max(0.0, seconds - sampling_seconds))
        else:
            self.fail.add(seconds)

    def to_json(self, name: str, version: str) -> dict:
        """Triton's JSON form of ModelStatistics (REST ``/v2/models/.../stats``; the gRPC
        message is parsed from it)."""
        zero = Duration().to_json()
        inference = {
            "success": self.success.to_json(), "fail": self.fail.to_json(),
            "queue": self.queue.to_json(), "compute_input": zero,
            "compute_infer": self.compute_infer.to_json(),
            "compute_output": self.compute_output.to_json(), "cache_hit": zero, "cache_miss": zero,
        }  # fmt: skip
        return {
            "name": name, "version": version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": inference,
            "batch_stats": [
                {"batch_size": size, "compute_input": zero, "compute_infer": d.to_json(),
                 "compute_output": zero}
                for size, d in sorted(self.batches.items())
            ],  # fmt: skip
        }


def build_labels() -> tuple[str, str, str, str]:
    """smoothserve_build_info's labels: read from package metadata, nothing imported."""
    return (
        server_version(),
        platform.python_version(),
        next((v for v in map(_version, ("onnxruntime", "onnxruntime-gpu")) if v), "none"),
        resolve_generator("auto"),
    )


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""


def metrics_limits(header_timeout: float = HEADER_TIMEOUT_S,
                   body_timeout: float = BODY_TIMEOUT_S) -> HttpLimits:  # fmt: skip
    return HttpLimits(header_timeout, body_timeout, METRICS_MAX_CONNECTIONS)


class MetricsServer:
    """prometheus_client's exposition of ``registry`` at ``/metrics``, on an aiohttp door
    (``transport.http_server``: header and body timeouts, a connection cap, quiet logs) run by
    an event loop on a thread of its own, so a scrape answers even while the server's loop is
    busy. Honours ``Accept`` (OpenMetrics), ``Accept-Encoding: gzip`` and ``name[]``."""

    def __init__(self, registry: CollectorRegistry, limits: HttpLimits) -> None:
        self.registry = registry
        app = web.Application(client_max_size=64 * 1024)
        app.add_routes([web.get("/metrics", self._metrics)])
        self.door = HttpDoor(app, "metrics port", limits)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> int:
        loop = self._loop = asyncio.new_event_loop()
        bound: concurrent.futures.Future[int] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                bound.set_result(loop.run_until_complete(self.door.start(host, port)))
            except BaseException as exc:  # a port in use: the caller raises it
                bound.set_exception(exc)
                loop.close()
                return
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="metrics-http", daemon=True)
        self._thread.start()
        return bound.result()

    async def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.door.stop(), loop))
        loop.call_soon_threadsafe(loop.stop)

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        registry = self.registry
        if names := request.query.getall("name[]", []):
            registry = registry.restricted_registry(names)
        body = encoder(registry)
        headers = {"Content-Type": content_type}
        if gzip_accepted(request.headers.get("Accept-Encoding", "")):
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        return web.Response(body=body, headers=headers)
