"""The benchmark: SmoothServe against the raw network and the reference algorithm, in one run.

    .venv/bin/python bench/run_benchmark.py          # full run (~15 min), writes docs/benchmarks.md
    .venv/bin/python bench/run_benchmark.py --quick  # smoke run (tiny n, ~2 min), writes nothing
    .venv/bin/python bench/run_benchmark.py --models resnet20 --generators pcg64  # a part

Two models on the embedded ONNX Runtime backend: the model repository's default Fashion-MNIST
CNN and a CIFAR-shaped ResNet-20 with random weights (``bench/resnet20.py``, written into a
temporary repository). For each model it measures, on the same machine:
  1. raw backend throughput: images/s of the bare ONNX network in process, by batch size;
  2. host noise alone (x + sigma * N(0, I), all cores) per noise generator (ars5: the
     ``fastnoise`` extra; pcg64: NumPy), and the ceiling 1 / (1/raw + 1/noise) of noise and
     network sharing the cores;
  3. end-to-end certification through gRPC per generator (a server started with
     ``--noise-generator <g>`` and no ``--batch-size``), in noisy samples/s with p50/p99
     latency per certificate, and the server's peak RSS after each n;
  4. the baseline: the reference algorithm (Cohen et al.'s core.py) as an eager-torch loop on
     the same weights, in rounds alternating with one server certificate at the same n;
  5. the Triton backend paths (CNN only; plain gRPC, shared memory, FP16);
then prints the ratios against the targets and what the ``fastnoise`` extra costs to install.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as metadata
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from smoothcert.families import FAMILIES
from smoothcert.model_config import SmoothModelConfig
from smoothcert.procedures.fixed_n import certify
from smoothserve.noise import NoiseStream, noise_generator, noise_stream
from smoothserve_client import SmoothServeClient
from smoothserve_client.datasets import load_fashion_mnist
from smoothserve_dev.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- analysis -->"
N0, ALPHA = 100, 0.001
GENERATORS = ("ars5", "pcg64")
MODELS = ("cnn", "resnet20")
RSS_GROWTH_LIMIT = 1.10


@dataclass(frozen=True)
class Plan:
    runs: tuple[tuple[int, int, int], ...]  # (n, clients, certificates per client)
    target_n: int  # the n of the ratios against raw and the ceiling
    raw_target: float
    raw_rounds: int  # rounds of (raw network, server) at target_n for the ÷ raw targets
    baseline_n: int
    baseline_rounds: int
    warmup_n: int


def plan(model: str, quick: bool) -> Plan:
    if model == "cnn" and quick:
        runs = ((1_000, 1, 2), (1_000, 8, 1), (1_000, 32, 1), (3_000, 1, 1), (3_000, 8, 1))
        return Plan(runs, 3_000, 0.7, 1, 3_000, 1, 500)
    if model == "cnn":
        runs = ((10_000, 1, 4), (10_000, 8, 2), (10_000, 32, 1), (100_000, 1, 2), (100_000, 8, 1))
        return Plan(runs, 100_000, 0.7, 3, 100_000, 3, 1_000)
    if quick:
        return Plan(((200, 1, 1), (200, 8, 1)), 200, 0.9, 1, 200, 1, 100)
    return Plan(((10_000, 1, 2), (10_000, 8, 1)), 10_000, 0.9, 2, 10_000, 2, 500)


@dataclass
class Bench:
    """One model under test, in a repository of its own."""

    key: str
    name: str
    description: str
    repo: Path
    config: SmoothModelConfig
    image: np.ndarray  # uint8 pixels
    onnx: Path
    torch_model: Any  # the same weights as an eager torch module; None: no baseline
    plan: Plan

    @property
    def shape_text(self) -> str:
        return "×".join(map(str, self.config.input_shape))


@dataclass
class EndToEnd:
    clients: int
    n: int
    certificates: int
    samples_per_s: float
    p50: float
    p99: float


@dataclass
class Round:
    server: float
    baseline: float

    @property
    def ratio(self) -> float:
        return self.server / self.baseline


@dataclass
class RawRound:
    """One server run and, right before it, the raw network and the host noise alone."""

    server: float
    raw: float
    noise: float

    @property
    def ratio(self) -> float:
        return self.server / self.raw

    @property
    def ceiling_ratio(self) -> float:
        return self.server * (1 / self.raw + 1 / self.noise)


@dataclass
class ServerRun:
    """Everything measured on one server process (one model, one noise generator)."""

    generator: str
    batch_size: int = 0
    batch_size_source: str = "not reported"
    reported_generator: str = "not reported"
    runs: list[EndToEnd] = field(default_factory=list)
    rss: dict[int, float] = field(default_factory=dict)
    rounds: list[Round] = field(default_factory=list)
    raw_rounds: dict[int, list[RawRound]] = field(default_factory=dict)  # by clients
    error: str = ""

    def run(self, clients: int, n: int) -> EndToEnd | None:
        return next((r for r in self.runs if r.clients == clients and r.n == n), None)


@dataclass
class ModelResult:
    bench: Bench
    raw: dict[int, float]
    noise: dict[str, float]
    servers: dict[str, ServerRun] = field(default_factory=dict)

    @property
    def best_raw(self) -> float:
        return max(self.raw.values())

    def ceiling(self, generator: str) -> float:
        return 1 / (1 / self.best_raw + 1 / self.noise[generator])


@dataclass
class Target:
    model: str
    generator: str
    name: str
    value: float
    threshold: float
    at_most: bool = False

    @property
    def met(self) -> bool:
        return self.value <= self.threshold if self.at_most else self.value >= self.threshold


def available_generators() -> list[str]:
    try:
        import mkl_random  # noqa: F401
    except ImportError:
        return ["pcg64"]
    return list(GENERATORS)


def chosen_generators(text: str) -> list[str]:
    available = available_generators()
    wanted = [g.strip() for g in text.split(",") if g.strip()] if text else available
    for name in wanted:
        if name not in GENERATORS:
            raise SystemExit(f"unknown generator {name!r}; choose from {', '.join(GENERATORS)}")
        if name not in available:
            print(f"generator {name} skipped: mkl_random (the fastnoise extra) is not installed")
    return [g for g in wanted if g in available]


def default_model(repo: Path) -> str:
    marker = repo / "DEFAULT_MODEL"
    if marker.exists():
        return marker.read_text().strip()
    return sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").exists())[0]


def newest_onnx(model_dir: Path) -> Path:
    return max(model_dir.glob("*/model.onnx"), key=lambda p: int(p.parent.name))


def prepare_cnn(model_repo: Path, name: str, checkpoints: Path, into: Path, quick: bool) -> Bench:
    """The CNN, copied alone into ``into`` so its server loads (and sizes) only it."""
    name = name or default_model(model_repo)
    shutil.copytree(model_repo / name, into / name)
    config = SmoothModelConfig.from_pbtxt((into / name / "config.pbtxt").read_text())
    image = load_fashion_mnist().images[0] if config.input_shape == (1, 28, 28) else (
        np.random.default_rng(0).integers(0, 256, config.input_shape, dtype=np.uint8)
    )  # fmt: skip
    return Bench(
        "cnn", name, "the model repository's default, trained weights", into, config, image,
        newest_onnx(into / name), cnn_torch_model(checkpoints / f"{name}.pt"), plan("cnn", quick),
    )  # fmt: skip


def cnn_torch_model(checkpoint: Path) -> Any:
    if not checkpoint.exists():
        print(f"CNN baseline skipped: no checkpoint {checkpoint}")
        return None
    try:
        from smoothtrain.checkpoint import load_model
    except ImportError as error:
        print(f"CNN baseline skipped: {error}")
        return None
    return load_model(checkpoint)[0]


def prepare_resnet20(into: Path, quick: bool) -> Bench | None:
    try:
        import resnet20
    except ImportError as error:
        print(f"ResNet-20 skipped: torch or smoothtrain is not importable ({error})")
        return None
    model_dir, module = resnet20.write_model(into)
    config = SmoothModelConfig.from_pbtxt((model_dir / "config.pbtxt").read_text())
    image = np.random.default_rng(0).integers(0, 256, config.input_shape, dtype=np.uint8)
    description = (
        f"He et al.'s CIFAR ResNet-20, random weights (torch seed {resnet20.SEED}), written by "
        "`bench/resnet20.py` into a temporary repository"
    )
    return Bench(
        "resnet20", resnet20.NAME, description, into, config, image, newest_onnx(model_dir),
        module, plan("resnet20", quick),
    )  # fmt: skip


def raw_throughput(
    onnx_path: Path, shape: tuple[int, ...], batch_sizes: Iterable[int], seconds: float
) -> dict[int, float]:
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


def host_noise_stream(shape: tuple[int, ...], generator: str) -> NoiseStream:
    """A job's noise as the server draws it with ``--noise-generator generator``."""
    return noise_stream(noise_generator(), shape, generator)


