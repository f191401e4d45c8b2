"""TLS, mutual TLS and bearer tokens on a real server; logs never hold inputs or tokens."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from certs import Pki, make_pki
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from servers import CLEAR_INPUT, SHAPE, health, write_linear_repo

from smoothserve.config import ServerConfig
from smoothserve_client.client import SmoothServeClient, SmoothServeError
from smoothserve_dev.testing import ServerProcess

FILE_TOKEN = "file-token-0123456789abcdef"
ENV_TOKENS = ("env-token-one", "env-token-two")
PATTERN = (b"SMOOTHSERVE-SECRET-PIXELS-" * 3)[:64]  # a recognisable (1, 8, 8) uint8 image


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_linear_repo(tmp_path_factory.mktemp("security"))


@pytest.fixture(scope="module")
def tls_server(pki, repo, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text(f"# operators\n\n{FILE_TOKEN}\n")
    args = [
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
        "--auth-tokens-file", str(tokens), "--log-level", "DEBUG",
    ]  # fmt: skip
    env = {"SMOOTHSERVE_AUTH_TOKENS": ",".join(ENV_TOKENS)}
    with ServerProcess(repo, args, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(pki, repo):
    args = [
        "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
        "--tls-client-ca", str(pki.ca.cert),
    ]  # fmt: skip
    with ServerProcess(repo, args) as server:
        yield server


def _client(server, pki: Pki, **kwargs) -> SmoothServeClient:
    return SmoothServeClient(server.address, timeout=10, tls_ca=pki.ca.cert_bytes, **kwargs)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(SmoothServeError) as info:
        call()
    return info.value.code


def test_tls_with_file_and_env_tokens(tls_server, pki):
    for token in (FILE_TOKEN, *ENV_TOKENS):
        with _client(tls_server, pki, token=token) as client:
            result = client.predict("lin", CLEAR_INPUT, n0=10, n=200)
            assert result.prediction == 1 and sum(result.counts) == 200


@pytest.mark.parametrize("token", [None, "wrong-token", FILE_TOKEN[:-1], FILE_TOKEN + "x"])
def test_missing_or_wrong_token_is_unauthenticated(tls_server, pki, token):
    with _client(tls_server, pki, token=token) as client:
        assert _code(lambda: client.predict("lin", CLEAR_INPUT, n=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(client.list_models) == grpc.StatusCode.UNAUTHENTICATED


def test_other_schemes_are_refused(tls_server, pki):
    creds = grpc.ssl_channel_credentials(pki.ca.cert_bytes)
    with grpc.secure_channel(tls_server.address, creds) as channel:
        list_models = channel.unary_unary("/smoothserve.v1.SmoothServe/ListModels")
        for value in (f"Basic {FILE_TOKEN}", FILE_TOKEN, f"Bearer{FILE_TOKEN}", "Bearer "):
            with pytest.raises(grpc.RpcError) as info:
                list_models(b"", timeout=5, metadata=(("authorization", value),))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_is_open_and_reflection_is_not(tls_server, pki):
    creds = grpc.ssl_channel_credentials(pki.ca.cert_bytes)
    with grpc.secure_channel(tls_server.address, creds) as channel:
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ServerReflectionInfo(iter(ask), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = list(
            stub.ServerReflectionInfo(
                iter(ask), timeout=5, metadata=(("authorization", f"Bearer {FILE_TOKEN}"),)
            )
        )
        names = [s.name for s in answers[0].list_services_response.service]
        assert "smoothserve.v1.SmoothServe" in names


def test_plaintext_and_untrusted_clients_cannot_connect(tls_server, pki):
    with SmoothServeClient(tls_server.address, timeout=3, token=FILE_TOKEN) as plain:
        assert _code(plain.list_models) == grpc.StatusCode.UNAVAILABLE
    # A client that trusts another CA refuses the server's certificate.
    with SmoothServeClient(
        tls_server.address, timeout=3, tls_ca=pki.rogue_ca.cert_bytes, token=FILE_TOKEN
    ) as wrong_ca:
        assert _code(wrong_ca.list_models) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(mtls_server, pki):
    with _client(
        mtls_server, pki, tls_cert=pki.client.cert_bytes, tls_key=pki.client.key_bytes
    ) as client:
        assert client.predict("lin", CLEAR_INPUT, n0=10, n=100).prediction == 1
    with _client(mtls_server, pki) as no_cert:
        assert _code(no_cert.list_models) == grpc.StatusCode.UNAVAILABLE
    rogue = pki.rogue_client
    with _client(mtls_server, pki, tls_cert=rogue.cert_bytes, tls_key=rogue.key_bytes) as client:
        assert _code(client.list_models) == grpc.StatusCode.UNAVAILABLE


def test_logs_hold_neither_inputs_nor_tokens(tls_server, pki):
    image = np.frombuffer(PATTERN, np.uint8).reshape(SHAPE)
    with _client(tls_server, pki, token=FILE_TOKEN) as client:
        client.predict("lin", image, n0=10, n=100)
        client.predict("lin", image, n0=10, n=100, seed=987654321987)
        bad = np.frombuffer(PATTERN + PATTERN[:8], np.uint8).reshape(1, 8, 9)
        assert _code(lambda: client.predict("lin", bad, n=10)) == grpc.StatusCode.INVALID_ARGUMENT
    with _client(tls_server, pki, token="not-" + FILE_TOKEN) as client:
        assert _code(lambda: client.predict("lin", image, n=10)) == grpc.StatusCode.UNAUTHENTICATED
    log = tls_server.log_path.read_bytes()
    assert b"Predict model=" in log  # DEBUG logging is on, so the check below means something
    forms = [
        PATTERN[:16], PATTERN[:16].hex().encode(), repr(PATTERN[:16]).encode(),
        ", ".join(str(b) for b in PATTERN[:8]).encode(), b"987654321987",
        FILE_TOKEN.encode(), *(t.encode() for t in ENV_TOKENS),
    ]  # fmt: skip
    for form in forms:
        assert form not in log, form


def test_an_empty_token_file_stops_the_server(repo, tmp_path):
    empty = tmp_path / "tokens.txt"
    empty.write_text("# nobody\n\n")
    with pytest.raises(RuntimeError, match="holds no token"):
        ServerProcess(repo, ["--auth-tokens-file", str(empty)]).start()


def test_config_hides_tokens_and_checks_tls_flags(tmp_path):
    config = ServerConfig.from_args([], environ={"SMOOTHSERVE_AUTH_TOKENS": "s3cret-token"})
    assert config.auth_tokens == ("s3cret-token",) and "s3cret" not in repr(config)
    with pytest.raises(SystemExit):
        ServerConfig.from_args(["--tls-cert", str(tmp_path / "a.crt")], environ={})
    with pytest.raises(SystemExit):
        ServerConfig.from_args(["--tls-client-ca", str(tmp_path / "ca.crt")], environ={})


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_metrics_bind_only_the_configured_address(tls_server):
    # ServerProcess passes --metrics-host 127.0.0.1: nothing else may listen on that port.
    assert _listening_addresses(tls_server.metrics_port) == {"127.0.0.1"}


def test_health_probe_speaks_tls_when_the_server_does(tls_server, mtls_server, pki):
    from smoothserve import healthcheck

    def probe(server, environ, *flags) -> int:
        return healthcheck.main(["--address", server.address, "--quiet", *flags], environ=environ)

    assert probe(tls_server, {}) == 1  # plaintext against a TLS port
    # Inside the container the server's own environment says TLS and what to trust.
    env = {"SMOOTHSERVE_TLS_CERT": str(pki.server.cert), "SMOOTHSERVE_HEALTHCHECK_TLS_CA": str(pki.ca.cert)}
    assert probe(tls_server, env) == 0
    assert probe(tls_server, {}, "--tls-ca", str(pki.rogue_ca.cert)) == 1
    assert probe(mtls_server, env) == 1  # mutual TLS wants a client certificate
    client = {"SMOOTHSERVE_HEALTHCHECK_TLS_CERT": str(pki.client.cert),
              "SMOOTHSERVE_HEALTHCHECK_TLS_KEY": str(pki.client.key)}  # fmt: skip
    assert probe(mtls_server, {**env, **client}) == 0
