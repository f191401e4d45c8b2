"""Bearer-token authentication and TLS credentials for the gRPC port.

Every call must carry exactly one ``authorization: Bearer <token>`` with one of the configured
tokens, except the grpc.health.v1 service, which stays open so load balancers and kubelets can
probe without a secret. Reflection is *not* exempt: it describes the API to whoever holds a
token, nobody else.

Failed attempts are rate-limited per client address (not per connection, so reconnecting does
not help): past a burst, a few a second. While an address is over the limit every call from
it that needs a token gets RESOURCE_EXHAUSTED without its token being looked at, the right
token included; otherwise the answer would tell a guesser which guess was right. Calls that
succeed cost nothing, so a client with the right token is refused only while its address is
also sending wrong ones. The REST door (oip_rest.py) checks the same tokens the same way and
charges the same limiter (app.py makes one for both), so switching ports buys no more guesses.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import grpc

from .limits import guarded

log = logging.getLogger(__name__)

# Health and liveness probes need no token (Kubernetes and load balancers send none).
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
MISSING = "missing bearer token: send metadata 'authorization: Bearer <token>'"
WRONG = "invalid bearer token"
SEVERAL = "several authorization headers"
TOO_MANY = "too many failed authentication attempts from this address; retry later"

# Failed attempts per address: a burst, then a steady rate (a token bucket). Guessing a token
# drops from thousands of tries a second to a few.
FAILURE_BURST = 20
FAILURES_PER_SECOND = 2.0
MAX_TRACKED_ADDRESSES = 10_000  # the least recently seen are forgotten first
LOG_INTERVAL_S = 10.0  # at most one refusal line per address per interval


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


def peer_address(peer: str) -> str:
    """The client address of a gRPC peer string, without the port: 'ipv4:10.1.2.3:5000' ->
    '10.1.2.3', keyed as ``address_key`` does; anything else (a Unix socket) is returned as
    it is."""
    family, _, rest = unquote(peer).partition(":")
    if family not in ("ipv4", "ipv6"):
        return peer
    key = address_key(rest.rpartition(":")[0].strip("[]"))
    return peer if key is None else key


def address_key(host: str) -> str | None:
    """The limiter's key for a client IP address (the REST door's ``request.remote``, or a gRPC
    peer's host), so both doors charge the same record: IPv4 as it is (IPv4-mapped IPv6 too),
    IPv6 by its /64, which one host can fill with addresses. None if ``host`` is no IP address.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class _Record:
    allowance: float
    updated: float
    logged: float = -math.inf
    suppressed: int = 0


class FailureLimiter:
    """Per-address token buckets charged by failed attempts, and a log throttle.

    Holds at most ``max_addresses`` records, evicting the least recently seen. Runs on the
    server's event loop only, so it takes no lock.
    """

    def __init__(
        self,
        burst: int = FAILURE_BURST,
        per_second: float = FAILURES_PER_SECOND,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        log_interval: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst, self.per_second = burst, per_second
        self.max_addresses, self.log_interval = max_addresses, log_interval
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, address: str) -> _Record:
        now = self._clock()
        record = self._records.get(address)
        if record is None:
            record = self._records[address] = _Record(float(self.burst), now)
            while len(self._records) > self.max_addresses:
                self._records.popitem(last=False)
            return record
        elapsed = now - record.updated
        record.allowance = min(self.burst, record.allowance + elapsed * self.per_second)
        record.updated = now
        self._records.move_to_end(address)
        return record

    def blocked(self, address: str) -> bool:
        """Whether ``address`` has used up its failures; an unknown address never is."""
        return address in self._records and self._record(address).allowance < 1

    def fail(self, address: str) -> None:
        record = self._record(address)
        record.allowance = max(0.0, record.allowance - 1)

    def log_now(self, address: str) -> int | None:
        """How many lines were suppressed since the last one, if a line may be logged now;
        None (and one more suppressed) if not."""
        record = self._record(address)
        if record.updated - record.logged < self.log_interval:
            record.suppressed += 1
            return None
        suppressed, record.suppressed, record.logged = record.suppressed, 0, record.updated
        return suppressed


def _refusal(
    metadata: Sequence[tuple[str, str | bytes]], valid: Callable[[str], bool]
) -> str | None:
    """Why ``metadata`` does not authenticate the call, or None if it does."""
    values = [v for k, v in metadata if k == "authorization"]
    if not values:
        return MISSING
    if len(values) > 1:
        return SEVERAL
    scheme, _, token = str(values[0]).partition(" ")
    if scheme.lower() != "bearer" or not valid(token.strip()):
        return WRONG
    return None


def token_refusal(headers: Sequence[tuple[str, str]], tokens: Iterable[str]) -> str | None:
    """Why these (lower-case) headers do not authenticate a call, or None if they do: the
    same rules as the gRPC interceptor, for the REST endpoints."""
    known = tuple(t.encode() for t in tokens)

    def valid(presented: str) -> bool:
        candidate = presented.encode()
        return any([hmac.compare_digest(candidate, token) for token in known])

    return _refusal(headers, valid)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """``limiter``: shared with the REST door (app.py), so a guesser's failures on either port
    count against one budget per address."""

    def __init__(self, tokens: Iterable[str], limiter: FailureLimiter | None = None) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        if not self._tokens:
            raise ValueError("no bearer token configured")
        self._limiter = FailureLimiter() if limiter is None else limiter  # empty: falsy

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
        metadata = tuple(handler_call_details.invocation_metadata or ())

        # The peer is known only once the call runs, so the check runs then.
        async def check(context: grpc.aio.ServicerContext) -> None:
            await self._admit(method, metadata, context)

        return guarded(handler, check)

    async def _admit(self, method: str, metadata, context: grpc.aio.ServicerContext) -> None:
        peer = context.peer() or "unknown"
        address = peer_address(peer)
        if self._limiter.blocked(address):
            await self._refuse(context, method, peer, grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_MANY)
        reason = _refusal(metadata, self._valid)
        if reason is None:
            return
        if reason != MISSING:  # only guesses are charged: a missing token guesses nothing
            self._limiter.fail(address)
        await self._refuse(context, method, peer, grpc.StatusCode.UNAUTHENTICATED, reason)

    async def _refuse(
        self, context: grpc.aio.ServicerContext, method: str, peer: str,
        code: grpc.StatusCode, reason: str,
    ) -> None:  # fmt: skip
        suppressed = self._limiter.log_now(peer_address(peer))
        if suppressed is not None:  # never log the token itself
            more = f"; {suppressed} refusals since the last line not logged" if suppressed else ""
            log.warning("refused %s from %s: %s%s", method, peer, reason, more)
        await context.abort(code, reason)


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


def rest_tls(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The same TLS (and mutual TLS) for the REST port as ``server_credentials`` for gRPC."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def tokens_from_config(config) -> tuple[str, ...]:
    """The configured tokens (file and ``auth_tokens``); empty: authentication is off."""
    if config.auth_tokens_file is None and not config.auth_tokens:
        return ()
    return read_tokens(config.auth_tokens_file, config.auth_tokens)


__all__ = [
    "BearerTokenInterceptor",
    "token_refusal",
    "FailureLimiter",
    "address_key",
    "peer_address",
    "read_tokens",
    "rest_tls",
    "server_credentials",
    "tokens_from_config",
]
