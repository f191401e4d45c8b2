"""Start-up that always ends, and ends cleanly (issue 20, third round): a network that never
finishes, batch sizes of 10**9, version folders that are not canonical numbers, signing-key
files that are readable by others, endless or huge, and a collector that never answers.
Each gives a failed model or a one-line refusal, never a hang, a traceback or a host path."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from smoothcert.keytool import main as key_main
from smoothcert.model_config import ModelConfigError, SmoothModelConfig
from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess

SHAPE = (1, 4, 4)
MNIST = (1, 28, 28)  # the probe's shape: 10**9 samples of it are 2.85 TiB
X = np.full(SHAPE, 0.5, np.float32)
KEEP_GOING = ["--exit-on-error", "false"]
FAST_LOAD_LIMIT = ["--model-load-timeout-s", "2"]
VERSIONS = ("0", "12", "00", "007", "1" * 23)


def write_good(repo: Path) -> None:
    write_linear_model(repo, "good", np.ones(16) / 4, -2.0, 0.25, SHAPE)


def write_endless_model(repo: Path, name: str = "endless") -> None:
    """A valid network whose graph never finishes: an ONNX Loop of 10**12 turns (x + 0 each)
    before the classifier."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["value_in", "zero"], ["value_out"]),
        ],
        "turn",
        [
            helper.make_tensor_value_info("turn", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("value_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("value_out", TensorProto.FLOAT, None),
        ],
        initializer=[numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Loop", ["turns", "always", "input"], ["looped"], body=body),
            helper.make_node("Flatten", ["looped"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(np.array(10**12, np.int64), "turns"),
            numpy_helper.from_array(np.array(True), "always"),
            numpy_helper.from_array(np.ones((16, 2), np.float32), "W"),
            numpy_helper.from_array(np.zeros(2, np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (repo / name / "1").mkdir(parents=True)
    onnx.save(model, repo / name / "1" / "model.onnx")
    SmoothModelConfig(name=name, sigma=0.25, labels=("a", "b"), input_shape=SHAPE).write(
        repo / name
    )


def write_huge_batches(repo: Path) -> None:
    """'wide' declares max_batch_size 10**9; 'tuned' smoothserve_batch_size 10**9 (no max)."""
    for name, max_batch, batch in (("wide", 10**9, 0), ("tuned", 0, 10**9)):
        model_dir = write_linear_model(repo, name, np.ones(784) / 784, -0.5, 0.25, MNIST)
        config = SmoothModelConfig(name=name, sigma=0.25, labels=("negative", "positive"),
                                   input_shape=MNIST, max_batch_size=max_batch, batch_size=batch)  # fmt: skip
        config.write(model_dir)


def write_corrupt(repo: Path) -> None:
    write_linear_model(repo, "corrupt", np.ones(16) / 4, -2.0, 0.25, SHAPE)
    (repo / "corrupt" / "1" / "model.onnx").write_bytes(b"\x08\x07 not an onnx model" * 40)


def start_fails(repo: Path, args: list[str], within: float) -> str:
    started = time.monotonic()
    with pytest.raises(RuntimeError) as exited:
        ServerProcess(repo, args, start_timeout=within).start()
    assert time.monotonic() - started < within
    return str(exited.value)


def failure_reasons(client: SmoothServeClient) -> dict[str, str]:
    return {m.name: m.failure_reason for m in client.list_models() if m.state == "FAILED"}


def assert_no_host_path(text: str, repo: Path) -> None:
    assert str(repo) not in text and str(repo.resolve()) not in text, text
    assert str(Path.home()) not in text and "/tmp/" not in text, text


# --- a network that never finishes ------------------------------------------------------------


def test_a_network_that_never_finishes_fails_its_model_and_the_others_serve(tmp_path):
    repo = tmp_path / "repo"
    write_good(repo), write_endless_model(repo)
    args = [*KEEP_GOING, *FAST_LOAD_LIMIT, "--batch-size", "64"]
    started = time.monotonic()
    with (
        ServerProcess(repo, args, start_timeout=40) as server,
        SmoothServeClient(server.address, timeout=30) as client,
    ):
        assert time.monotonic() - started < 40
        reasons = failure_reasons(client)
        assert set(reasons) == {"endless"}, reasons
        assert "endless" in reasons["endless"] and "2 s" in reasons["endless"], reasons
        assert "--model-load-timeout-s" in reasons["endless"], reasons
        assert_no_host_path(reasons["endless"], repo)
        assert client.predict("good", X, n0=10, n=100).n == 100
        with pytest.raises(SmoothServeError) as failed:
            client.predict("endless", X, n0=10, n=100)
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
        log = server.log()
    assert "loading model endless version 1" in log, log  # start-up says what it waits for
    assert "Traceback" not in log and "terminate flag" not in log, log


def test_with_exit_on_error_a_network_that_never_finishes_stops_start_up_in_one_line(tmp_path):
    repo = tmp_path / "repo"
    write_good(repo), write_endless_model(repo)
    message = start_fails(repo, FAST_LOAD_LIMIT, within=40)
    assert "endless" in message and "--model-load-timeout-s" in message, message
    assert "Traceback" not in message, message
    assert_no_host_path(message.split(":\n", 1)[1], repo)


# --- numbers too large to allocate -----------------------------------------------------------


def test_batch_sizes_of_a_billion_fail_their_models_and_the_others_serve(tmp_path):
    repo = tmp_path / "repo"
    write_good(repo), write_huge_batches(repo), write_corrupt(repo)
    with (
        ServerProcess(repo, KEEP_GOING, start_timeout=40) as server,
        SmoothServeClient(server.address, timeout=30) as client,
    ):
        reasons = failure_reasons(client)
        assert set(reasons) == {"wide", "tuned", "corrupt"}, reasons
        assert "wide/config.pbtxt" in reasons["wide"] and "max_batch_size" in reasons["wide"]
        assert "1,000,000,000" in reasons["wide"], reasons
        assert "tuned/config.pbtxt" in reasons["tuned"], reasons
        assert "smoothserve_batch_size" in reasons["tuned"], reasons
        assert "corrupt/1/model.onnx" in reasons["corrupt"], reasons
        for reason in reasons.values():
            assert_no_host_path(reason, repo)
        info = client.model_info("tuned")
        assert info.state == "FAILED" and info.failure_reason == reasons["tuned"]
        assert client.predict("good", X, n0=10, n=100).n == 100
        log = server.log()
    assert "Traceback" not in log and "Unable to allocate" not in log, log


def test_with_exit_on_error_batch_sizes_of_a_billion_stop_start_up_in_one_line(tmp_path):
    repo = tmp_path / "repo"
    write_good(repo), write_huge_batches(repo)
    message = start_fails(repo, [], within=40)
    assert "wide" in message and "tuned" in message and "max_batch_size" in message, message
    assert "Traceback" not in message and "Unable to allocate" not in message, message
    assert_no_host_path(message.split(":\n", 1)[1], repo)


def test_a_batch_size_flag_of_a_billion_stops_start_up_in_one_line(tmp_path):
    repo = tmp_path / "repo"
    write_good(repo)
    message = start_fails(repo, ["--batch-size", str(10**9)], within=40)
    assert "--batch-size" in message and "good" in message, message
    assert "Traceback" not in message and "Unable to allocate" not in message, message


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"max_batch_size": 10**9}, "max_batch_size"),
        ({"max_batch_size": 0, "batch_size": 10**9}, "smoothserve_batch_size"),
        (
            {"max_batch_size": 0, "batch_size": 60_000, "input_shape": (3, 224, 224)},
            "GiB per batch",
        ),  # fmt: skip
        ({"input_shape": (3, 10**5, 10**5)}, "elements per sample"),
        ({"labels": tuple(f"c{k}" for k in range(200_000))}, "labels"),
    ],
)
def test_config_numbers_are_bounded_before_anything_is_allocated(changes, field):
    config = SmoothModelConfig(name="m", sigma=0.25, labels=("a", "b"), input_shape=SHAPE)
    fields = {"name": "m", "sigma": 0.25, "labels": ("a", "b"), "input_shape": SHAPE, **changes}
    text = SmoothModelConfig(**fields).to_pbtxt()
    with pytest.raises(ModelConfigError, match=field):
        SmoothModelConfig.from_pbtxt(text)
    assert SmoothModelConfig.from_pbtxt(config.to_pbtxt()).name == "m"  # sane ones still parse


# --- version folders ------------------------------------------------------------------------


def test_only_canonical_version_folders_are_versions(tmp_path):
    repo = tmp_path / "repo"
    write_good(repo)
    config = repo / "good" / "config.pbtxt"  # every version served (the default: the latest)
    config.write_text(config.read_text() + "version_policy { all {} }\n")
    model = repo / "good" / "1" / "model.onnx"
    for version in VERSIONS:
        (repo / "good" / version).mkdir()
        (repo / "good" / version / "model.onnx").write_bytes(model.read_bytes())
    (repo / "good" / "1").rename(repo / "good" / "1-old")
    with (
        ServerProcess(repo, ["--batch-size", "64"]) as server,
        SmoothServeClient(server.address, timeout=30) as client,
    ):
        (info,) = client.list_models()
        assert info.state == "READY" and set(info.available_versions) == {"0", "12"}, info
        assert client.predict("good", X, n0=10, n=100).model_version == "12"  # the latest
        assert client.predict("good", X, n0=10, n=100, model_version="0").model_version == "0"
        for folder in ("00", "007"):
            with pytest.raises(SmoothServeError) as missing:
                client.model_info("good", folder)
            assert missing.value.code == grpc.StatusCode.NOT_FOUND
        log = server.log()
    for folder in ("00", "007", "1" * 23, "1-old"):
        assert f"folder '{folder}' ignored" in log, log


# --- the signing key file -------------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "signing.pem"
    assert key_main(["generate", str(path)]) == 0  # mode 0600
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_may_read_is_refused_and_chmod_600_fixes_it(mode, key_file, tmp_path):
    repo = tmp_path / "repo"
    write_good(repo)
    key_file.chmod(mode)
    message = start_fails(repo, ["--signing-key", str(key_file)], within=40)
    assert f"permissions {mode:04o}" in message and "chmod 600" in message, message
    assert "Traceback" not in message, message
    key_file.chmod(0o600)
    public = key_file.with_name(key_file.name + ".pub").read_text()
    with (
        ServerProcess(repo, ["--signing-key", str(key_file), "--batch-size", "64"]) as server,
        SmoothServeClient(server.address, timeout=30) as client,
    ):
        served = client.signing_key()
    assert served.persistent and served.public_key_pem == public


def read_key_in_small_process(
    path: Path, memory_bytes: int = 1 << 30
) -> subprocess.CompletedProcess:
    """``Signer.from_settings(path)`` in a child whose address space is capped: a reader that
    slurps /dev/zero dies of MemoryError there instead of eating the host's memory."""
    script = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        from smoothserve.records import Signer
        resource.setrlimit(resource.RLIMIT_AS, ({memory_bytes}, {memory_bytes}))
        try:
            Signer.from_settings(Path(sys.argv[1]), "")
        except ValueError as exc:
            print("refused:", exc)
        else:
            print("accepted")
    """)
    return subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=30)  # fmt: skip


def test_endless_and_oversized_key_files_are_refused_quickly_and_without_memory(tmp_path, key_file):
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo, 0o600)  # nobody writes: a blocking open would hang for ever
    large = tmp_path / "large.pem"
    large.write_bytes(b"-----BEGIN PRIVATE KEY-----\n" + b"A" * (1 << 20))
    large.chmod(0o600)
    for path, why in ((Path("/dev/zero"), "not a regular file"), (fifo, "not a regular file"),
                      (large, "larger than 64 KiB")):  # fmt: skip
        started = time.monotonic()
        child = read_key_in_small_process(path)
        assert f"refused: signing key {path}: {why}" in child.stdout, (child.stdout, child.stderr)
        assert child.returncode == 0 and "Traceback" not in child.stderr, child.stderr
        assert time.monotonic() - started < 20
    child = read_key_in_small_process(key_file)  # a good key, in the same small process
    assert child.stdout.strip() == "accepted", (child.stdout, child.stderr)


# --- a collector that never answers ---------------------------------------------------------


def test_a_black_hole_collector_does_not_hold_up_the_exit(linear_repo):
    pytest.importorskip("opentelemetry.sdk")
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # connections complete in the kernel's backlog; nothing ever answers
    try:
        endpoint = f"http://127.0.0.1:{hole.getsockname()[1]}"
        args = ["--otlp-endpoint", endpoint, "--batch-size", "256"]
        with ServerProcess(linear_repo, args) as server:
            with SmoothServeClient(server.address, timeout=30) as client:
                for _ in range(150):  # 5 spans each: two of the SDK's batches of 512 to flush
                    client.predict("linear", np.full((1, 8, 8), 0.5, np.float32), n0=10, n=100)
            # With the SDK's defaults each batch waits 10 s on the black hole: 19.5 s in all
            # (0.3 s without tracing). Bounded, the exit takes about 3.4 s.
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            server.process.wait(30)
            took = time.monotonic() - started
            log = server.log()
        assert took < 8, (took, log)
        assert server.process.returncode == 0, log
        assert "Traceback" not in log, log
    finally:
        hole.close()
