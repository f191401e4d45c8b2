#!/usr/bin/env python3
"""Triton transport paths: FP32 over gRPC (the baseline), FP32 through shared memory, FP16
over gRPC and FP16 through shared memory, in one run, as samples/s and ratios to the baseline.

It drives ``TritonBackend.classify`` directly (no noise, no SmoothServe front end) against the
CPU twin of a linear model, so the figures isolate how batches travel to Triton:

    .venv/bin/python bench/triton_paths.py --shape 3,224,224 --batch-size 256 --rounds 3

Then the certification paths, through SmoothServe's scheduler with its noise (no gRPC front
end): the embedded backend (ONNX Runtime in process, host noise: the baseline), Triton with
host noise over gRPC and through shared memory (the batch path), and Triton's sampler (noise
drawn in Triton, votes back). Each prints samples/s, its ratio to the embedded backend, and the
gRPC bytes sent to and received from Triton per certificate at n and at n / 10 (the protobuf
messages' sizes; shared memory's batches travel through /dev/shm besides):

    .venv/bin/python bench/triton_paths.py --shape 3,32,32 --n 100000 --skip-transport
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.grpc._utils import _get_inference_request

from smoothserve.backends.onnxruntime import OnnxRuntimeBackend
from smoothserve.backends.triton import TritonBackend
from smoothserve.config import ServerConfig
from smoothserve.engine import build_engine
from smoothserve.noise import noise_generator
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


class CountingTriton(TritonBackend):
    """The Triton backend, adding up the gRPC message bytes of its calls."""

    sent = received = 0

    async def _infer(self, model, inputs, size, target=None, output=None):
        result = await super()._infer(model, inputs, size, target, output)
        name, version = target or (model.name, model.version)
        request = _get_inference_request(
            model_name=name, inputs=inputs, model_version=version, request_id="",
            outputs=[triton_grpc.InferRequestedOutput(output or model.config.output_name)],
            sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
            parameters=None,
        )  # fmt: skip
        self.sent += request.ByteSize()
        self.received += result.get_response().ByteSize()
        return result


CERTIFY_PATHS = ["embedded", "triton grpc", "triton shm", "triton sampler"]


async def certify_rate(path: str, urls: dict[str, str], repo: Path, args) -> dict:
    """Samples/s of ``args.clients`` concurrent certifications of n samples through the
    scheduler, and the gRPC bytes of one certificate at n and at n / 10."""
    threads = os.cpu_count() or 1
    if path == "embedded":
        backend = OnnxRuntimeBackend(repo, ["CPUExecutionProvider"], max_concurrent_batches=2)
    else:
        url = urls["sampler" if path == "triton sampler" else "plain"]
        backend = CountingTriton(
            [url], use_shm=path == "triton shm", batch_size=args.batch_size,
            max_concurrent_batches=2,
        )  # fmt: skip
    config = ServerConfig(model_repo=repo, batch_size=args.batch_size, pipeline_depth=2,
                          noise_threads=threads)  # fmt: skip
    engine = await build_engine(config, backend=backend)  # the server's own assembly
    model = engine.plane.models["bench"]["1"]
    if path == "triton sampler":
        assert backend.remote_sampling(model) is not None, "the sampler path is not in use"
    scheduler = engine.schedulers[("bench", "1")]
    x = np.full(args.shape, 0.5, np.float32)
    figures: dict = {}
    try:
        await scheduler.count(x, min(args.n, 20_000), noise_generator())  # warm-up
        if isinstance(backend, CountingTriton):
            for n in (args.n // 10, args.n):
                backend.sent = backend.received = 0
                await scheduler.count(x, n, noise_generator())
                figures[n] = (backend.sent, backend.received)

        async def client(until: float) -> int:
            done = 0
            while time.perf_counter() < until:
                await scheduler.count(x, args.n, noise_generator())
                done += args.n
            return done

        started = time.perf_counter()
        until = started + args.seconds
        done = await asyncio.gather(*(client(until) for _ in range(args.clients)))
        figures["rate"] = sum(done) / (time.perf_counter() - started)
    finally:
        await engine.close()
    return figures


def certification_paths(args: argparse.Namespace, tmp: Path, repo: Path) -> None:
    build_twin_repository(
        repo, tmp / "twin_sampler", samplers=True,
        sampler_options={"instances": args.sampler_instances},
    )  # fmt: skip
    results: dict[str, list[dict]] = {path: [] for path in CERTIFY_PATHS}
    with TritonProcess(tmp / "twin0") as plain, TritonProcess(tmp / "twin_sampler") as sampler:
        urls = {"plain": plain.url, "sampler": sampler.url}
        for _ in range(args.rounds):
            for path in CERTIFY_PATHS:
                results[path].append(asyncio.run(certify_rate(path, urls, repo, args)))
    rates = {path: float(np.median([r["rate"] for r in rounds])) for path, rounds in results.items()}
    base = rates["embedded"]
    print(f"\ncertification: n = {args.n}, {args.clients} clients, {args.rounds} x "
          f"{args.seconds} s a path, sampler instances {args.sampler_instances}, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    small = args.n // 10
    print(f"{'path':<15} {'samples/s':>10} {'vs embedded':>12}   "
          f"{'sent/cert (n/10)':>17} {'sent/cert (n)':>14} {'received/cert (n)':>18}   rounds")
    for path, rate in rates.items():
        first = results[path][0]
        rounds = " ".join(f"{r['rate']:.0f}" for r in results[path])
        if path == "embedded":
            wire = f"{'-':>17} {'-':>14} {'-':>18}"
        else:
            wire = (f"{first[small][0]:>17,} {first[args.n][0]:>14,} "
                    f"{first[args.n][1]:>18,}")  # fmt: skip
        print(f"{path:<15} {rate:>10.0f} {rate / base:>11.2f}x   {wire}   {rounds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="3,224,224", help="input shape without the batch axis")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--in-flight", type=int, default=2, help="batches in flight at once")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="measured time per path and round"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported")
    parser.add_argument("--n", type=int, default=100_000, help="samples per certificate")
    parser.add_argument("--clients", type=int, default=2, help="concurrent certifications")
    parser.add_argument("--sampler-instances", type=int, default=1, help="sampler stubs")
    parser.add_argument("--skip-transport", action="store_true", help="certification only")
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
        if not args.skip_transport:
            transport_paths(args, Path(tmp), samples)
        certification_paths(args, Path(tmp), repo)


def transport_paths(args: argparse.Namespace, tmp: Path, samples: dict) -> None:
    with TritonProcess(tmp / "twin0") as fp32, TritonProcess(tmp / "twin1") as fp16:
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
