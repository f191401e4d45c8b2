"""The scheduler with the real ONNX Runtime backend, in process: packing and fairness."""

from __future__ import annotations

import asyncio

import numpy as np
from conftest import LINEAR_SHAPE

from smoothserve.backends.onnxruntime import OnnxRuntimeBackend
from smoothserve.metrics import Metrics
from smoothserve.noise import noise_generator
from smoothserve.repository import latest
from smoothserve.scheduler import BatchScheduler


async def make_scheduler(repo, batch_size: int, depth: int = 1, noise_threads: int = 1):
    backend = OnnxRuntimeBackend(repo, providers=["CPUExecutionProvider"])
    model = latest((await backend.start()).ready["linear"])
    metrics = Metrics()
    scheduler = BatchScheduler(
        model, backend, metrics, batch_size=batch_size, pipeline_depth=depth,
        noise_threads=noise_threads,
    )  # fmt: skip
    scheduler.start()
    return scheduler, metrics


def batches(metrics: Metrics) -> tuple[float, float]:
    """(number of batches, samples in them) from the batch-size histogram."""
    count = sum_ = 0.0
    for metric in metrics.batch_size.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                sum_ += sample.value
    return count, sum_


def test_eight_concurrent_requests_fill_one_batch_together(linear_repo) -> None:
    async def main():
        scheduler, metrics = await make_scheduler(linear_repo, batch_size=1024)
        x = np.full(LINEAR_SHAPE, 0.5, np.float32)
        jobs = [scheduler.count(x, 100, noise_generator(i)) for i in range(8)]
        counts = await asyncio.gather(*jobs)
        await scheduler.close()
        return counts, batches(metrics)

    counts, (num_batches, samples) = asyncio.run(main())
    assert all(c.sum() == 100 for c in counts)
    assert (num_batches, samples) == (1, 800)


def test_a_large_request_does_not_starve_a_small_one(linear_repo) -> None:
    async def main():
        scheduler, metrics = await make_scheduler(linear_repo, batch_size=256, depth=2)
        x = np.full(LINEAR_SHAPE, 0.5, np.float32)
        large = asyncio.ensure_future(scheduler.count(x, 2_000_000, noise_generator(1)))
        await asyncio.sleep(0.05)  # the large request is already filling batches
        await scheduler.count(x, 1_000, noise_generator(2))
        done_after_small = batches(metrics)[1]
        large.cancel()
        await scheduler.close()
        return done_after_small

    # The small request gets half of each batch: about 1,000 / 128 = 8 batches after it joins.
    samples_when_small_finished = asyncio.run(main())
    assert samples_when_small_finished < 2_000_000 / 10


def test_seeded_counts_do_not_depend_on_batching(linear_repo) -> None:
    async def run(batch_size: int, others: int, threads: int = 1):
        scheduler, _ = await make_scheduler(linear_repo, batch_size, depth=2, noise_threads=threads)
        x = np.full(LINEAR_SHAPE, 0.5, np.float32)
        noise = [scheduler.count(x, 3_000, noise_generator(100 + i)) for i in range(others)]
        target = scheduler.count(x, 5_000, noise_generator(7))
        *_, counts = await asyncio.gather(*noise, target)
        await scheduler.close()
        return counts.tolist()

    alone = asyncio.run(run(batch_size=4096, others=0))
    assert asyncio.run(run(batch_size=100, others=3)) == alone
    assert asyncio.run(run(batch_size=777, others=5)) == alone
    assert asyncio.run(run(batch_size=1024, others=2, threads=2)) == alone
    assert asyncio.run(run(batch_size=4096, others=0, threads=3)) == alone
