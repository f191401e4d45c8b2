"""Health probe for container HEALTHCHECKs and supervisors: asks the gRPC health service.

``python -m smoothserve.healthcheck`` exits 0 when the server answers SERVING, else 1. The
address defaults to 127.0.0.1 on the port the server itself would use (``SMOOTHSERVE_PORT``,
else 50051), so the probe needs no flag inside the server's container.

When the server runs with TLS (``SMOOTHSERVE_TLS_CERT`` is set) the probe speaks TLS too,
trusting ``SMOOTHSERVE_HEALTHCHECK_TLS_CA`` (default: the server's own certificate, which is
right for a self-signed one); with mutual TLS it presents ``SMOOTHSERVE_HEALTHCHECK_TLS_CERT``
and ``SMOOTHSERVE_HEALTHCHECK_TLS_KEY``. Flags override all of these.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .config import ServerConfig


def default_address(environ: Mapping[str, str] = os.environ) -> str:
    port = environ.get(ServerConfig.env_name("port"), "").strip() or "50051"
    return f"127.0.0.1:{port}"


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def credentials(
    ca: str | None, cert: str | None = None, key: str | None = None
) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files, or None for plaintext when no CA is given."""
    if not ca:
        return None
    return grpc.ssl_channel_credentials(_read(ca), _read(key), _read(cert))


def check(
    address: str,
    service: str = "",
    timeout: float = 3.0,
    tls: grpc.ChannelCredentials | None = None,
) -> tuple[bool, str]:
    """(serving, a one-line description) for ``service`` ("" is the whole server)."""
    channel = grpc.secure_channel(address, tls) if tls else grpc.insecure_channel(address)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            return False, f"{address}: {error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def main(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smoothserve.healthcheck",
        description="Exit 0 if the SmoothServe server answers SERVING on the gRPC health service.",
    )
    parser.add_argument(
        "--address", default=default_address(),
        help="host:port of the gRPC server (default: 127.0.0.1:$SMOOTHSERVE_PORT or 50051)",
    )  # fmt: skip
    parser.add_argument("--service", default="", help='service name; "" (default) is the server')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    server_cert = environ.get(ServerConfig.env_name("tls_cert"))
    parser.add_argument(
        "--tls-ca", default=environ.get("SMOOTHSERVE_HEALTHCHECK_TLS_CA", server_cert),
        help="PEM CA to trust; set: TLS (default: $SMOOTHSERVE_HEALTHCHECK_TLS_CA, else "
        "$SMOOTHSERVE_TLS_CERT; neither: plaintext)",
    )  # fmt: skip
    parser.add_argument(
        "--tls-cert", default=environ.get("SMOOTHSERVE_HEALTHCHECK_TLS_CERT"),
        help="PEM client certificate, for mutual TLS ($SMOOTHSERVE_HEALTHCHECK_TLS_CERT)",
    )  # fmt: skip
    parser.add_argument(
        "--tls-key", default=environ.get("SMOOTHSERVE_HEALTHCHECK_TLS_KEY"),
        help="PEM client key, for mutual TLS ($SMOOTHSERVE_HEALTHCHECK_TLS_KEY)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    tls = credentials(args.tls_ca, args.tls_cert, args.tls_key)
    serving, line = check(args.address, args.service, args.timeout, tls)
    if not args.quiet:
        print(line, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
