"""The scheduler loop in process, without gRPC: host noise alone, then BatchScheduler.count
with the ONNX Runtime backend for a few (noise threads, batch size, pipeline depth) settings,
for each noise generator installed.

    .venv/bin/python bench/scheduler_loop.py [--model fmnist_cnn_smoothadv_s050] [--generators ars5,pcg64]
        [--settings threads:batch:depth,...] [--rounds N]

With --rounds, each round first measures the raw network (2 s, batch 1,024) and the host noise
on all cores, then every setting, and prints each setting's ratio to raw and to the noise +
network ceiling of that round: this machine's speed drifts too much between minutes for
ratios across separate runs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from run_benchmark import raw_throughput

from smoothserve.config import ServerConfig
from smoothserve.engine import build_engine
from smoothserve.noise import fast_generator_installed, noise_generator, noise_stream
from smoothserve.repository import latest

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [(1, 1024, 2), (2, 1024, 2), (2, 1024, 3), (2, 2048, 2), (2, 512, 3)]


def noise_only(shape, threads: int, generator: str, batches: int = 30, batch: int = 1024) -> float:
    x = np.random.rand(*shape).astype(np.float32)
    out = np.empty((batch, *shape), np.float32)
    stream, start = noise_stream(noise_generator(), shape, generator), 0
    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        for _ in range(batches):
            pieces = stream.pieces(out, start)
            start += batch
            list(pool.map(lambda p: stream.fill(p[0], x, 0.5, p[1]), pieces))
        return batches * batch / (time.perf_counter() - started)


async def scheduler_rate(
    model_name: str, threads: int, batch: int, depth: int, n: int, generator: str
) -> float:
    config = ServerConfig(
        model_repo=ROOT / "model_repo", providers=("CPUExecutionProvider",), batch_size=batch,
        pipeline_depth=depth, noise_threads=threads, noise_generator=generator,
    )  # fmt: skip
    engine = await build_engine(config)  # the server's own assembly, without its doors
    model = latest(engine.plane.models[model_name])
    scheduler = engine.schedulers[(model.name, model.version)]
    x = np.random.rand(*model.config.input_shape).astype(np.float32)
    await scheduler.count(x, 20_000, noise_generator())  # warm-up
    started = time.perf_counter()
    await scheduler.count(x, n, noise_generator())
    rate = n / (time.perf_counter() - started)
    await engine.close()
    return rate


def raw_rate(model_name: str, batch: int = 1024, seconds: float = 2.0) -> float:
    path = max((ROOT / "model_repo" / model_name).glob("*/model.onnx"))
    shape = tuple(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[1:])
    return raw_throughput(path, shape, (batch,), seconds)[batch]


def rounds(args, settings) -> None:
    for generator in args.generators.split(","):
        for k in range(args.rounds):
            raw = raw_rate(args.model)
            noise = noise_only((1, 28, 28), 2, generator, batches=60)
            ceiling = 1 / (1 / raw + 1 / noise)
            line = [f"{generator} round {k + 1}: raw {raw:,.0f}, noise {noise:,.0f}, ceiling {ceiling:,.0f}"]
            for threads, batch, depth in settings:
                rate = asyncio.run(scheduler_rate(args.model, threads, batch, depth, args.n, generator))
                line.append(f"{threads}:{batch}:{depth} {rate:,.0f} ({rate / raw:.2f} raw, {rate / ceiling:.2f} ceiling)")
            print(" | ".join(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="fmnist_cnn_smoothadv_s050")
    parser.add_argument("--n", type=int, default=200_000)
    default = "ars5,pcg64" if fast_generator_installed() else "pcg64"
    parser.add_argument("--generators", default=default)
    parser.add_argument("--settings", default="", help="threads:batch:depth,... (default: a few)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds with raw and ceiling")
    args = parser.parse_args()
    settings = [tuple(map(int, s.split(":"))) for s in args.settings.split(",") if s] or SETTINGS
    if args.rounds:
        rounds(args, settings)
        return
    for generator in args.generators.split(","):
        for threads in (1, 2):
            rate = noise_only((1, 28, 28), threads, generator)
            print(f"{generator}: host noise alone, {threads} threads: {rate:,.0f} samples/s")
        for threads, batch, depth in settings:
            rate = asyncio.run(scheduler_rate(args.model, threads, batch, depth, args.n, generator))
            print(
                f"{generator}: noise threads {threads}, batch {batch}, depth {depth}: {rate:,.0f} samples/s"
            )


if __name__ == "__main__":
    main()
