"""Certify a dataset split through a server, as the reference ``certify.py`` does locally."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from .client import SmoothServeClient
from .datasets import Dataset
from .results import Row


def certify_dataset(
    client: SmoothServeClient,
    model_name: str,
    dataset: Dataset,
    indices: Sequence[int],
    n0: int | None = None,
    n: int | None = None,
    alpha: float | None = None,
    concurrency: int = 4,
    progress: bool = True,
    seed: int | None = None,
) -> list[Row]:
    """One Cohen-format row per index, in order. Requests run ``concurrency`` at a time so the
    server can pack their samples into shared batches. With ``seed``, image i uses seed + i."""

    def one(idx: int) -> Row:
        started = time.perf_counter()
        result = client.predict(
            model_name, dataset.images[idx], n0=n0, n=n, alpha=alpha,
            seed=None if seed is None else seed + int(idx),
        )  # fmt: skip
        label = int(dataset.labels[idx])
        return Row(
            idx=int(idx),
            label=label,
            predict=result.prediction,
            radius=result.radius,
            correct=int(result.prediction == label),
            time=time.perf_counter() - started,
        )

    with ThreadPoolExecutor(concurrency) as pool:
        rows = pool.map(one, indices)
        if progress:
            from tqdm import tqdm

            rows = tqdm(rows, total=len(indices), desc=f"certify {model_name}", unit="img")
        return list(rows)