def noise_throughput(
    shape: tuple[int, ...], sigma: float, batch: int, seconds: float, generator: str
) -> float:
    """Samples/s of the server's host noise alone (x + sigma * N(0, I)), on all cores."""
    stream = host_noise_stream(shape, generator)
    out = np.empty((batch, *shape), np.float32)
    x = np.full(shape, 0.5, np.float32)
    done, started = 0, time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        while time.perf_counter() - started < seconds:
            pieces = stream.pieces(out, done)
            list(pool.map(lambda p: stream.fill(p[0], x, sigma, p[1]), pieces))
            done += batch
    return done / (time.perf_counter() - started)


def measure_in_process(
    bench: Bench, generators: list[str], quick: bool, when: str = ""
) -> ModelResult:
    sizes = (64, 256) if quick else (64, 128, 256, 512, 1024)
    seconds = 0.3 if quick else 3.0
    raw = raw_throughput(bench.onnx, bench.config.input_shape, sizes, seconds)
    print(
        f"{bench.name}: raw ONNX Runtime images/s by batch size{' ' + when if when else ''}:",
        {b: round(r) for b, r in raw.items()},
    )
    best = max(raw, key=raw.__getitem__)
    result = ModelResult(bench, raw, {})
    for g in generators:
        shape, sigma = bench.config.input_shape, bench.config.sigma
        result.noise[g] = noise_throughput(shape, sigma, best, seconds, g)
        print(
            f"{bench.name}: host noise alone ({g}, batch {best}): {result.noise[g]:,.0f} samples/s; "
            f"noise + network ceiling {result.ceiling(g):,.0f} samples/s"
        )
    return result


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def end_to_end(
    address: str, model: str, image: np.ndarray, clients: int, n: int, per_client: int
) -> EndToEnd:
    latencies: list[float] = []

    def worker(_: int) -> None:
        with SmoothServeClient(address, timeout=1800) as client:
            for _ in range(per_client):
                started = time.perf_counter()
                client.predict(model, image, n0=N0, n=n, alpha=ALPHA)
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - started
    total = clients * per_client
    q = sorted(latencies)
    p99 = q[min(len(q) - 1, int(0.99 * len(q)))]
    return EndToEnd(clients, n, total, total * (N0 + n) / wall, statistics.median(q), p99)


