"""The benchmark: SmoothServe against the raw network and the reference algorithm, in one run.

    .venv/bin/python bench/run_benchmark.py            # full run (< 10 min), writes docs/benchmarks.md
    .venv/bin/python bench/run_benchmark.py --quick    # smoke run (tiny n), writes nothing

It measures, on the same model and machine:
  1. raw backend throughput: images/s of the bare ONNX network in process, at its best batch size;
  2. end-to-end certification through gRPC, in noisy samples/s, for 1, 8 and 32 concurrent
     clients at n = 10,000 and n = 100,000, with p50/p99 latency per certificate;
  3. the baseline: the reference algorithm (Cohen et al.'s core.py) as an eager-torch loop on
     the same weights: repeat the input, add randn, argmax, count, Clopper-Pearson;
  4. the Triton backend (plain gRPC, fp16, shared memory), when tritonserver is installed;
and prints the ratios server/raw and server/baseline, and the server's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from smoothserve.certify import certify
from smoothserve.model_config import SmoothModelConfig
from smoothserve.noise import NoiseStream, fill_noisy_copies, noise_generator
from smoothserve_client import SmoothServeClient
from smoothserve_client.datasets import load_fashion_mnist
from smoothserve_dev.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class EndToEnd:
    clients: int
    n: int
    certificates: int
    samples_per_s: float
    p50: float
    p99: float


def default_model(repo: Path) -> str:
    marker = repo / "DEFAULT_MODEL"
    if marker.exists():
        return marker.read_text().strip()
    return sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").exists())[0]


def raw_throughput(onnx_path: Path, shape, batch_sizes, seconds: float) -> dict[int, float]:
    """Images/s of the bare network in ONNX Runtime, the server's session settings."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rates = {}
    for batch in batch_sizes:
        x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
        session.run(None, {name: x})
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            session.run(None, {name: x})
            done += batch
        rates[batch] = done / (time.perf_counter() - started)
    return rates


def noise_throughput(shape, batch: int, seconds: float) -> float:
    """Samples/s of the server's host noise alone (x + sigma * N(0, I)), on all cores."""
    threads = os.cpu_count() or 1
    stream = NoiseStream(noise_generator(), tuple(shape))
    out = np.empty((batch, *shape), np.float32)
    x = np.full(shape, 0.5, np.float32)
    done, started = 0, time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        while time.perf_counter() - started < seconds:
            pieces = stream.pieces(out, done)
            list(pool.map(lambda p: fill_noisy_copies(p[0], x, 0.5, p[1]), pieces))
            done += batch
    return done / (time.perf_counter() - started)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def end_to_end(address: str, model: str, image, clients: int, n: int, per_client: int) -> EndToEnd:
    n0 = 100
    latencies: list[float] = []

    def worker(_: int) -> None:
        with SmoothServeClient(address, timeout=600) as client:
            for _ in range(per_client):
                started = time.perf_counter()
                client.predict(model, image, n0=n0, n=n, alpha=0.001)
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - started
    total = clients * per_client
    q = sorted(latencies)
    return EndToEnd(
        clients, n, total, total * (n0 + n) / wall, statistics.median(q), q[min(len(q) - 1, int(0.99 * len(q)))]
    )


def triton_paths(repo: Path, model: str, image, n: int, tmp: Path) -> dict[str, dict[int, float]]:
    """End to end through SmoothServe on the Triton backend (the CPU twin of the model, served
    by the bundled tritonserver): plain gRPC, system shared memory, FP16; samples/s by clients."""
    from smoothserve_dev.triton_twin import TritonProcess, build_twin_repository, tritonserver_home

    if tritonserver_home() is None:
        print("Triton paths skipped: nvidia-pytriton (tritonserver) is not installed")
        return {}
    variants = {
        "Triton, gRPC": (False, []),
        "Triton, shared memory": (False, ["--triton-shm", "true"]),
        "Triton, FP16 over gRPC": (True, ["--triton-fp16", "true"]),
    }
    results: dict[str, dict[int, float]] = {}
    for name, (fp16, flags) in variants.items():
        twin = tmp / ("twin16" if fp16 else "twin32")
        if not twin.exists():
            build_twin_repository(repo, twin, fp16=fp16, threads=os.cpu_count() or 1, only=(model,))
        with TritonProcess(twin) as triton, ServerProcess(
            repo, ["--backend", "triton", "--triton-urls", triton.url, "--log-level", "WARNING", *flags]
        ) as server:
            end_to_end(server.address, model, image, 1, 1_000, 1)  # warm-up
            results[name] = {
                clients: end_to_end(server.address, model, image, clients, n, per_client).samples_per_s
                for clients, per_client in ((1, 2), (8, 1))
            }
        print(f"{name}: " + ", ".join(f"{c} clients {r:,.0f} samples/s" for c, r in results[name].items()))
    return results


