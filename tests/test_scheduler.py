"""The scheduler with the real ONNX Runtime backend, in process: packing, fairness, and the
two noise strategies (host noise, and noise drawn by the backend from per-segment seeds)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from conftest import LINEAR_SHAPE

from smoothserve.backends.base import NoisySegment
from smoothserve.backends.onnxruntime import OnnxRuntimeBackend
from smoothserve.errors import BadState
from smoothserve.metrics import Metrics
from smoothserve.noise import noise_generator
from smoothserve.repository import ModelVersion, latest
from smoothserve.sampling import DeviceNoise, HostNoise
from smoothserve.scheduler import BatchScheduler, Tally


class SeededNoiseBackend(OnnxRuntimeBackend):
    """ONNX Runtime behind the device-noise interface: ``classify_noisy`` draws each segment's
    noise from its seed alone (as the torch backend does on the CPU), so the scheduler's
    device path runs without torch. Keeps every segment it was given."""

    generates_noise = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.segments: list[NoisySegment] = []

    async def classify_noisy(self, model: ModelVersion, segments: list[NoisySegment]) -> np.ndarray:
        self.segments.extend(segments)
        sigma = model.config.sigma
        batch = np.concatenate([
            x + sigma * noise_generator(seed).standard_normal((count, *x.shape), np.float32)
            for x, count, seed in segments
        ])  # fmt: skip
        return await self.classify(model, batch)


async def make_scheduler(
    repo, batch_size: int, depth: int = 1, noise_threads: int = 1, device: bool = False
):
    kind = SeededNoiseBackend if device else OnnxRuntimeBackend
    backend = kind(repo, providers=["CPUExecutionProvider"])
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


def test_a_burst_of_requests_is_cut_into_large_segments_in_turn(linear_repo) -> None:
    """256 concurrent requests, batches of 256: each batch serves 4 jobs with 64 samples each,
    and every job is served once before any is served twice. An equal share would cut 256
    one-sample segments per batch; their bookkeeping on the event loop made such a burst about
    7 times slower and held up the refusals of the requests beyond the limit for about 1 s."""

    async def main():
        scheduler, _ = await make_scheduler(linear_repo, 256, depth=2, device=True)
        inputs = [np.full(LINEAR_SHAPE, 0.5, np.float32) for _ in range(256)]
        jobs = [scheduler.count(x, 640, noise_generator(i)) for i, x in enumerate(inputs)]
        await asyncio.gather(*jobs)
        await scheduler.close()
        return scheduler.backend.segments

    segments = asyncio.run(main())
    assert {count for _, count, _ in segments} == {64}
    first_round = [id(x) for x, _, _ in segments[:256]]
    assert len(set(first_round)) == 256


# The two noise strategies behind the scheduler ---------------------------------------------

STRATEGIES = pytest.mark.parametrize("device", [False, True], ids=["host", "device"])
GREY = np.full(LINEAR_SHAPE, 0.5, np.float32)


def histogram(metric, **labels: str) -> tuple[float, float]:
    """(count, sum) of one labelled series of a histogram."""
    values = {s.name.rsplit("_", 1)[-1]: s.value
              for s in metric.collect()[0].samples if s.labels == labels}  # fmt: skip
    return values["count"], values["sum"]


def test_the_strategy_follows_the_backend(linear_repo) -> None:
    async def main():
        host, _ = await make_scheduler(linear_repo, 64, depth=3)
        device, _ = await make_scheduler(linear_repo, 64, depth=3, device=True)
        for scheduler in (host, device):
            await scheduler.close()
        return host.noise, device.noise

    host, device = asyncio.run(main())
    assert isinstance(host, HostNoise) and len(host._buffers) == 3
    assert isinstance(device, DeviceNoise)


@STRATEGIES
def test_callbacks_and_metrics_count_every_sample(linear_repo, device: bool) -> None:
    async def main():
        scheduler, metrics = await make_scheduler(linear_repo, 100, depth=2, device=device)
        seen: list[int] = []
        counts = await asyncio.gather(
            scheduler.count(GREY, 250, noise_generator(1), seen.append),
            scheduler.count(GREY, 130, noise_generator(2)),
        )
        await scheduler.close()
        return counts, seen, metrics

    counts, seen, metrics = asyncio.run(main())
    assert [c.sum() for c in counts] == [250, 130]
    assert sum(seen) == 250 and max(seen) <= 100
    assert metrics.noisy_samples.labels("linear")._value.get() == 380
    assert histogram(metrics.batch_size, model="linear") == (4, 380)  # 100 + 100 + 100 + 80
    assert histogram(metrics.batch_fill, model="linear") == (4, pytest.approx(3.8))
    assert histogram(metrics.backend_latency, model="linear", backend="onnxruntime")[0] == 4


@STRATEGIES
def test_seeded_counts_reproduce(linear_repo, device: bool) -> None:
    async def run(seed: int) -> list[int]:
        scheduler, _ = await make_scheduler(linear_repo, 128, depth=2, device=device)
        counts = await scheduler.count(GREY, 2_000, noise_generator(seed))
        await scheduler.close()
        return counts.tolist()

    first = asyncio.run(run(5))
    assert asyncio.run(run(5)) == first and asyncio.run(run(6)) != first


def test_device_seeds_come_from_each_job_in_cut_order(linear_repo) -> None:
    """Each segment's seed is the job's generator's next draw, in the order batches were cut,
    however many batches are in flight."""

    async def main():
        scheduler, _ = await make_scheduler(linear_repo, 64, depth=3, device=True)
        inputs = [np.full(LINEAR_SHAPE, 0.1 * (k + 1), np.float32) for k in range(3)]
        jobs = [scheduler.count(x, 300 + 50 * k, noise_generator(40 + k))
                for k, x in enumerate(inputs)]  # fmt: skip
        await asyncio.gather(*jobs)
        await scheduler.close()
        return inputs, scheduler.backend.segments

    inputs, segments = asyncio.run(main())
    for k, x in enumerate(inputs):
        mine = [(count, seed) for clean, count, seed in segments if clean is x]
        rng = noise_generator(40 + k)
        assert [seed for _, seed in mine] == [int(rng.integers(2**63)) for _ in mine]
        assert sum(count for count, _ in mine) == 300 + 50 * k


def failing(backend, device: bool, error: BaseException, times: int = 1) -> None:
    """The backend's next ``times`` batches fail with ``error``; later ones succeed."""
    name = "classify_noisy" if device else "classify"
    real, left = getattr(backend, name), [times]

    async def call(*args):
        if left[0]:
            left[0] -= 1
            raise error
        return await real(*args)

    setattr(backend, name, call)