def baseline_certificate(
    model: Any, image: np.ndarray, sigma: float, n: int, batch: int = 1000
) -> float:
    """Noisy samples/s of one certificate by the reference algorithm as an eager-torch loop
    (Cohen et al.'s core.py: repeat the input, add randn, argmax, count, Clopper-Pearson)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.from_numpy(image.astype(np.float32) / 255.0)
    with torch.no_grad():
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
    certify(sample_noise(N0), sample_noise(n), FAMILIES["gaussian"], sigma, ALPHA)
    return (N0 + n) / (time.perf_counter() - started)


def alternating_rounds(address: str, bench: Bench, rounds: int) -> list[Round]:
    """Each round one single-client server certificate and one baseline certificate at the
    same n: the server first in rounds 1, 3, ..., the baseline first in rounds 2, 4, ..."""
    n, results = bench.plan.baseline_n, []
    measure: dict[str, Callable[[], float]] = {
        "server": lambda: end_to_end(address, bench.name, bench.image, 1, n, 1).samples_per_s,
        "baseline": lambda: baseline_certificate(
            bench.torch_model, bench.image, bench.config.sigma, n
        ),
    }
    for k in range(rounds):
        rates = {}
        for side in ("server", "baseline") if k % 2 == 0 else ("baseline", "server"):
            rates[side] = measure[side]()
            time.sleep(0.5)  # let the other side's threads go idle
        results.append(Round(rates["server"], rates["baseline"]))
        print(
            f"{bench.name}: round {k + 1}: server {rates['server']:,.0f}, baseline "
            f"{rates['baseline']:,.0f} samples/s (n = {n:,}), ratio {results[-1].ratio:.2f}"
        )
    return results


def read_model_info(address: str, model: str, run: ServerRun) -> None:
    with SmoothServeClient(address) as client:
        info = client.model_info(model)
    run.batch_size = int(getattr(info, "batch_size", 0))
    run.batch_size_source = getattr(info, "batch_size_source", "") or "not reported"
    run.reported_generator = getattr(info, "noise_generator", "") or "not reported"


def serve(bench: Bench, generator: str, raw_batch: int) -> ServerRun:
    """A server for this model and generator, and what was measured on it."""
    run = ServerRun(generator)
    args = ["--noise-generator", generator, "--log-level", "WARNING"]
    server = ServerProcess(bench.repo, args=args, start_timeout=600)
    try:
        server.start()
    except (RuntimeError, TimeoutError) as error:
        run.error = f"server did not start with --noise-generator {generator}: {reason(error)}"
        print(f"{bench.name}: {run.error}")
        server.__exit__(None, None, None)
        return run
    try:
        measure_server(server, bench, run)
        run.raw_rounds = raw_rounds(server, bench, run, raw_batch)
    finally:
        server.__exit__(None, None, None)
    return run


def raw_rounds(
    server: ServerProcess, bench: Bench, run: ServerRun, batch: int
) -> dict[int, list[RawRound]]:
    """The ÷ raw and ÷ ceiling targets, robust to this machine's drift: rounds of the raw
    network (3 s at its best batch) and the host noise alone (1 s) right before the server at
    the same n, each round its own ratios."""
    seconds = 0.3 if bench.plan.target_n < 10_000 else 3.0
    shape, sigma = bench.config.input_shape, bench.config.sigma
    found: dict[int, list[RawRound]] = {}
    for k in range(bench.plan.raw_rounds):
        for clients in (1, 8):
            raw = raw_throughput(bench.onnx, shape, (batch,), seconds)[batch]
            noise = noise_throughput(shape, sigma, batch, seconds / 3, run.generator)
            e2e = end_to_end(server.address, bench.name, bench.image, clients, bench.plan.target_n, 1)
            found.setdefault(clients, []).append(one := RawRound(e2e.samples_per_s, raw, noise))
            print(
                f"{bench.name} [{run.generator}]: raw round {k + 1}, {clients} clients: raw "
                f"{raw:,.0f} images/s, noise {noise:,.0f} samples/s, server "
                f"{e2e.samples_per_s:,.0f} samples/s (n = {bench.plan.target_n:,}), ÷ raw "
                f"{one.ratio:.2f}, ÷ ceiling {one.ceiling_ratio:.2f}"
            )
    return found


def reason(error: Exception) -> str:
    """The server log's error line, else its last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in reversed(lines) if "error" in line.lower()), lines[-1])


