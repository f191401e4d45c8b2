"""Assembles the server: backend -> schedulers -> data plane -> gRPC, plus health,
reflection and metrics, and shuts it down cleanly on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
from datetime import UTC, datetime

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from smoothserve_client.api.v1 import smoothserve_pb2 as pb
from smoothserve_client.api.v1 import smoothserve_pb2_grpc as pb_grpc

from . import tracing
from .admission import Admission
from .backends import create_backend
from .config import ServerConfig
from .dataplane import DataPlane
from .engine import Engine, EngineError, build_engine
from .errors import ShuttingDown
from .metrics import Metrics, metrics_limits
from .scheduler import BatchScheduler
from .tracing import RequestIdFilter
from .transport.auth import (
    BearerTokenInterceptor,
    FailureLimiter,
    rest_tls,
    server_credentials,
    tokens_from_config,
)
from .transport.limits import MAX_HEALTH_WATCHES, HealthWatchLimit
from .transport.malformed import MalformedRequestInterceptor
from .transport.predict_call import ACCESS_LOGGER, refused_unread
from .transport.servicer import PRECHECKS, PREDICT_METHOD, SmoothServeServicer

log = logging.getLogger("smoothserve")
RPC_HEADROOM = 16  # calls beyond the Predict limit and the Watch streams: Check, ListModels...
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SmoothServe"].full_name


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.backend = create_backend(config)
        self.health = health.aio.HealthServicer()
        self.schedulers: dict[tuple[str, str], BatchScheduler] = {}
        self.grpc_server: grpc.aio.Server | None = None
        self.admission = Admission(
            config.max_samples_in_flight, config.max_concurrent_requests, self.metrics
        )
        self.port = 0
        self.metrics_port = -1
        self.http_port = -1
        self.rest = None
        self.auth_limiter = FailureLimiter()  # failed tokens per address, both gRPC and REST
        self.prechecks = dict(PRECHECKS)  # the OIP transport adds its own (wire.py)
        self.on_refused: dict = {}  # Predict methods: a refused message is counted and logged
        self.accepting = False  # OIP readiness: true between start-up and the drain
        self.engine: Engine | None = None  # backend, schedulers and data plane, once started

    async def start(self) -> None:
        try:
            engine = await build_engine(self.config, self.metrics, self.backend, self.admission)
        except EngineError as exc:
            raise SystemExit(str(exc)) from None
        self.engine, self.config, c = engine, engine.config, engine.config
        self.schedulers, self.plane = engine.schedulers, engine.plane
        plane, models = engine.plane, engine.plane.models
        self.on_refused[PREDICT_METHOD] = functools.partial(refused_unread, plane,
                                                            "INVALID_ARGUMENT")  # fmt: skip

        try:
            tokens = tokens_from_config(c)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"authentication: {exc}") from None
        self.grpc_server = grpc.aio.server(
            interceptors=[
                HealthWatchLimit(),
                *([BearerTokenInterceptor(tokens, self.auth_limiter)] if tokens else []),
                MalformedRequestInterceptor(self.prechecks, self.on_refused),
            ],
            # The outer door: beyond this many calls, gRPC core answers RESOURCE_EXHAUSTED at
            # once, without the event loop; admission refuses the few in between.
            maximum_concurrent_rpcs=c.max_concurrent_requests + MAX_HEALTH_WATCHES + RPC_HEADROOM,
            options=[
                ("grpc.max_receive_message_length", c.max_message_bytes),
                ("grpc.max_send_message_length", c.max_message_bytes),
                *(
                    [("grpc.max_connection_age_ms", int(c.max_connection_age_s * 1000)),
                     ("grpc.max_connection_age_grace_ms", int(c.grace_period_s * 1000))]
                    if c.max_connection_age_s > 0 else []
                ),
            ],
        )
        pb_grpc.add_SmoothServeServicer_to_server(
            SmoothServeServicer(plane), self.grpc_server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self._add_inference_protocol(plane, tokens)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME,
             # inference.GRPCInferenceService when OIP gRPC is on: it adds its prechecks
             *sorted({method.split("/")[1] for method in self.prechecks} - {SERVICE_NAME})),
            self.grpc_server,
        )  # fmt: skip
        address = f"{c.host}:{c.port}"
        if c.tls_cert and c.tls_key:
            credentials = server_credentials(c.tls_cert, c.tls_key, c.tls_client_ca)
            self.port = self.grpc_server.add_secure_port(address, credentials)
        else:
            self.port = self.grpc_server.add_insecure_port(address)
        if tokens and not c.tls_cert:
            log.warning("bearer tokens over plaintext gRPC: anyone on the path can read them")
        await self.grpc_server.start()
        if c.metrics_port >= 0:
            limits = metrics_limits(c.http_header_timeout_s, c.http_body_timeout_s)
            self.metrics_port = self.metrics.serve(c.metrics_host, c.metrics_port, limits)
        if self.rest is not None:
            tls = rest_tls(c.tls_cert, c.tls_key, c.tls_client_ca) if c.tls_cert else None
            self.http_port = await self.rest.start(c.host, c.http_port, tls)
        self.accepting = True
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        await self.health.set(SERVICE_NAME, serving)
        log.info(
            "serving %s on %s:%d (backend %s), metrics on port %d",
            ", ".join(sorted(models)), c.host, self.port, self.backend.name, self.metrics_port,
        )
        if c.ready_file:
            # Written whole, then renamed: a watcher never reads a half-written file.
            partial = c.ready_file.with_name(c.ready_file.name + ".partial")
            ports = {"port": self.port, "metrics_port": self.metrics_port,
                     "http_port": self.http_port}  # fmt: skip
            partial.write_text(json.dumps(ports))
            partial.replace(c.ready_file)

    def _add_inference_protocol(self, plane: DataPlane, tokens: tuple[str, ...]) -> None:
        """OIP over gRPC on the gRPC port and over REST on --http-port, when the ``oip`` extra
        is installed; without it, one log line (or an exit, if --http-port asks for REST)."""
        c = self.config
        try:
            if c.oip_grpc:
                from .transport import oip_grpc

                oip_grpc.add_to_server(plane, lambda: self.accepting, self.grpc_server)
                self.prechecks.update(oip_grpc.PRECHECKS)
                self.on_refused[oip_grpc.INFER_METHOD] = self.on_refused[PREDICT_METHOD]
            if c.http_port >= 0:
                from .transport.http_server import HttpLimits
                from .transport.oip_rest import RestServer

                limits = HttpLimits(c.http_header_timeout_s, c.http_body_timeout_s,
                                    c.http_max_connections)  # fmt: skip
                self.rest = RestServer(plane, lambda: self.accepting, tokens, c.max_message_bytes,
                                       self.auth_limiter, limits)  # fmt: skip
        except ImportError as exc:
            if c.http_port >= 0:
                raise SystemExit(f"--http-port needs the oip extra (pip install 'smoothserve[oip]'): {exc}") from None
            log.info("Open Inference Protocol off: install the oip extra for it (%s)", exc.name)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING and new Predict calls UNAVAILABLE while admitted ones
        finish, for up to ``grace`` seconds (default: the configured grace period); then
        whatever is still running is cancelled and the port closes."""
        grace = self.config.grace_period_s if grace is None else grace
        self.accepting = False
        await self.health.enter_graceful_shutdown()
        drained = await self.admission.drain(grace)
        if not drained:
            log.warning("grace period over: cancelling %d requests", self.admission.requests)
            over = ShuttingDown("the server shut down before this request finished; retry")
            # retired versions too (model control): their requests are still admitted
            schedulers = self.engine.all_schedulers() if self.engine else self.schedulers.values()
            for scheduler in schedulers:
                scheduler.fail_all(over)
            await self.admission.drain(1.0)  # let them send their status
        if self.grpc_server:
            await self.grpc_server.stop(0.5 if drained else 0)
        if self.rest is not None:
            await self.rest.stop()
        await self.metrics.stop()
        tracing.shutdown()
        if self.engine is not None:
            await self.engine.close()
        else:
            await self.backend.close()


async def serve(config: ServerConfig) -> None:
    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.1f s", config.grace_period_s)
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    config = ServerConfig.from_args(argv)
    configure_logging(config)
    try:
        tracing.configure(config.otlp_endpoint)
    except ImportError as exc:
        raise SystemExit(f"--otlp-endpoint needs the tracing extra (pip install 'smoothserve[tracing]'): {exc}") from None
    asyncio.run(serve(config))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
# A LogRecord's own attributes; any other one (``extra=``, the request ID) is a field of its own.
RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extra fields
    (request_id; the access log's model, outcome, latency_s...) and a traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= {k: v for k, v in vars(record).items() if k not in RECORD_ATTRIBUTES}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def configure_logging(config: ServerConfig) -> None:
    """Root handler on stderr in ``--log-format``; every line carries its request's ID (or
    "-"); Python's warnings go through it too (so JSON logs stay one object per line);
    ``--access-log false`` silences the per-request logger."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if config.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=config.log_level, handlers=[handler], force=True)
    logging.captureWarnings(True)
    logging.getLogger(ACCESS_LOGGER).disabled = not config.access_log
