"""Evaluation: certification through the real gRPC server, and the empirical SmoothAdv attack.

Certified accuracy comes from the server (CERTIFY, reached through ``smoothserve_client``);
the empirical robust accuracy is the SmoothAdv PGD attack on the smoothed soft classifier, in
torch, followed by the server's PREDICT on the adversarial input: the project has one
sampling path, the server's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from smoothserve_client import SmoothServeClient
from smoothserve_client.datasets import Dataset
from smoothserve_client.results import Row

from .attacks import pgd_l2


def certify_models(
    model_repo: Path,
    names: Sequence[str],
    dataset: Dataset,
    indices: Sequence[int],
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    concurrency: int = 4,
    server_args: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, tuple[list[Row], float]]:
    """Start the server on ``model_repo`` and certify ``indices`` of ``dataset`` for each model.

    Returns, per model, the Cohen-format rows and the wall time in seconds.
    """
    from smoothserve_client import SmoothServeClient
    from smoothserve_client.dataset import certify_dataset
    from smoothserve_dev.testing import ServerProcess

    results: dict[str, tuple[list[Row], float]] = {}
    with ServerProcess(model_repo=Path(model_repo), args=list(server_args)) as server:
        client = SmoothServeClient(server.address)
        try:
            for name in names:
                began = time.time()
                rows = certify_dataset(
                    client, name, dataset, list(indices), n0=n0, n=n, alpha=alpha,
                    concurrency=concurrency, progress=progress,
                )  # fmt: skip
                results[name] = (list(rows), time.time() - began)
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()
    return results


def empirical_robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    epsilons: Iterable[float],
    client: SmoothServeClient,
    model_name: str,
    steps: int = 20,
    m: int = 16,
    n: int = 1000,
    alpha: float = 0.001,
    batch: int = 100,
    progress: bool = True,
) -> dict[float, float]:
    """Fraction of inputs on which the server's PREDICT (n samples, alpha) on ``model_name``
    still returns the true label after the SmoothAdv PGD attack on ``model`` (its torch twin:
    ``steps`` steps, m fresh noise draws per step) at each epsilon; an abstention counts as
    an error, as in Salman et al.'s empirical figures."""
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    accuracy = {}
    for eps in epsilons:
        correct = 0
        starts = range(0, len(y), batch)
        for start in tqdm(starts, desc=f"attack eps={eps}", disable=not progress, leave=False):
            xb, yb = x[start : start + batch], y[start : start + batch]
            adv = pgd_l2(model, xb, yb, eps, steps, sigma=sigma, m=m).clamp(0, 1)
            for image, label in zip(adv.numpy(), yb.tolist(), strict=True):
                answer = client.predict(model_name, image, mode="predict", n=n, alpha=alpha)
                correct += int(answer.prediction == label)
        accuracy[float(eps)] = correct / max(1, len(y))
    return accuracy


def onnx_throughput(path: Path, input_shape, batch: int = 1000, repeats: int = 10) -> float:
    """Images per second of onnxruntime (one thread, CPU) on batches of ``batch``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)
    session.run(None, {"input": x})
    began = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {"input": x})
    return batch * repeats / (time.perf_counter() - began)
