"""The Triton backend against a real tritonserver (the CPU twin of the model repository):
same counts as the embedded backend, discovery from Triton's configs, large batches,
shared memory and FP16."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
from triton_helpers import (
    BIG_SHAPE,
    SHAPE,
    SIGMA,
    near_boundary,
    require_tritonserver,
    twin,
    weights,
    write_repo,
)

from smoothcert.model_config import SmoothModelConfig, sha256_of
from smoothserve.backends.triton import TritonBackend
from smoothserve.noise import noise_generator, noise_stream, resolve_generator
from smoothserve_client.client import SmoothServeClient
from smoothserve_dev.testing import ServerProcess
from smoothserve_dev.triton_twin import TritonProcess

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def triton(repo, tmp_path_factory):
    require_tritonserver()
    with TritonProcess(twin(repo, tmp_path_factory.mktemp("twin"))) as process:
        yield process


@pytest.fixture(scope="module")
def embedded(repo):
    with ServerProcess(repo, ["--batch-size", "300"]) as server:
        yield server


@pytest.fixture(scope="module")
def via_triton(repo, triton):
    args = ["--backend", "triton", "--triton-urls", triton.url, "--batch-size", "300"]
    with ServerProcess(repo, args) as server:
        yield server


def certify(server: ServerProcess, model: str, x: np.ndarray, **options):
    with SmoothServeClient(server.address, timeout=60) as client:
        return client.predict(model, x, **options)


@pytest.mark.parametrize(
    ("model", "shape", "seed_w"), [("linear", SHAPE, 1), ("linear_small_batch", SHAPE, 3)]
)
def test_seeded_counts_equal_the_embedded_backend(embedded, via_triton, model, shape, seed_w):
    x = near_boundary(shape, weights(shape, seed_w), margin=0.1)
    for seed in (0, 7, 2**40 + 3):
        a = certify(embedded, model, x, n0=200, n=3000, seed=seed)
        b = certify(via_triton, model, x, n0=200, n=3000, seed=seed)
        assert b.counts == a.counts and b.selection_counts == a.selection_counts
        assert b.radius == a.radius and b.prediction == a.prediction
        assert 0 < a.counts[0] < 3000  # both classes occur: the noise really differs per sample


def test_batches_over_the_grpc_default_message_size(embedded, via_triton):
    """300 rows of 3x64x64 float32 is 14.7 MB a call, over gRPC's 4 MB default."""
    x = near_boundary(BIG_SHAPE, weights(BIG_SHAPE, 2), margin=0.2)
    a = certify(embedded, "linear_big", x, n0=100, n=900, seed=11)
    b = certify(via_triton, "linear_big", x, n0=100, n=900, seed=11)
    assert b.counts == a.counts and b.selection_counts == a.selection_counts


def test_unseeded_results_agree_within_sampling_error(embedded, via_triton):
    margin, n = 0.15, 20_000
    x = near_boundary(SHAPE, weights(SHAPE, 1), margin)
    p = 0.5 * math.erfc(-margin / SIGMA / math.sqrt(2))  # P[class 1] = Phi(margin / sigma)
    for server in (embedded, via_triton):
        result = certify(server, "linear", x, n0=100, n=n)
        assert result.seed is None
        share = result.counts[1] / n
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)
        radius = SIGMA * _probit(p)
        assert result.radius < radius and result.radius == pytest.approx(radius, abs=0.05)


