"""The ImageNet shape served for real: an imported ResNet-50 at 3x224x224 (random weights).

A random-weight torchvision-layout ResNet-50 is saved as the literature's checkpoints are
(``{"epoch", "arch", "state_dict", "optimizer"}`` of ``Sequential(NormalizeLayer,
DataParallel(resnet50))``), imported with ``smoothtrain import`` into a temporary repository
(never committed), then measured in one run, each ratio against a baseline of the same run:

1. the raw network (ONNX Runtime in process, the server's session settings) by batch size;
2. host noise alone (PCG64, x + sigma * N(0, I) at 150,528 values a sample) and the ceiling
   1 / (1/raw + 1/noise);
3. certificates through gRPC on the embedded backend (1 client): samples/s, ÷ raw, ÷ ceiling,
   the batch size the server chose, peak server RSS (VmHWM);
4. the Triton paths through the scheduler (no gRPC front end) against the CPU twin: gRPC bytes
   sent and received per certificate on the batch path (host noise, every noisy copy sent)
   and through the Triton-side sampler (the clean input and a key out, K counts back).

    .venv/bin/python bench/imagenet_shape.py            # about 10 minutes on 2 cores
    .venv/bin/python bench/imagenet_shape.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# run as a script: bench/ is on the import path (run_benchmark, triton_paths beside it)
from run_benchmark import noise_throughput, peak_rss_mib, raw_throughput
from torch import nn
from triton_paths import CountingTriton

from smoothserve.config import ServerConfig
from smoothserve.engine import build_engine
from smoothserve.noise import noise_generator
from smoothserve_client import SmoothServeClient
from smoothserve_dev.testing import ServerProcess
from smoothserve_dev.triton_twin import TritonProcess, build_twin_repository
from smoothtrain import importer, published

NAME, SIGMA, ARCH = "imagenet_resnet50_random", 0.5, "resnet50"
SHAPE = (3, 224, 224)


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-weight ResNet-50 saved in the published layout (keys ``1.module.*``)."""
    torch.manual_seed(seed)
    model = published.build_model(ARCH, published.DATASETS["imagenet"]).eval()
    saved = nn.Sequential(model[0], nn.DataParallel(model[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 90, "arch": ARCH, "state_dict": saved.state_dict(), "optimizer": {}}, path)
    return path


def certify_through_grpc(repo: Path, n: int, n0: int, image: np.ndarray) -> dict:
    args = ["--noise-generator", "pcg64", "--log-level", "WARNING"]
    with ServerProcess(repo, args=args, start_timeout=900) as server:
        with SmoothServeClient(server.address, timeout=3600) as client:
            info = client.model_info(NAME)
            client.predict(NAME, image, n0=10, n=max(64, n // 10))  # warm-up
            started = time.perf_counter()
            result = client.predict(NAME, image, n0=n0, n=n)
            wall = time.perf_counter() - started
        rss = peak_rss_mib(server.process.pid)
    return {
        "samples_per_s": (n0 + n) / wall, "wall_s": wall, "rss_mib": rss,
        "batch_size": getattr(info, "batch_size", 0),
        "batch_source": getattr(info, "batch_size_source", ""), "counts_sum": result.n,
    }  # fmt: skip


async def wire_bytes(repo: Path, url: str, sampler: bool, n: int) -> tuple[int, int]:
    backend = CountingTriton([url], batch_size=32, max_concurrent_batches=2)
    config = ServerConfig(model_repo=repo, batch_size=32, pipeline_depth=2)
    engine = await build_engine(config, backend=backend)
    try:
        model = engine.plane.models[NAME]["1"]
        assert (backend.remote_sampling(model) is not None) == sampler
        scheduler = engine.schedulers[(NAME, "1")]
        counts = await scheduler.count(np.full(SHAPE, 0.5, np.float32), n, noise_generator())
        assert int(np.sum(counts)) == n
        return backend.sent, backend.received
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2_000, help="samples per gRPC certificate")
    parser.add_argument("--wire-n", type=int, default=256, help="samples per Triton certificate")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-triton", action="store_true")
    args = parser.parse_args()
    n, wire_n, seconds = (200, 32, 1.0) if args.quick else (args.n, args.wire_n, 5.0)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; ResNet-50 3x224x224")
    with tempfile.TemporaryDirectory(prefix="imagenet-shape-") as tmp:
        tmp = Path(tmp)
        repo = tmp / "repo"
        ckpt = write_checkpoint(tmp / "noise_0.50" / "checkpoint.pth.tar")
        started = time.perf_counter()
        importer.main(["import", str(ckpt), "--name", NAME, "--model-repo", str(repo)])
        print(f"import: {time.perf_counter() - started:.1f} s")
        onnx = repo / NAME / "1" / "model.onnx"
        raw = raw_throughput(onnx, SHAPE, (8, 16, 32), seconds)
        best = max(raw, key=raw.__getitem__)
        noise = noise_throughput(SHAPE, SIGMA, best, seconds, "pcg64")
        ceiling = 1 / (1 / raw[best] + 1 / noise)
        print("raw images/s by batch:", {b: round(r, 1) for b, r in raw.items()})
        print(f"host noise alone (pcg64): {noise:,.0f} samples/s; ceiling {ceiling:,.1f}")
        image = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
        e2e = certify_through_grpc(repo, n, 100, image)
        print(
            f"gRPC, 1 client, n0 = 100, n = {n:,}: {e2e['samples_per_s']:.1f} samples/s "
            f"({e2e['wall_s']:.1f} s), ÷ raw {e2e['samples_per_s'] / raw[best]:.2f}, ÷ ceiling "
            f"{e2e['samples_per_s'] / ceiling:.2f}; batch {e2e['batch_size']} "
            f"({e2e['batch_source']}); peak server RSS {e2e['rss_mib']:.0f} MiB"
        )
        if args.skip_triton:
            return
        build_twin_repository(repo, tmp / "twin")
        build_twin_repository(repo, tmp / "twin_sampler", samplers=True)
        with TritonProcess(tmp / "twin") as plain, TritonProcess(tmp / "twin_sampler") as smp:
            batch = asyncio.run(wire_bytes(repo, plain.url, False, wire_n))
            sampled = asyncio.run(wire_bytes(repo, smp.url, True, wire_n))
        print(f"Triton, n = {wire_n} samples (no selection), gRPC bytes per certificate:")
        print(f"  batch path (host noise): sent {batch[0]:,} B, received {batch[1]:,} B "
              f"({batch[0] / wire_n:,.0f} B sent a sample)")  # fmt: skip
        print(f"  sampler: sent {sampled[0]:,} B, received {sampled[1]:,} B; batch ÷ sampler "
              f"sent {batch[0] / sampled[0]:,.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