def measure_server(server: ServerProcess, bench: Bench, run: ServerRun) -> None:
    read_model_info(server.address, bench.name, run)
    print(
        f"{bench.name} [{run.generator}]: server batch size {run.batch_size or '?'} "
        f"(source: {run.batch_size_source}), noise generator {run.reported_generator}"
    )
    end_to_end(server.address, bench.name, bench.image, 1, bench.plan.warmup_n, 1)
    measure_runs(server, bench, run)
    if bench.torch_model is not None:
        run.rounds = alternating_rounds(server.address, bench, bench.plan.baseline_rounds)


def measure_runs(server: ServerProcess, bench: Bench, run: ServerRun) -> None:
    runs = bench.plan.runs
    for i, (n, clients, per_client) in enumerate(runs):
        result = end_to_end(server.address, bench.name, bench.image, clients, n, per_client)
        run.runs.append(result)
        print(
            f"{bench.name} [{run.generator}]: {clients:2d} clients, n = {n:>7,}: "
            f"{result.samples_per_s:10,.0f} samples/s, p50 {result.p50:.2f} s, p99 {result.p99:.2f} s"
        )
        if i + 1 == len(runs) or runs[i + 1][0] != n:
            run.rss[n] = peak_rss_mib(server.process.pid)
            print(
                f"{bench.name} [{run.generator}]: peak server RSS after n = {n:,}: {run.rss[n]:.0f} MiB"
            )


