"""Operations (issue 24), against real servers: process and platform metrics, build info and no
``_created`` series in a scrape; the dashboard's rejection series there from start-up;
``smoothserve --version``; one access log line per Predict on each door (native gRPC, OIP gRPC,
OIP REST), in text and in JSON (``--log-format json``), and none with ``--access-log false``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from importlib import metadata

import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families
from test_linear_radius import point_at

from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_dev.testing import ServerProcess

X = point_at(0.5, 1)  # class 1, half a unit from the boundary: certifies at sigma 0.25
VERSION = metadata.version("smoothserve")
ACCESS_FIELDS = ("model", "version", "mode", "procedure", "outcome", "status", "samples",
                 "latency_s")  # fmt: skip
REJECT_REASONS = ("samples_in_flight", "concurrent_requests", "shutting_down")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def served(linear_repo) -> Iterator[tuple[ServerProcess, str]]:
    """A server with every door open, and its scrape before any request."""
    with ServerProcess(linear_repo, ["--http-port", "0"]) as server:
        yield server, get(server.metrics_url)


def access_lines(server: ServerProcess, request_id: str, wait: float = 5.0) -> list[str]:
    """The server's text access log lines of ``request_id`` (waiting briefly for the first)."""
    pattern = re.compile(rf" INFO smoothserve\.access \[{re.escape(request_id)}\]: (.*)$")
    deadline = time.monotonic() + wait
    while True:
        found = [m.group(1) for line in server.log().splitlines() if (m := pattern.search(line))]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def fields_of(message: str) -> dict[str, str]:
    assert message.startswith("Predict "), message
    return dict(part.split("=", 1) for part in message.removeprefix("Predict ").split(" "))


def test_scrape_has_process_platform_and_build_metrics_and_no_created_series(served) -> None:
    server, _ = served
    text = get(server.metrics_url)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    names = {s.name for s in samples}
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_start_time_seconds", "process_open_fds", "python_info",
                 "python_gc_objects_collected_total", "python_gc_collections_total"):  # fmt: skip
        assert name in names, name
    by_name = {s.name: s for s in samples}
    assert by_name["process_resident_memory_bytes"].value > 1e6  # the server's, not zero
    assert time.time() - by_name["process_start_time_seconds"].value < 3600
    (build,) = [s for s in samples if s.name == "smoothserve_build_info"]
    assert build.value == 1
    assert build.labels["version"] == VERSION
    assert build.labels["python_version"].count(".") == 2
    assert build.labels["noise_generator"] in {"ars5", "pcg64"}
    assert re.fullmatch(r"\d+\.\d+.*", build.labels["onnxruntime_version"])
    created = sorted(line for line in text.splitlines() if re.match(r"[\w:]+_created\b", line))
    assert not created, created[:5]


def test_dashboard_rejection_series_exist_before_any_request(served) -> None:
    """The dashboard's "rejections by reason" and the rejection alert read
    smoothserve_requests_rejected_total: every reason is a 0 from start-up, not "no data"."""
    _, first_scrape = served
    rejected = {
        s.labels["reason"]: s.value
        for f in text_string_to_metric_families(first_scrape)
        for s in f.samples
        if s.name == "smoothserve_requests_rejected_total"
    }
    assert rejected == dict.fromkeys(REJECT_REASONS, 0.0)
    # The start-up scrape is also free of _created series and carries the build info.
    assert "_created" not in first_scrape and "smoothserve_build_info{" in first_scrape