def torch_baseline(checkpoint: Path, image, sigma: float, n: int, batch: int = 1000) -> float | None:
    """Noisy samples/s of the reference algorithm as an eager-torch loop (Cohen et al.'s core.py)."""
    if not checkpoint.exists():
        print(f"baseline skipped: no checkpoint {checkpoint}")
        return None
    try:
        import torch

        from smoothtrain.checkpoint import load_model
    except ImportError as error:
        print(f"baseline skipped: {error}")
        return None
    model, _, _ = load_model(checkpoint)
    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.from_numpy(image.astype(np.float32) / 255.0)
    num_classes = model(x[None]).shape[1]

    def sample_noise(num: int) -> np.ndarray:
        counts = np.zeros(num_classes, dtype=int)
        with torch.no_grad():
            remaining = num
            while remaining > 0:
                this_batch = min(batch, remaining)
                remaining -= this_batch
                repeated = x.repeat((this_batch, 1, 1, 1))
                noise = torch.randn_like(repeated) * sigma
                predictions = model(repeated + noise).argmax(1)
                counts += np.bincount(predictions.numpy(), minlength=num_classes)
        return counts

    started = time.perf_counter()
    certify(sample_noise(100), sample_noise(n), sigma, 0.001)
    return (100 + n) / (time.perf_counter() - started)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}; load average at start "
        f"{os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--model", default="")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny n, writes nothing")
    parser.add_argument("--checkpoint-dir", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()

    model = args.model or default_model(args.model_repo)
    config = SmoothModelConfig.from_pbtxt((args.model_repo / model / "config.pbtxt").read_text())
    onnx_path = max((args.model_repo / model).glob("*/model.onnx"), key=lambda p: int(p.parent.name))
    image = load_fashion_mnist().images[0] if config.input_shape == (1, 28, 28) else (
        np.random.default_rng(0).integers(0, 256, config.input_shape, dtype=np.uint8)
    )  # fmt: skip
    quick = args.quick
    sizes = (1_000, 3_000) if quick else (10_000, 100_000)
    print(f"model {model}; {machine()}")

    raw = raw_throughput(onnx_path, config.input_shape, (64, 256) if quick else (64, 128, 256, 512, 1024), 0.3 if quick else 3.0)
    best_batch = max(raw, key=raw.get)
    print("raw ONNX Runtime images/s by batch size:", {b: round(r) for b, r in raw.items()})
    noise = noise_throughput(config.input_shape, best_batch, 0.3 if quick else 3.0)
    ceiling = 1 / (1 / raw[best_batch] + 1 / noise)
    print(f"host noise alone: {noise:,.0f} samples/s; noise + network on the same cores: {ceiling:,.0f}")

    runs: list[EndToEnd] = []
    rss: dict[int, float] = {}
    server_args = ["--batch-size", str(best_batch), "--log-level", "WARNING"]
    with ServerProcess(args.model_repo, args=server_args) as server:
        with SmoothServeClient(server.address) as warm:
            warm.predict(model, image, n=1_000)
        for n in sizes:
            for clients in (1, 8, 32):
                per_client = {1: 4, 8: 2, 32: 1}[clients] if n == sizes[0] else 1
                run = end_to_end(server.address, model, image, clients, n, per_client)
                runs.append(run)
                print(
                    f"end to end: {clients:2d} clients, n = {n:>7,}: {run.samples_per_s:10,.0f} samples/s, "
                    f"p50 {run.p50:.2f} s, p99 {run.p99:.2f} s"
                )
            rss[n] = peak_rss_mib(server.process.pid)
            print(f"peak server RSS after the n = {n:,} runs: {rss[n]:.0f} MiB")

    with tempfile.TemporaryDirectory() as tmp:
        triton = triton_paths(args.model_repo, model, image, sizes[0], Path(tmp))
    baseline = torch_baseline(args.checkpoint_dir / f"{model}.pt", image, config.sigma, sizes[0])
    best_raw = raw[best_batch]
    one = next(r for r in runs if r.clients == 1 and r.n == sizes[0])
    eight = next(r for r in runs if r.clients == 8 and r.n == sizes[0])
    ratios = {
        "server ÷ raw, 1 client": one.samples_per_s / best_raw,
        "server ÷ raw, 8 clients": eight.samples_per_s / best_raw,
    }
    print(f"ratio server ÷ (noise + network) ceiling, 8 clients: {eight.samples_per_s / ceiling:.2f}")
    if baseline:
        ratios["server ÷ eager-torch baseline, 1 client"] = one.samples_per_s / baseline
        print(f"baseline (eager torch, reference loop): {baseline:,.0f} samples/s")
    for name, value in ratios.items():
        print(f"ratio {name}: {value:.2f}")
    if not quick:
        write_report(args.out, model, best_batch, raw, runs, baseline, ratios, rss, noise, ceiling, triton)
        print(f"wrote {args.out}")


def write_report(
    path: Path, model, best_batch, raw, runs, baseline, ratios, rss, noise, ceiling, triton
) -> None:
    embedded = {r.clients: r.samples_per_s for r in runs if r.n == 10_000}
    targets = {
        "server ÷ raw, 1 client": 0.9, "server ÷ raw, 8 clients": 0.9,
        "server ÷ eager-torch baseline, 1 client": 2.0,
    }  # fmt: skip
    lines = [
        "# Benchmarks",
        "",
        "Produced by `.venv/bin/python bench/run_benchmark.py` (one run; every figure down to "
        f"the analysis section comes from it; the sections after it name their own commands), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- Machine: {machine()}.",
        f"- Model: `{model}` ({'×'.join(map(str, SmoothModelConfig.from_pbtxt((ROOT / 'model_repo' / model / 'config.pbtxt').read_text()).input_shape))} input), "
        f"embedded ONNX Runtime backend, CPU; server batch size {best_batch} (the raw network's best).",
        "- n0 = 100 selection samples per certificate on top of n; samples/s counts both.",
        "",
        "## Raw network (ONNX Runtime in process)",
        "",
        "| batch size | images/s |",
        "|---|---|",
        *[f"| {b} | {r:,.0f} |" for b, r in raw.items()],
        "",
        f"Host noise alone (x + σ·N(0, I) for {best_batch} samples, on all cores, as the server "
        f"draws it): {noise:,.0f} samples/s. Noise and network sharing the same cores can do at "
        f"most 1 / (1/raw + 1/noise) = **{ceiling:,.0f} samples/s** "
        f"({ceiling / raw[best_batch]:.2f} × raw).",
        "",
        "## End to end through gRPC",
        "",
        "| clients | n | certificates | noisy samples/s | ÷ raw | ÷ ceiling | p50 latency (s) | p99 latency (s) |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r.clients} | {r.n:,} | {r.certificates} | {r.samples_per_s:,.0f} | "
            f"{r.samples_per_s / raw[best_batch]:.2f} | {r.samples_per_s / ceiling:.2f} | {r.p50:.2f} | {r.p99:.2f} |"
            for r in runs
        ],
        "",
        "Peak server RSS (VmHWM): " + ", ".join(f"{v:.0f} MiB after the n = {n:,} runs" for n, v in rss.items()) + ".",
        "",
        "## Baseline: the reference algorithm in eager torch",
        "",
        (f"{baseline:,.0f} noisy samples/s (one certificate, n = 10,000, batch 1000, same weights)."
         if baseline else "Not run (torch or the checkpoint missing)."),
        "",
        "## Triton backend paths",
        "",
        "SmoothServe on `--backend triton` against the model's CPU twin (the same `model.onnx` in "
        "Triton's Python backend, bundled `tritonserver` 2.51, on the same 2 cores), n = 10,000. "
        "On this machine Triton shares the cores with SmoothServe and runs the network through a "
        "Python stub, so these figures measure the transport, not a GPU deployment "
        "(see [triton.md](triton.md)).",
        "",
        "| path | 1 client (samples/s) | 8 clients (samples/s) | 8 clients ÷ embedded |",
        "|---|---|---|---|",
        *[
            f"| {name} | {r[1]:,.0f} | {r[8]:,.0f} | {r[8] / embedded[8]:.2f} |"
            for name, r in triton.items()
        ],
        "" if triton else "Not run: nvidia-pytriton is not installed.",
        "",
        "## Ratios against targets",
        "",
        "| ratio | measured | target | met |",
        "|---|---|---|---|",
        *[f"| {k} | {v:.2f} | ≥ {targets[k]} | {'yes' if v >= targets[k] else 'no'} |" for k, v in ratios.items()],
        "",
    ]
    existing = path.read_text() if path.exists() else ""
    marker = "<!-- analysis -->"
    analysis = existing[existing.index(marker):] if marker in existing else marker + "\n"
    path.write_text("\n".join(lines) + "\n" + analysis)


if __name__ == "__main__":
    main()
