"""The scheduler loop in process, without gRPC: host noise alone, then BatchScheduler.count
with the ONNX Runtime backend for a few (noise threads, batch size, pipeline depth) settings.

    .venv/bin/python bench/scheduler_loop.py [--model fmnist_cnn_smoothadv_s050]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from smoothserve.backends.onnxruntime import OnnxRuntimeBackend
from smoothserve.metrics import Metrics
from smoothserve.noise import NoiseStream, fill_noisy_copies, noise_generator
from smoothserve.repository import latest
from smoothserve.scheduler import BatchScheduler

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [(1, 1024, 2), (2, 1024, 2), (2, 1024, 3), (2, 2048, 2), (2, 512, 3)]


def noise_only(shape, threads: int, batches: int = 30, batch: int = 1024) -> float:
    x = np.random.rand(*shape).astype(np.float32)
    out = np.empty((batch, *shape), np.float32)
    stream, start = NoiseStream(noise_generator(), shape), 0
    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        for _ in range(batches):
            pieces = stream.pieces(out, start)
            start += batch
            list(pool.map(lambda p: fill_noisy_copies(p[0], x, 0.5, p[1]), pieces))
        return batches * batch / (time.perf_counter() - started)


async def scheduler_rate(model_name: str, threads: int, batch: int, depth: int, n: int) -> float:
    backend = OnnxRuntimeBackend(ROOT / "model_repo", ["CPUExecutionProvider"], max_concurrent_batches=depth)
    model = latest((await backend.start()).ready[model_name])
    scheduler = BatchScheduler(model, backend, Metrics(), batch, depth, threads)
    scheduler.start()
    x = np.random.rand(*model.config.input_shape).astype(np.float32)
    await scheduler.count(x, 20_000, noise_generator())  # warm-up
    started = time.perf_counter()
    await scheduler.count(x, n, noise_generator())
    rate = n / (time.perf_counter() - started)
    await scheduler.close()
    await backend.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="fmnist_cnn_smoothadv_s050")
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    for threads in (1, 2):
        print(f"host noise alone, {threads} threads: {noise_only((1, 28, 28), threads):,.0f} samples/s")
    for threads, batch, depth in SETTINGS:
        rate = asyncio.run(scheduler_rate(args.model, threads, batch, depth, args.n))
        print(f"noise threads {threads}, batch {batch}, depth {depth}: {rate:,.0f} samples/s")


if __name__ == "__main__":
    main()