def _probit(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def test_model_info_comes_from_tritons_config(repo, via_triton):
    with SmoothServeClient(via_triton.address, timeout=10) as client:
        models = {m.name: m for m in client.list_models()}
    assert sorted(models) == ["linear", "linear_big", "linear_small_batch"]
    for name, info in models.items():
        assert info.backend == "triton" and info.sigma == SIGMA
        assert tuple(info.labels) == ("negative", "positive")
        # the same model and version with the same config in --model-repo: its file's hash
        assert info.sha256 == sha256_of(repo / name / "1" / "model.onnx")
    assert models["linear_big"].input_shape == BIG_SHAPE


def test_shared_memory_gives_the_same_counts_and_is_released(repo, triton, embedded):
    args = ["--backend", "triton", "--triton-urls", triton.url, "--triton-shm", "true",
            "--batch-size", "300"]  # fmt: skip
    x = near_boundary(BIG_SHAPE, weights(BIG_SHAPE, 2), margin=0.2)
    status = triton_grpc.InferenceServerClient(triton.url)
    with ServerProcess(repo, args) as server:
        regions = status.get_system_shared_memory_status(as_json=True).get("regions", {})
        assert len(regions) >= 2 and all(
            r["name"].startswith("smoothserve-") for r in regions.values()
        )
        b = certify(server, "linear_big", x, n0=100, n=900, seed=11)
    a = certify(embedded, "linear_big", x, n0=100, n=900, seed=11)
    assert b.counts == a.counts and b.selection_counts == a.selection_counts
    assert status.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
    status.close()


def rounded_to_fp16_counts(repo: Path, x: np.ndarray, sizes: tuple[int, ...], seed: int) -> list:
    """Counts of the linear model on the request's own noisy samples rounded to FP16: the same
    generator (the server's default), drawn in the same order as the server draws them."""
    session = ort.InferenceSession(
        str(repo / "linear" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng, counts = noise_generator(seed), []
    for size in sizes:  # the selection draws, then the estimation draws: one stream each
        batch = np.empty((size, *SHAPE), np.float32)
        stream = noise_stream(rng, SHAPE, resolve_generator("auto"))
        for rows, generator in stream.pieces(batch, 0):
            stream.fill(rows, x, SIGMA, generator)
        (logits,) = session.run(["logits"], {"input": batch.astype(np.float16).astype(np.float32)})
        counts.append(tuple(np.bincount(logits.argmax(1), minlength=2).tolist()))
    return counts


def test_fp16_batches_on_an_fp16_model(repo, triton, tmp_path):
    x = near_boundary(SHAPE, weights(SHAPE, 1), margin=0.002)  # where FP16 rounding matters
    selection, estimation = rounded_to_fp16_counts(repo, x, (100, 4000), seed=3)
    with TritonProcess(twin(repo, tmp_path / "twin16", fp16=True, only=("linear",))) as triton16:
        fp16 = ["--backend", "triton", "--triton-urls", triton16.url, "--triton-fp16", "true"]
        for extra in ([], ["--triton-shm", "true"]):
            with ServerProcess(repo, [*fp16, *extra]) as server:
                result = certify(server, "linear", x, n0=100, n=4000, seed=3)
            assert (result.selection_counts, result.counts) == (selection, estimation)
        with pytest.raises(RuntimeError, match="start SmoothServe with --triton-fp16"):
            ServerProcess(repo, ["--backend", "triton", "--triton-urls", triton16.url]).start()
    with pytest.raises(RuntimeError, match="--triton-fp16 needs an FP16-input model"):
        args = ["--backend", "triton", "--triton-urls", triton.url, "--triton-fp16", "true"]
        ServerProcess(repo, args).start()


def test_sha256_from_a_parameter_or_an_identical_local_copy(repo):
    """No Triton needed: the rule of backends/triton.py's docstring, case by case."""
    config = SmoothModelConfig.from_pbtxt((repo / "linear" / "config.pbtxt").read_text())
    backend = TritonBackend(["127.0.0.1:1"], model_repo=repo)
    local = sha256_of(repo / "linear" / "1" / "model.onnx")
    assert backend._sha256(config, "1") == local
    declared = replace(config, extra_parameters={"sha256": "ab" * 32})
    assert backend._sha256(declared, "1") == "ab" * 32  # the config's word wins
    assert backend._sha256(replace(config, sigma=0.25), "1") == ""  # another model
    assert backend._sha256(config, "2") == ""  # no such version here
    assert TritonBackend(["127.0.0.1:1"])._sha256(config, "1") == ""  # no local repository