def triton_paths(bench: Bench, n: int, tmp: Path) -> dict[str, dict[int, float]]:
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
    threads = os.cpu_count() or 1
    for name, (fp16, flags) in variants.items():
        twin = tmp / ("twin16" if fp16 else "twin32")
        if not twin.exists():
            build_twin_repository(bench.repo, twin, fp16=fp16, threads=threads, only=(bench.name,))
        server_args = ["--backend", "triton", "--log-level", "WARNING", *flags]
        with (
            TritonProcess(twin) as triton,
            ServerProcess(
                bench.repo, [*server_args, "--triton-urls", triton.url], start_timeout=600
            ) as server,
        ):
            end_to_end(server.address, bench.name, bench.image, 1, 1_000, 1)
            results[name] = {
                clients: end_to_end(
                    server.address, bench.name, bench.image, clients, n, per_client
                ).samples_per_s
                for clients, per_client in ((1, 2), (8, 1))
            }
        print(
            f"{name}: "
            + ", ".join(f"{c} clients {r:,.0f} samples/s" for c, r in results[name].items())
        )
    return results


def fastnoise_sizes() -> dict[str, int]:
    """Installed bytes of the ``fastnoise`` extra's distributions and their dependencies,
    leaving out what the base install already requires."""
    try:
        requires = metadata.requires("smoothserve") or []
    except metadata.PackageNotFoundError:
        requires = ["mkl-random; extra == 'fastnoise'"]
    parsed = [Requirement(r) for r in requires]
    base = {canonicalize_name(r.name) for r in parsed if _applies(r, "")}
    todo = [canonicalize_name(r.name) for r in parsed if _applies(r, "fastnoise")]
    sizes: dict[str, int] = {}
    while todo:
        name = todo.pop()
        if name in sizes or name in base:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        sizes[name] = sum(_size(f) for f in distribution.files or [])
        todo += [canonicalize_name(r.name) for r in map(Requirement, distribution.requires or [])
                 if _applies(r, "")]  # fmt: skip
    return sizes


def _applies(requirement: Requirement, extra: str) -> bool:
    return requirement.marker is None or requirement.marker.evaluate({"extra": extra})


def _size(file: metadata.PackagePath) -> int:
    path = Path(file.locate())
    return path.stat().st_size if path.is_file() else 0


def install_cost_text(sizes: dict[str, int]) -> str:
    if not sizes:
        return "the `fastnoise` extra is not installed"
    parts = ", ".join(f"{name} {size / 2**20:,.0f} MiB" for name, size in
                      sorted(sizes.items(), key=lambda item: -item[1]))  # fmt: skip
    return f"{sum(sizes.values()) / 2**20:,.0f} MiB installed ({parts})"


def targets(result: ModelResult) -> list[Target]:
    bench, found = result.bench, []
    n = bench.plan.target_n
    for g, run in result.servers.items():
        for clients in (1, 8):
            e2e = run.run(clients, n)
            if e2e is None:
                continue
            where = f"{clients} client{'s' if clients > 1 else ''}, n = {n:,}"
            rate = e2e.samples_per_s
            found += [
                Target(bench.name, g, f"server ÷ raw, {where}", rate / result.best_raw,
                       bench.plan.raw_target),
                Target(bench.name, g, f"server ÷ ceiling, {where}", rate / result.ceiling(g), 0.95),
            ]  # fmt: skip
            rounds = run.raw_rounds.get(clients, [])
            if rounds:
                label = f"{where}, median of {len(rounds)} interleaved rounds"
                found += [
                    Target(bench.name, g, f"server ÷ raw, {label}",
                           statistics.median(r.ratio for r in rounds), bench.plan.raw_target),
                    Target(bench.name, g, f"server ÷ ceiling, {label}",
                           statistics.median(r.ceiling_ratio for r in rounds), 0.95),
                ]  # fmt: skip
        if run.rounds:
            median = statistics.median(r.ratio for r in run.rounds)
            name = f"server ÷ eager-torch baseline, median of {len(run.rounds)} rounds, n = {bench.plan.baseline_n:,}"
            found.append(Target(bench.name, g, name, median, 2.5))
        if len(run.rss) > 1:
            (low, rss_low), (high, rss_high) = min(run.rss.items()), max(run.rss.items())
            name = f"peak RSS at n = {high:,} ÷ at n = {low:,}"
            found.append(Target(bench.name, g, name, rss_high / rss_low, RSS_GROWTH_LIMIT, True))
    return found


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    versions = [f"onnxruntime {ort.__version__}", f"numpy {np.__version__}"]
    for dist in ("mkl-random", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{dist} {metadata.version(dist)}")
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}, "
        f"{', '.join(versions)}; load average at start {os.getloadavg()[0]:.1f}"
    )