@STRATEGIES
def test_a_backend_error_fails_the_batch_and_frees_its_slot(linear_repo, device: bool) -> None:
    async def main():
        scheduler, _ = await make_scheduler(linear_repo, 256, depth=1, device=device)
        failing(scheduler.backend, device, RuntimeError("backend down"))
        both = asyncio.gather(
            scheduler.count(GREY, 100, noise_generator(1)),
            scheduler.count(GREY, 100, noise_generator(2)),
            return_exceptions=True,
        )
        errors = await asyncio.wait_for(both, 10)
        after = await asyncio.wait_for(scheduler.count(GREY, 100, noise_generator(3)), 10)
        await scheduler.close()
        return errors, after, scheduler.queue_depth

    errors, after, depth = asyncio.run(main())
    assert [str(e) for e in errors] == ["backend down"] * 2  # every job in the batch
    assert after.sum() == 100 and depth == 0


@STRATEGIES
def test_a_wrong_number_of_classes_is_a_bad_state(linear_repo, device: bool) -> None:
    async def main():
        scheduler, _ = await make_scheduler(linear_repo, 64, depth=1, device=device)
        name = "classify_noisy" if device else "classify"
        real = getattr(scheduler.backend, name)

        async def one_short(*args):
            return (await real(*args))[:-1]

        setattr(scheduler.backend, name, one_short)
        with pytest.raises(BadState, match="returned 49 classes .* for 50 samples"):
            await scheduler.count(GREY, 50, noise_generator(1))
        setattr(scheduler.backend, name, real)
        after = await asyncio.wait_for(scheduler.count(GREY, 50, noise_generator(2)), 10)
        await scheduler.close()
        return after

    assert asyncio.run(main()).sum() == 50


