"""The torch backend (noise on the device) against the ONNX Runtime backend (noise on the host).

    .venv/bin/python bench/torch_backend.py                       # a served fmnist model, else
                                                                  # a random-weight SmallCNN
    .venv/bin/python bench/torch_backend.py --model fmnist_cnn_gauss_s025 --n 400000

Both run through the server's own BatchScheduler in process, so each figure includes drawing the
noise, batching, the network and counting: noisy samples/s for one request of n samples and for
8 concurrent ones, after a warm-up; the two backends alternate --repeats times and the best of
each is kept (the machine may be shared). Prints the ratio torch / onnxruntime. On a host
with CUDA the torch backend runs there (add --torch-half / --cuda-graphs to try them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from smoothcert.model_config import SmoothModelConfig
from smoothserve.backends.base import Backend
from smoothserve.backends.onnxruntime import OnnxRuntimeBackend, default_providers
from smoothserve.backends.torch_backend import TorchBackend
from smoothserve.config import ServerConfig
from smoothserve.engine import build_engine
from smoothserve.noise import noise_generator
from smoothserve.repository import latest
from smoothtrain.torchscript import write_torchscript

ROOT = Path(__file__).resolve().parents[1]


def served_model(repo: Path) -> str | None:
    """The first model of ``repo`` that has a TorchScript twin."""
    for config in sorted(repo.glob("*/config.pbtxt")):
        if any(config.parent.glob("*/model.pt")):
            return config.parent.name
    return None


def random_cnn_repo(root: Path) -> tuple[Path, str]:
    """The Fashion-MNIST SmallCNN architecture with random weights, as ONNX and TorchScript."""
    from smoothtrain.models import build_model
    from smoothtrain.onnx_export import export_onnx

    shape, name = (1, 28, 28), "random_cnn"
    torch.manual_seed(0)
    net = build_model("cnn", "fashion-mnist", shape, 10).eval()
    export_onnx(net, shape, root / name / "1" / "model.onnx")
    write_torchscript(net, shape, root / name / "1" / "model.pt")
    labels = tuple(str(k) for k in range(10))
    SmoothModelConfig(name=name, sigma=0.25, labels=labels, input_shape=shape).write(root / name)
    return root, name


async def samples_per_s(backend: Backend, name: str, n: int, jobs: int, batch: int) -> float:
    config = ServerConfig(model_repo=backend.model_repo, batch_size=batch, pipeline_depth=2,
                          exit_on_error=False)  # fmt: skip
    engine = await build_engine(config, backend=backend)  # the server's own assembly
    model = latest(engine.plane.models[name])
    scheduler = engine.schedulers[(model.name, model.version)]
    low, high = model.config.value_range
    rng = np.random.default_rng(0)
    x = (low + (high - low) * rng.random(model.config.input_shape)).astype(np.float32)
    await scheduler.count(x, 4 * batch, noise_generator())  # warm-up
    started = time.perf_counter()
    await asyncio.gather(*(scheduler.count(x, n // jobs, noise_generator()) for _ in range(jobs)))
    elapsed = time.perf_counter() - started
    await engine.close()
    return jobs * (n // jobs) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--model", default=None, help="default: a served model with model.pt")
    parser.add_argument("--n", type=int, default=200_000, help="noisy samples per measurement")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs; best kept")
    parser.add_argument("--torch-device", default="")
    parser.add_argument("--torch-half", action="store_true")
    parser.add_argument("--cuda-graphs", action="store_true")
    args = parser.parse_args(argv)

    scratch = tempfile.TemporaryDirectory()
    repo, name = args.model_repo, args.model
    if name is None and repo.is_dir():
        name = served_model(repo)
    if name is None:
        repo, name = random_cnn_repo(Path(scratch.name))
    threads = torch.get_num_threads()
    device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"onnxruntime providers {default_providers()}, torch device {device}")
    print(f"model {name} from {repo}; {os.cpu_count()} cores, torch threads {threads}, "
          f"load average {os.getloadavg()[0]:.1f}; n = {args.n}, batch {args.batch_size}")  # fmt: skip

    def ort() -> Backend:
        return OnnxRuntimeBackend(repo, providers=default_providers())

    def on_device() -> Backend:
        return TorchBackend(
            repo,
            device=args.torch_device,
            half=args.torch_half,
            cuda_graphs=args.cuda_graphs,
            batch_size=args.batch_size,
        )

    print(f"{'requests':>8} {'onnxruntime':>14} {'torch':>14} {'torch/ort':>10}")
    for jobs in (1, 8):
        host = device = 0.0
        for _ in range(args.repeats):  # alternating, best of each: robust to a busy machine
            measure = (ort(), name, args.n, jobs, args.batch_size)
            host = max(host, asyncio.run(samples_per_s(*measure)))
            measure = (on_device(), name, args.n, jobs, args.batch_size)
            device = max(device, asyncio.run(samples_per_s(*measure)))
        print(f"{jobs:>8} {host:>12,.0f}/s {device:>12,.0f}/s {device / host:>9.2f}x")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
