"""Certify a dataset split through a server, as the reference ``certify.py`` does locally."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO, TypeVar

from .client import SmoothServeClient
from .datasets import Dataset
from .results import Row

T = TypeVar("T")


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
    options: dict | None = None,
    records_dir: Path | None = None,
) -> list[Row]:
    """One Cohen-format row per index, in order. Requests run ``concurrency`` at a time so the
    server can pack their samples into shared batches. With ``seed``, image i uses seed + i.
    ``options`` go to ``SmoothServeClient.predict`` (procedure, target_radius, tolerance).
    With ``records_dir``, each image's signed certificate record is saved there as
    ``<index>.json``, for ``smoothserve-verify``."""
    if records_dir is not None:
        records_dir.mkdir(parents=True, exist_ok=True)

    def one(idx: int) -> Row:
        started = time.perf_counter()
        result = client.predict(
            model_name, dataset.images[idx], n0=n0, n=n, alpha=alpha,
            seed=None if seed is None else seed + int(idx), **(options or {}),
        )  # fmt: skip
        label = int(dataset.labels[idx])
        if records_dir is not None:
            result.save_record(records_dir / f"{int(idx)}.json")
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
            rows = progress_lines(rows, len(indices), f"certify {model_name}")
        return list(rows)


def progress_lines(
    items: Iterable[T], total: int, desc: str, stream: TextIO | None = None, lines: int = 10
) -> Iterator[T]:
    """Yield ``items`` while showing progress on ``stream`` (stderr): a tqdm bar on a terminal;
    elsewhere (logs, pipes, CI) about ``lines`` plain lines, with no carriage returns."""
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit="img", file=stream)
        return
    every = max(1, -(-total // lines))
    for done, item in enumerate(items, 1):
        if done % every == 0 or done == total:
            print(f"{desc}: {done}/{total} images", file=stream, flush=True)
        yield item