@STRATEGIES
def test_cancellation_and_fail_all(linear_repo, device: bool) -> None:
    async def main():
        scheduler, metrics = await make_scheduler(linear_repo, 256, depth=2, device=device)
        large = asyncio.ensure_future(scheduler.count(GREY, 10**9, noise_generator(1)))
        await asyncio.sleep(0.05)
        large.cancel()
        with pytest.raises(asyncio.CancelledError):
            await large
        left_after_cancel = scheduler.queue_depth
        small = await asyncio.wait_for(scheduler.count(GREY, 500, noise_generator(2)), 10)
        abandoned = metrics.samples_abandoned.labels("linear")._value.get()

        waiting = asyncio.ensure_future(scheduler.count(GREY, 10**9, noise_generator(3)))
        await asyncio.sleep(0.05)
        over = RuntimeError("server shutting down")
        scheduler.fail_all(over)
        with pytest.raises(RuntimeError, match="shutting down"):
            await waiting
        with pytest.raises(RuntimeError, match="shutting down"):
            await scheduler.count(GREY, 10, noise_generator(4))
        await scheduler.close()
        return left_after_cancel, small, abandoned

    left, small, abandoned = asyncio.run(main())
    assert left == 0 and small.sum() == 500
    assert 0 < abandoned < 10**9


@STRATEGIES
def test_a_cancelled_job_keeps_the_votes_of_its_classified_batches(linear_repo, device) -> None:
    """What a deadline's cut look keeps: the tally of a cancelled job holds whole segments'
    votes, counts that sum to its samples, and nothing is added after the cancellation."""

    async def main():
        scheduler, metrics = await make_scheduler(linear_repo, 256, depth=2, device=device)
        tally = Tally(np.zeros(2, np.int64))
        job = asyncio.ensure_future(scheduler.count(GREY, 10**9, noise_generator(1), None,
                                                    False, tally))  # fmt: skip
        await asyncio.sleep(0.1)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        kept = (tally.samples, tally.counts.copy())
        await asyncio.sleep(0.05)  # batches still in flight finish without adding to it
        await scheduler.close()
        return kept, tally

    (samples, counts), tally = asyncio.run(main())
    assert samples > 0 and samples % 64 == 0 and counts.sum() == samples
    assert tally.samples == samples and (tally.counts == counts).all()
    with pytest.raises(ValueError, match="starts empty"):
        asyncio.run(make_and_count_with(linear_repo, Tally(np.ones(2, np.int64))))


@STRATEGIES
def test_a_job_stopped_at_its_tallys_time_ends_with_its_batches_in_flight(linear_repo,
                                                                          device) -> None:
    """``Tally.stop_at``: no batch is cut for the job from then on, and it returns (not raises)
    once the batches in flight are back, with every one of their samples counted."""

    async def main():
        scheduler, metrics = await make_scheduler(linear_repo, 256, depth=2, device=device)
        tally = Tally(np.zeros(2, np.int64), stop_at=time.monotonic() + 0.1)
        started = time.monotonic()
        counts = await asyncio.wait_for(
            scheduler.count(GREY, 10**9, noise_generator(1), None, False, tally), 10
        )
        took = time.monotonic() - started
        abandoned = metrics.samples_abandoned.labels("linear")._value.get()
        await scheduler.close()
        return counts, tally, took, abandoned

    counts, tally, took, abandoned = asyncio.run(main())
    assert tally.stopped and 0 < tally.samples < 10**9 and counts.sum() == tally.samples
    assert tally.samples % 64 == 0 and 0.1 <= took < 5
    assert abandoned == 10**9 - tally.samples


async def make_and_count_with(repo, tally: Tally):
    scheduler, _ = await make_scheduler(repo, 256)
    try:
        return await scheduler.count(GREY, 10, noise_generator(1), tally=tally)
    finally:
        await scheduler.close()


def test_close_stops_the_host_noise_threads(linear_repo) -> None:
    async def main():
        scheduler, _ = await make_scheduler(linear_repo, 256, depth=2, noise_threads=2)
        await scheduler.count(GREY, 2_000, noise_generator(1))
        await scheduler.close()

    def noise_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith(("fill-", "noise-"))]

    assert not noise_threads()
    asyncio.run(main())
    deadline = time.monotonic() + 5
    while noise_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not noise_threads()
