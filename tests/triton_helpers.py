"""Shared pieces of the Triton tests: the model repository, the twin, and skip logic."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from smoothcert.model_config import SmoothModelConfig
from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess
from smoothserve_dev.triton_twin import build_twin_repository, tritonserver_home

SHAPE = (1, 8, 8)
BIG_SHAPE = (3, 64, 64)  # 49 kB a sample: a 256-row batch is 12.6 MB, over gRPC's 4 MB default
SIGMA = 0.5


def require_tritonserver() -> None:
    """Skip without nvidia-pytriton, except in CI (whose scripts/test.sh installs ./dev): there, fail."""
    if tritonserver_home() is None:
        reason = "nvidia-pytriton (bundled tritonserver) is not installed; pip install -e ./dev"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def weights(shape: tuple[int, ...], seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal(shape)
    return w / np.linalg.norm(w)


def write_repo(repo: Path) -> Path:
    """``linear`` (1x8x8), ``linear_big`` (3x64x64) and ``linear_small_batch`` (max_batch_size 64)."""
    write_linear_model(repo, "linear", weights(SHAPE, 1), 0.0, SIGMA, SHAPE)
    write_linear_model(repo, "linear_big", weights(BIG_SHAPE, 2), 0.0, SIGMA, BIG_SHAPE)
    model_dir = write_linear_model(repo, "linear_small_batch", weights(SHAPE, 3), 0.0, SIGMA, SHAPE)
    SmoothModelConfig(
        name="linear_small_batch", sigma=SIGMA, labels=("negative", "positive"),
        input_shape=SHAPE, max_batch_size=64, preferred_batch_sizes=(64,),
    ).write(model_dir)  # fmt: skip
    return repo


def twin(
    repo: Path,
    dest: Path,
    fp16: bool = False,
    only: tuple[str, ...] = (),
    samplers: bool = False,
    sampler_options: dict | None = None,
) -> Path:
    """The CPU twin of ``repo``; ``samplers``: with each model's CPU sampler."""
    build_twin_repository(
        repo, dest, fp16=fp16, only=only, samplers=samplers, sampler_options=sampler_options
    )
    return dest


def near_boundary(shape: tuple[int, ...], w: np.ndarray, margin: float) -> np.ndarray:
    """An input in [0, 1] at signed distance ``margin`` from the hyperplane w.x = 0."""
    x = np.full(shape, 0.5)
    x = x - (np.sum(w * x) - margin) * w / np.sum(w * w)
    assert x.min() >= 0 and x.max() <= 1
    return x.astype(np.float32)


def triton_args(*urls: str) -> list[str]:
    return ["--backend", "triton", "--triton-urls", ",".join(urls), "--triton-timeout-s", "10"]


def eventually(call, seconds: float = 15.0):
    """``call()`` once it stops raising UNAVAILABLE (a probe of a just-resumed server may
    itself time out on a loaded machine), or its last error."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except SmoothServeError as error:
            if error.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def check_hung_triton_gives_deadline_exceeded_then_recovers(repo, triton, x) -> None:
    """With tritonserver stopped (SIGSTOP: alive, accepting, never answering), a request gets
    DEADLINE_EXCEEDED within a few seconds; once it resumes, requests are served again."""
    args = [*triton_args(triton.url), "--triton-timeout-s", "2"]
    with ServerProcess(repo, args) as server, SmoothServeClient(server.address) as client:
        assert client.predict("linear", x, n0=10, n=100, timeout=30).n == 100
        os.kill(triton.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(SmoothServeError) as hung:
                client.predict("linear", x, n0=10, n=100, timeout=30)
            assert hung.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, hung.value
            assert time.monotonic() - started < 8.0
        finally:
            os.kill(triton.process.pid, signal.SIGCONT)
        assert eventually(lambda: client.predict("linear", x, n0=10, n=100, timeout=30)).n == 100