def test_version_flag_prints_the_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smoothserve", "--version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"smoothserve {VERSION}"
    help_text = subprocess.run(
        [sys.executable, "-m", "smoothserve", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "--version" in help_text


def native(server: ServerProcess, request_id: str) -> bool:
    with SmoothServeClient(server.address, timeout=60) as client:
        return client.predict("linear", X, n0=64, n=512, request_id=request_id).abstain


def oip_grpc(server: ServerProcess, request_id: str) -> bool:
    client = triton_grpc.InferenceServerClient(server.address)
    tensor = triton_grpc.InferInput("input", [1, *X.shape], "FP32")
    tensor.set_data_from_numpy(X[None])
    answer = client.infer("linear", [tensor], request_id=request_id,
                          parameters={"n0": 64, "n": 512})  # fmt: skip
    return bool(answer.as_numpy("abstain")[0])


def oip_rest(server: ServerProcess, request_id: str) -> bool:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    tensor = triton_http.InferInput("input", [1, *X.shape], "FP32")
    tensor.set_data_from_numpy(X[None])
    answer = client.infer("linear", [tensor], request_id=request_id,
                          parameters={"n0": 64, "n": 512})  # fmt: skip
    return bool(answer.as_numpy("abstain")[0])


@pytest.mark.parametrize("door", [native, oip_grpc, oip_rest], ids=lambda f: f.__name__)
def test_one_access_line_per_request_on_each_door(served, door: Callable) -> None:
    server, _ = served
    request_id = f"ops-{door.__name__}-1"
    abstained = door(server, request_id)
    (line,) = access_lines(server, request_id)
    fields = fields_of(line)
    assert tuple(fields) == ACCESS_FIELDS
    assert fields | {"latency_s": ""} == {
        "model": "linear", "version": "1", "mode": "certify", "procedure": "fixed_n",
        "outcome": "abstained" if abstained else "certified", "status": "OK",
        "samples": str(64 + 512), "latency_s": "",
    }  # fmt: skip
    assert 0 < float(fields["latency_s"]) < 60
    time.sleep(0.2)  # a second line, were there one, would be written by now
    assert len(access_lines(server, request_id)) == 1


def test_access_lines_of_failures_carry_no_client_data(served) -> None:
    server, _ = served
    secret_name = "customer-secret-model-7f3a"
    with SmoothServeClient(server.address, timeout=60) as client:
        with pytest.raises(SmoothServeError):
            client.predict(secret_name, X, n=512, request_id="ops-unknown-model")
        with pytest.raises(SmoothServeError):
            client.predict("linear", X[:, :4], n=512, request_id="ops-bad-shape")
        client.predict("linear", X, mode="predict", n=256, request_id="ops-predict-mode")
    (unknown,) = access_lines(server, "ops-unknown-model")
    assert fields_of(unknown) | {"latency_s": ""} == {
        "model": "(unknown)", "version": "-", "mode": "certify", "procedure": "fixed_n",
        "outcome": "error", "status": "NOT_FOUND", "samples": "-", "latency_s": "",
    }  # fmt: skip
    assert secret_name not in server.log()
    (bad_shape,) = access_lines(server, "ops-bad-shape")
    assert fields_of(bad_shape)["status"] == "INVALID_ARGUMENT"
    assert fields_of(bad_shape)["outcome"] == "error"
    (predict,) = access_lines(server, "ops-predict-mode")
    assert (fields_of(predict)["mode"], fields_of(predict)["samples"]) == ("predict", "256")


def unknown_errors(server: ServerProcess) -> float:
    """smoothserve_requests_total of model "(unknown)", mode "unknown", outcome "error"."""
    return sum(
        s.value
        for f in text_string_to_metric_families(get(server.metrics_url))
        for s in f.samples
        if s.name == "smoothserve_requests_total"
        and (s.labels["model"], s.labels["mode"], s.labels["outcome"])
        == ("(unknown)", "unknown", "error")
    )


def test_requests_refused_before_they_are_read_are_counted_and_logged(served) -> None:
    """A Predict or ModelInfer whose bytes do not parse (gRPC), and an infer body over the size
    limit (REST), never reach the data plane: each still gets one access line and a count in
    smoothserve_requests_total, and its refusal carries the request ID back."""
    import grpc

    server, _ = served
    before = unknown_errors(server)
    with grpc.insecure_channel(server.address) as channel:
        for method, rid in (("/smoothserve.v1.SmoothServe/Predict", "ops-junk-native"),
                            ("/inference.GRPCInferenceService/ModelInfer", "ops-junk-oip")):
            call = channel.unary_unary(method)  # raw bytes in and out
            with pytest.raises(grpc.RpcError) as refused:
                call(b"\xff\xff\xff", metadata=(("x-request-id", rid),), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert ("x-request-id", rid) in refused.value.trailing_metadata()
            (line,) = access_lines(server, rid)
            assert fields_of(line) == {
                "model": "(unknown)", "version": "-", "mode": "unknown", "procedure": "-",
                "outcome": "error", "status": "INVALID_ARGUMENT", "samples": "-",
                "latency_s": "0.0",
            }  # fmt: skip
    body = b"{" + b" " * (64 << 20) + b"}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/v2/models/linear/infer", data=body,
        headers={"Content-Type": "application/json", "x-request-id": "ops-too-large"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as too_large:
        urllib.request.urlopen(request, timeout=30)
    assert too_large.value.code == 413
    assert too_large.value.headers["x-request-id"] == "ops-too-large"
    (line,) = access_lines(server, "ops-too-large")
    assert fields_of(line)["status"] == "RESOURCE_EXHAUSTED"
    assert unknown_errors(server) == before + 3


def test_json_log_format_writes_one_object_per_line(linear_repo) -> None:
    with ServerProcess(linear_repo, ["--log-format", "json"]) as server:
        abstained = native(server, "ops-json-1")
        with SmoothServeClient(server.address, timeout=60) as client, pytest.raises(
            SmoothServeError
        ):
            client.predict("nope", X, n=512, request_id="ops-json-2")
    lines = [line for line in server.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, start-up and shutdown too
    assert len(records) > 3
    for record in records:
        assert {"time", "level", "logger", "message", "request_id"} <= record.keys(), record
    assert any(r["logger"] == "smoothserve" and r["request_id"] == "-" for r in records)
    access = {r["request_id"]: r for r in records if r["logger"] == "smoothserve.access"}
    assert set(access) == {"ops-json-1", "ops-json-2"}
    ok, failed = access["ops-json-1"], access["ops-json-2"]
    assert ok["level"] == "INFO" and ok["message"].startswith("Predict model=linear ")
    assert {k: ok[k] for k in ACCESS_FIELDS if k != "latency_s"} == {
        "model": "linear", "version": "1", "mode": "certify", "procedure": "fixed_n",
        "outcome": "abstained" if abstained else "certified", "status": "OK", "samples": 576,
    }  # fmt: skip
    assert isinstance(ok["latency_s"], float) and ok["latency_s"] > 0
    assert (failed["status"], failed["samples"], failed["version"]) == ("NOT_FOUND", None, None)


def test_access_log_can_be_turned_off(linear_repo) -> None:
    with ServerProcess(linear_repo, ["--access-log", "false"]) as server:
        native(server, "ops-quiet-1")
    log = server.log()
    assert "smoothserve.access" not in log
    assert "serving linear on" in log  # the rest of the log is still there