def print_summary(results: list[ModelResult], found: list[Target], install: str) -> None:
    for result in results:
        for g, run in result.servers.items():
            if run.rounds:
                ratios = [r.ratio for r in run.rounds]
                print(f"{result.bench.name} [{g}]: server ÷ baseline per round "
                      f"{', '.join(f'{r:.2f}' for r in ratios)}; best {max(ratios):.2f}, "
                      f"median {statistics.median(ratios):.2f}")  # fmt: skip
    for t in found:
        sign = "≤" if t.at_most else "≥"
        print(f"ratio {t.model} [{t.generator}] {t.name}: {t.value:.2f} "
              f"(target {sign} {t.threshold}: {'met' if t.met else 'NOT met'})")  # fmt: skip
    print(f"fastnoise extra: {install}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--model", default="", help="the CNN (default: the repository's default)")
    parser.add_argument("--models", default=",".join(MODELS), help="cnn,resnet20 (default both)")
    parser.add_argument("--generators", default="", help="ars5,pcg64 (default: those installed)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny n, writes nothing")
    parser.add_argument("--skip-triton", action="store_true")
    parser.add_argument("--checkpoint-dir", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := set(models) - set(MODELS):
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    generators = chosen_generators(args.generators)
    started, machine_line = time.perf_counter(), machine()
    print(f"{machine_line}; generators {', '.join(generators)}")
    with tempfile.TemporaryDirectory(prefix="smoothserve-bench-") as tmp:
        benches = prepare(args, models, Path(tmp))
        results = [measure_in_process(b, generators, args.quick) for b in benches]
        for result in results:
            best = max(result.raw, key=result.raw.__getitem__)
            result.servers = {g: serve(result.bench, g, best) for g in generators}
            # This machine's speed drifts (shared cores): the raw network and the noise are
            # measured again after the servers, and the faster of the two measurements is the
            # denominator, so a ratio is never flattered by a slow moment of the baseline.
            again = measure_in_process(result.bench, generators, args.quick, "again, after the servers")
            result.raw = {b: max(r, again.raw[b]) for b, r in result.raw.items()}
            result.noise = {g: max(r, again.noise[g]) for g, r in result.noise.items()}
        cnn = next((r for r in results if r.bench.key == "cnn"), None)
        triton = run_triton(args, cnn, Path(tmp))
    found = [t for r in results for t in targets(r)]
    install = install_cost_text(fastnoise_sizes())
    print_summary(results, found, install)
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
    complete = set(models) == set(MODELS) and generators == available_generators()
    if args.quick or not complete:
        print("docs not written: " + ("--quick" if args.quick else "a partial run"))
        return
    report = Report(machine_line, results, triton, found, install, args.skip_triton)
    write_report(args.out, report.lines())
    print(f"wrote {args.out}")


def prepare(args: argparse.Namespace, models: list[str], tmp: Path) -> list[Bench]:
    benches = []
    if "cnn" in models:
        (tmp / "cnn").mkdir()
        benches.append(
            prepare_cnn(args.model_repo, args.model, args.checkpoint_dir, tmp / "cnn", args.quick)
        )
    if "resnet20" in models:
        (tmp / "resnet20").mkdir()
        bench = prepare_resnet20(tmp / "resnet20", args.quick)
        benches += [bench] if bench else []
    return benches


def run_triton(
    args: argparse.Namespace, cnn: ModelResult | None, tmp: Path
) -> dict[str, dict[int, float]]:
    if args.skip_triton or cnn is None:
        print("Triton paths skipped" + (": --skip-triton" if args.skip_triton else ": no CNN run"))
        return {}
    return triton_paths(cnn.bench, cnn.bench.plan.runs[0][0], tmp)


@dataclass
class Report:
    machine: str
    results: list[ModelResult]
    triton: dict[str, dict[int, float]]
    found: list[Target]
    install: str
    skipped_triton: bool

    def lines(self) -> list[str]:
        return [
            *self.header(), *self.batch_sizes(), *self.install_cost(),
            *(line for r in self.results for line in model_section(r)),
            *self.triton_section(), *self.targets_section(),
        ]  # fmt: skip

    def header(self) -> list[str]:
        now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        models = "; ".join(
            f"`{r.bench.name}` ({r.bench.shape_text} input, {r.bench.description})"
            for r in self.results
        )
        return [
            "# Benchmarks",
            "",
            "Produced by `.venv/bin/python bench/run_benchmark.py` (one run; every figure down "
            "to the analysis section comes from it; the sections after it name their own "
            f"commands), {now}.",
            "",
            f"- Machine: {self.machine}.",
            f"- Models: {models}; embedded ONNX Runtime backend, CPU.",
            "- Noise generators: `ars5` (MKL's AES counter-based ARS-5, the `fastnoise` extra) "
            "and `pcg64` (NumPy). Each server was started with `--noise-generator <generator>` "
            "and no `--batch-size`, so it chose each model's batch size (below).",
            f"- n0 = {N0} selection samples per certificate on top of n; samples/s counts both; "
            f"α = {ALPHA}.",
            "",
        ]

    def batch_sizes(self) -> list[str]:
        rows = [
            f"| `{r.bench.name}` | {g} | {run.batch_size or '?'} | {run.batch_size_source} |"
            if not run.error else f"| `{r.bench.name}` | {g} | not run | {run.error} |"
            for r in self.results for g, run in r.servers.items()
        ]  # fmt: skip
        return [
            "## Batch sizes the servers chose", "",
            "| model | generator | batch size | source |", "|---|---|---|---|", *rows, "",
        ]  # fmt: skip

    def install_cost(self) -> list[str]:
        return [
            "## What the `fastnoise` extra costs to install",
            "",
            "`pip install 'smoothserve[fastnoise]'` (mkl-random and its dependencies, from the "
            f"installed distributions' file lists): {self.install}.",
            "",
        ]

    def triton_section(self) -> list[str]:
        cnn = next((r for r in self.results if r.bench.key == "cnn"), None)
        lines = ["## Triton backend paths", ""]
        if not self.triton or cnn is None:
            reason = "--skip-triton" if self.skipped_triton else "nvidia-pytriton is not installed"
            return [*lines, f"Not run: {reason}.", ""]
        n = cnn.bench.plan.runs[0][0]
        generator = next(iter(cnn.servers))
        embedded = cnn.servers[generator].run(8, n)
        lines += [
            f"SmoothServe on `--backend triton` against `{cnn.bench.name}`'s CPU twin (the same "
            "`model.onnx` in Triton's Python backend, bundled `tritonserver` 2.51, on the same "
            f"cores), n = {n:,}, the server's default noise generator. On this machine Triton "
            "shares the cores with SmoothServe and runs the network through a Python stub, so "
            "these figures measure the transport, not a GPU deployment (see "
            "[triton.md](triton.md)).",
            "",
            f"| path | 1 client (samples/s) | 8 clients (samples/s) | 8 clients ÷ embedded ({generator}) |",
            "|---|---|---|---|",
        ]
        for name, rates in self.triton.items():
            ratio = f"{rates[8] / embedded.samples_per_s:.2f}" if embedded else "–"
            lines.append(f"| {name} | {rates[1]:,.0f} | {rates[8]:,.0f} | {ratio} |")
        return [*lines, ""]

    def targets_section(self) -> list[str]:
        rows = [
            f"| `{t.model}` | {t.generator} | {t.name} | {t.value:.2f} | "
            f"{'≤' if t.at_most else '≥'} {t.threshold} | {'yes' if t.met else 'no'} |"
            for t in self.found
        ]
        return [
            "## Ratios against targets", "",
            "| model | generator | ratio | measured | target | met |", "|---|---|---|---|---|---|",
            *rows, "",
        ]  # fmt: skip


def model_section(result: ModelResult) -> list[str]:
    bench = result.bench
    return [
        f"## `{bench.name}` ({bench.shape_text})", "",
        "### Raw network (ONNX Runtime in process)", "",
        "Measured before and again after the servers (as is the host noise below); each size "
        "shows the faster of the two, so the ratios below are never flattered by a slow "
        "moment of the machine.", "",
        "| batch size | images/s |", "|---|---|",
        *[f"| {b} | {r:,.0f} |" for b, r in result.raw.items()], "",
        *noise_section(result), *end_to_end_section(result), *baseline_section(result),
    ]  # fmt: skip


def noise_section(result: ModelResult) -> list[str]:
    best = max(result.raw, key=result.raw.__getitem__)
    rows = [
        f"| {g} | {noise:,.0f} | **{result.ceiling(g):,.0f}** | {result.ceiling(g) / result.best_raw:.2f} |"
        for g, noise in result.noise.items()
    ]
    return [
        "### Host noise and the ceiling", "",
        f"Host noise alone: x + σ·N(0, I) for {best} samples, on all cores, as the server draws "
        "it. Noise and network sharing the same cores can do at most 1 / (1/raw + 1/noise).", "",
        "| generator | host noise alone (samples/s) | ceiling (samples/s) | ceiling ÷ raw |",
        "|---|---|---|---|", *rows, "",
    ]  # fmt: skip


def end_to_end_section(result: ModelResult) -> list[str]:
    rows, rss = [], []
    for g, run in result.servers.items():
        ceiling = result.ceiling(g) if run.runs else 0.0
        rows += [
            f"| {g} | {r.clients} | {r.n:,} | {r.certificates} | {r.samples_per_s:,.0f} | "
            f"{r.samples_per_s / result.best_raw:.2f} | {r.samples_per_s / ceiling:.2f} | "
            f"{r.p50:.2f} | {r.p99:.2f} |"
            for r in run.runs
        ]
        if run.rss:
            after = ", ".join(f"{v:.0f} MiB after n = {n:,}" for n, v in run.rss.items())
            rss.append(f"{g}: {after}")
    return [
        "### End to end through gRPC", "",
        "| generator | clients | n | certificates | noisy samples/s | ÷ raw | ÷ ceiling | p50 latency (s) | p99 latency (s) |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
        "Peak server RSS (VmHWM): " + ("; ".join(rss) or "not measured") + ".", "",
        *interleaved_section(result),
    ]  # fmt: skip


def interleaved_section(result: ModelResult) -> list[str]:
    def listed(values) -> str:
        return ", ".join(values)

    rows = [
        f"| {g} | {clients} | {listed(f'{r.raw:,.0f}' for r in rounds)} | "
        f"{listed(f'{r.noise:,.0f}' for r in rounds)} | {listed(f'{r.server:,.0f}' for r in rounds)} | "
        f"{listed(f'{r.ratio:.2f}' for r in rounds)} (**{statistics.median(r.ratio for r in rounds):.2f}**) | "
        f"{listed(f'{r.ceiling_ratio:.2f}' for r in rounds)} (**{statistics.median(r.ceiling_ratio for r in rounds):.2f}**) |"
        for g, run in result.servers.items()
        for clients, rounds in run.raw_rounds.items()
    ]
    if not rows:
        return []
    return [
        "Interleaved: before each server run (n = "
        f"{result.bench.plan.target_n:,}, one certificate per client), the raw network for 3 s at "
        "its best batch and the host noise alone for 1 s, so that the ratios compare the same "
        "moment of this machine (medians in bold):", "",
        "| generator | clients | raw images/s | noise samples/s | server samples/s | ÷ raw | ÷ ceiling |",
        "|---|---|---|---|---|---|---|", *rows, "",
    ]  # fmt: skip


def baseline_section(result: ModelResult) -> list[str]:
    bench = result.bench
    lines = ["### Baseline: the reference algorithm in eager torch", ""]
    runs = {g: run for g, run in result.servers.items() if run.rounds}
    if not runs:
        return [*lines, "Not run (torch or the checkpoint missing).", ""]
    rows = []
    for g, run in runs.items():
        ratios = [r.ratio for r in run.rounds]
        rows.append(
            f"| {g} | {len(run.rounds)} | {statistics.median(r.server for r in run.rounds):,.0f} | "
            f"{statistics.median(r.baseline for r in run.rounds):,.0f} | "
            f"{', '.join(f'{x:.2f}' for x in ratios)} | {max(ratios):.2f} | "
            f"{statistics.median(ratios):.2f} |"
        )
    return [
        *lines,
        f"Cohen et al.'s core.py loop (repeat the input, `randn_like`, forward, argmax, "
        f"`bincount`, batch 1,000) on the same weights, n = {bench.plan.baseline_n:,}, in "
        "rounds alternating with one single-client server certificate at the same n (the "
        "server first in odd rounds, the baseline first in even ones).", "",
        "| generator | rounds | server samples/s (median) | baseline samples/s (median) | server ÷ baseline per round | best | median |",
        "|---|---|---|---|---|---|---|", *rows, "",
    ]  # fmt: skip


def write_report(path: Path, lines: list[str]) -> None:
    existing = path.read_text() if path.exists() else ""
    analysis = existing[existing.index(MARKER) :] if MARKER in existing else MARKER + "\n"
    path.write_text("\n".join(lines) + "\n" + analysis)


if __name__ == "__main__":
    main()
