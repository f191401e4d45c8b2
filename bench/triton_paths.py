#!/usr/bin/env python3
"""Triton transport paths: FP32 over gRPC (the baseline), FP32 through shared memory, FP16
over gRPC and FP16 through shared memory, in one run, as samples/s and ratios to the baseline.

It drives ``TritonBackend.classify`` directly (no noise, no SmoothServe front end) against the
CPU twin of a linear model, so the figures isolate how batches travel to Triton:

    .venv/bin/python bench/triton_paths.py --shape 3,224,224 --batch-size 256 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from smoothserve.backends.triton import TritonBackend
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.triton_twin import TritonProcess, build_twin_repository

PATHS = [("fp32 grpc", False, False), ("fp32 shm", False, True), ("fp16 grpc", True, False),
         ("fp16 shm", True, True)]  # fmt: skip


async def throughput(url: str, fp16: bool, shm: bool, args: argparse.Namespace) -> float:
    backend = TritonBackend(
        [url], fp16=fp16, use_shm=shm, batch_size=args.batch_size, max_concurrent_batches=args.in_flight
    )
    model = (await backend.start()).ready["bench"]["1"]
    rng = np.random.default_rng(0)
    batches = [
        rng.random((args.batch_size, *args.shape), dtype=np.float32) for _ in range(args.in_flight)
    ]

    async def worker(batch: np.ndarray, until: float) -> int:
        done = 0
        while time.perf_counter() < until:
            await backend.classify(model, batch)
            done += len(batch)
        return done

    await asyncio.gather(*(worker(b, time.perf_counter() + 1.0) for b in batches))  # warm-up
    started = time.perf_counter()
    until = started + args.seconds
    counts = await asyncio.gather(*(worker(b, until) for b in batches))
    rate = sum(counts) / (time.perf_counter() - started)
    await backend.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="3,224,224", help="input shape without the batch axis")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--in-flight", type=int, default=2, help="batches in flight at once")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="measured time per path and round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported")
    args = parser.parse_args()
    args.shape = tuple(int(d) for d in args.shape.split(","))
    sample_mb = np.prod(args.shape) * 4 / 1e6
    print(f"input {args.shape} ({sample_mb * args.batch_size:.1f} MB a batch in FP32), "
          f"batch {args.batch_size}, {args.in_flight} in flight, {args.rounds} x {args.seconds} s a path")  # fmt: skip
    samples: dict[str, list[float]] = {label: [] for label, _, _ in PATHS}
    with tempfile.TemporaryDirectory(prefix="triton-paths-") as tmp:
        repo = Path(tmp) / "repo"
        w = np.random.default_rng(1).standard_normal(args.shape)
        write_linear_model(repo, "bench", w / np.linalg.norm(w), 0.0, 0.5, args.shape)
        for fp16 in (False, True):
            build_twin_repository(repo, Path(tmp) / f"twin{int(fp16)}", fp16=fp16)
        # both Tritons up at once; the paths take turns, round after round, so that a change
        # in the machine's load hits all of them alike; each figure is the median of its rounds
        with TritonProcess(Path(tmp) / "twin0") as fp32, TritonProcess(Path(tmp) / "twin1") as fp16:
            for _ in range(args.rounds):
                for label, path_fp16, shm in PATHS:
                    url = fp16.url if path_fp16 else fp32.url
                    samples[label].append(asyncio.run(throughput(url, path_fp16, shm, args)))
    rates = {label: float(np.median(values)) for label, values in samples.items()}
    base = rates["fp32 grpc"]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'path':<10} {'samples/s':>10} {'vs fp32 grpc':>13}   rounds")
    for label, rate in rates.items():
        rounds = " ".join(f"{v:.0f}" for v in samples[label])
        print(f"{label:<10} {rate:>10.0f} {rate / base:>12.2f}x   {rounds}")


if __name__ == "__main__":
    main()
