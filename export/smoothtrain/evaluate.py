"""Evaluation: certification through the real gRPC server, and the empirical SmoothAdv attack.

Certified accuracy comes from the server (CERTIFY in ``smoothserve.certify``, reached through
``smoothserve_client``); the empirical robust accuracy is the SmoothAdv PGD attack on the
smoothed soft classifier, in torch, followed by PREDICT on the adversarial input.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from smoothserve.certify import predict
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
    root = Path(__file__).resolve().parents[2]
    paths = [str(root / "server"), str(root / "clients"), os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    server = ServerProcess(model_repo=Path(model_repo), args=list(server_args), env=env)
    with server:
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


@torch.no_grad()
def smoothed_counts(
    model: nn.Module, x: torch.Tensor, sigma: float, n: int, num_classes: int, batch: int = 2000
) -> np.ndarray:
    """Votes of f(x + N(0, sigma^2 I)) over n draws, for each input of x (B, C, H, W)."""
    counts = np.zeros((len(x), num_classes), dtype=np.int64)
    for i, image in enumerate(x):
        remaining = n
        while remaining > 0:
            size = min(batch, remaining)
            noisy = image.unsqueeze(0) + sigma * torch.randn(size, *image.shape)
            votes = model(noisy).argmax(1).numpy()
            counts[i] += np.bincount(votes, minlength=num_classes)
            remaining -= size
    return counts


def empirical_robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    epsilons: Iterable[float],
    steps: int = 20,
    m: int = 16,
    n: int = 1000,
    alpha: float = 0.001,
    batch: int = 100,
    progress: bool = True,
) -> dict[float, float]:
    """Fraction of inputs on which PREDICT (n samples, alpha) still returns the true label
    after the SmoothAdv PGD attack (``steps`` steps, m fresh noise draws per step) at each
    epsilon; an abstention counts as an error, as in Salman et al.'s empirical figures."""
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    num_classes = int(model(x[:1]).shape[1])
    accuracy = {}
    for eps in epsilons:
        correct = 0
        starts = range(0, len(y), batch)
        for start in tqdm(starts, desc=f"attack eps={eps}", disable=not progress, leave=False):
            xb, yb = x[start : start + batch], y[start : start + batch]
            adv = pgd_l2(model, xb, yb, eps, steps, sigma=sigma, m=m)
            counts = smoothed_counts(model, adv, sigma, n, num_classes)
            for row, label in zip(counts, yb.tolist(), strict=True):
                correct += int(predict(row, alpha).prediction == label)
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
