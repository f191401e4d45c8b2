"""Bearer-token authentication and TLS credentials for the gRPC port.

Every call must carry ``authorization: Bearer <token>`` with one of the configured tokens,
except the grpc.health.v1 service, which stays open so load balancers and kubelets can
probe without a secret. Reflection is *not* exempt: it describes the API to whoever holds a
token, nobody else.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
MISSING = "missing bearer token: send metadata 'authorization: Bearer <token>'"
WRONG = "invalid bearer token"


def read_tokens(path: Path | None, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Tokens from ``path`` (one per line; blank lines and '#' comments skipped) plus ``extra``.

    A file that names no token is an error: an empty file must not silently disable auth.
    """
    tokens = [t.strip() for t in extra if t.strip()]
    if path is not None:
        lines = Path(path).read_text().splitlines()
        from_file = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not from_file:
            raise ValueError(f"auth tokens file {path} holds no token")
        tokens += from_file
    for token in tokens:
        if any(c.isspace() for c in token) or not token.isprintable():
            raise ValueError("bearer tokens must be printable and contain no whitespace")
    return tuple(dict.fromkeys(tokens))


def _deny(code: grpc.StatusCode, details: str) -> Callable[..., Awaitable[None]]:
    async def deny(_request_or_iterator, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    return deny


def _denying_handler(handler: grpc.RpcMethodHandler, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED."""
    deny = _deny(grpc.StatusCode.UNAUTHENTICATED, details)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        if not self._tokens:
            raise ValueError("no bearer token configured")

    def _valid(self, presented: str) -> bool:
        candidate = presented.encode()
        # Compare against every token, in constant time each, so timing says nothing.
        matches = [hmac.compare_digest(candidate, token) for token in self._tokens]
        return any(matches)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        values = [v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"]
        if not values:
            return _denying_handler(handler, MISSING)
        scheme, _, token = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not self._valid(token.strip()):
            log.info("refused %s: %s", method, WRONG)  # never log the token itself
            return _denying_handler(handler, WRONG)
        return handler


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """TLS for the gRPC port; with ``client_ca``, clients must present a certificate it signed."""
    root = Path(client_ca).read_bytes() if client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=root,
        require_client_auth=root is not None,
    )


def tokens_from_config(config) -> tuple[str, ...]:
    """The configured tokens (file and ``auth_tokens``); empty: authentication is off."""
    if config.auth_tokens_file is None and not config.auth_tokens:
        return ()
    return read_tokens(config.auth_tokens_file, config.auth_tokens)


__all__ = ["BearerTokenInterceptor", "read_tokens", "server_credentials", "tokens_from_config"]
