"""The batch size of each model: the operator's, the model config's, or measured at load.

The best batch size depends on the network and the machine: for a small CNN, batches of 1,024
amortise ONNX Runtime's per-call cost; for a ResNet-20 on two cores, batches of 64 stay in
cache and run 20 % faster than 256. Unless ``--batch-size`` sets one for every model, each
model uses its config's ``smoothserve_batch_size`` (``smoothserve-tune-batch`` measures and
writes it), else a size measured at load: the backend's own ``classify`` timed on a batch of
clean inputs at each candidate size, for a fraction of a second each.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smoothcert.model_config import BATCH_SIZE_PARAMETER, SmoothModelConfig

from .backends import create_backend
from .backends.base import Backend, probe_batch
from .config import ServerConfig
from .repository import ModelVersion

log = logging.getLogger("smoothserve")

CANDIDATES = (32, 64, 128, 256, 512, 1024)
SECONDS_PER_SIZE = 0.03  # a window of timed calls (at least two), after one warm-up call
ROUNDS = 2  # windows per size; the best counts
MIN_SAMPLES = 256  # per window
WITHIN = 0.97  # the smallest size within 3 % of the fastest wins: less latency and memory
FLAG, CONFIG, MEASURED, BACKEND = "flag", "config", "measured", "backend"


@dataclass(frozen=True)
class BatchChoice:
    size: int
    source: str  # FLAG, CONFIG, MEASURED, or BACKEND (the backend fixes it: Triton's sampler)
    rates: dict[int, float] = field(default_factory=dict)  # images/s by size, when measured

    def describe(self) -> str:
        rates = ", ".join(f"{size}: {rate:,.0f}" for size, rate in self.rates.items())
        return f"batch size {self.size} ({self.source}" + (f"; images/s {rates})" if rates else ")")


def candidates(config: SmoothModelConfig) -> tuple[int, ...]:
    """The sizes to measure: within the config's max_batch_size and the memory one batch may
    take (``model_config.MAX_BATCH_BYTES``: large inputs measure smaller batches)."""
    limit = config.max_batch_size or max(CANDIDATES)
    sizes = [size for size in CANDIDATES if size <= limit] or [limit]
    fitting = tuple(size for size in sizes if not config.batch_problem(size, "batch size"))
    return fitting or (1,)


async def measure(
    backend: Backend,
    model: ModelVersion,
    sizes: tuple[int, ...],
    seconds: float = SECONDS_PER_SIZE,
    rounds: int = ROUNDS,
) -> dict[int, float]:
    """Images/s of ``backend.classify`` on clean inputs at each batch size: the best of
    ``rounds`` windows, the sizes taking turns, so a passing load on the machine lowers one
    window, not one size. A window lasts ``seconds`` and at least two calls and
    ``MIN_SAMPLES`` samples, so small sizes are not judged on a call or two."""
    batches = {size: probe_batch(model.config, size) for size in sizes}
    for batch in batches.values():
        await backend.classify(model, batch)  # warm-up: first-call allocations, caches
    rates = dict.fromkeys(sizes, 0.0)
    for _ in range(rounds):
        for size, batch in batches.items():
            calls, started = 0, time.perf_counter()
            while calls < 2 or calls * size < MIN_SAMPLES or time.perf_counter() - started < seconds:
                await backend.classify(model, batch)
                calls += 1
            rates[size] = max(rates[size], size * calls / (time.perf_counter() - started))
    return rates


def best(rates: dict[int, float]) -> int:
    """The smallest size within ``WITHIN`` of the fastest."""
    fastest = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= WITHIN * fastest)


async def choose_batch_size(backend: Backend, model: ModelVersion, flag: int) -> BatchChoice:
    """``flag`` (``--batch-size``) when set, else the config's, else measured now; a backend
    that samples the model remotely fixes its own (one call's samples)."""
    remote = backend.remote_sampling(model)
    if remote is not None:
        return BatchChoice(remote.samples_per_call, BACKEND)
    if flag:
        return BatchChoice(flag, FLAG)
    if model.config.batch_size:
        return BatchChoice(model.config.batch_size, CONFIG)
    rates = await measure(backend, model, candidates(model.config))
    return BatchChoice(best(rates), MEASURED, rates)


def with_batch_size(pbtxt: str, size: int) -> str:
    """``pbtxt`` with its ``smoothserve_batch_size`` parameter set to ``size``, the rest of the
    text untouched (fields SmoothServe does not read survive)."""
    entry = f'parameters {{ key: "{BATCH_SIZE_PARAMETER}" value {{ string_value: "{size}" }} }}'
    pattern = re.compile(
        r'^parameters\s*\{\s*key:\s*"' + BATCH_SIZE_PARAMETER + r'".*\}\s*$', re.MULTILINE
    )
    text, replaced = pattern.subn(entry, pbtxt)
    if not replaced:
        text = pbtxt.rstrip("\n") + "\n" + entry + "\n"
    if SmoothModelConfig.from_pbtxt(text).batch_size != size:  # an entry spread over lines
        raise ValueError(f"could not set {BATCH_SIZE_PARAMETER}: edit the config by hand")
    return text


def tune_repository(repo: Path, names: list[str], backend_name: str = "onnxruntime") -> None:
    """Measure each model's best batch size and write it into its ``config.pbtxt``."""
    async def run() -> None:
        backend = create_backend(ServerConfig(model_repo=repo, backend=backend_name))
        states = await backend.start()
        try:
            for name, versions in sorted(states.ready.items()):
                if names and name not in names:
                    continue
                model = versions[max(versions, key=int)]
                rates = await measure(backend, model, candidates(model.config), seconds=0.3, rounds=4)
                choice = BatchChoice(best(rates), MEASURED, rates)
                path = repo / name / "config.pbtxt"
                path.write_text(with_batch_size(path.read_text(), choice.size))
                print(f"{name}: {choice.describe()}; wrote {path}")
            for name, why in sorted(states.failed.items()):
                print(f"{name}: not tuned, it failed to load: {why}")
        finally:
            await backend.close()

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="smoothserve-tune-batch",
        description="Measure each model's best batch size on this machine (sizes "
        f"{', '.join(map(str, CANDIDATES))}, four windows of 0.3 s each, the best counting) and "
        "write it into the model's config.pbtxt as smoothserve_batch_size; the server then "
        "uses it unless --batch-size is given.",
    )
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("models", nargs="*", help="models to tune (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tune_repository(args.model_repo, args.models)


if __name__ == "__main__":
    main()


# -- the cores of a model whose noise is drawn on the same CPU as its network ------------------

SPLIT_GAIN = 1.05  # give the noise its own cores only when that is expected 5 % faster
SPLIT_SECONDS = 0.2  # per measurement: host noise, then the network on all cores
SPLIT_ROWS = 64  # rows per timed call: enough to amortise a call, cheap for large inputs
# A network slower than this per call of SPLIT_ROWS rows keeps every core unmeasured: heavy
# networks scale with cores and dwarf their noise (a ResNet-20 halves on one core of two).
SPLIT_SLOW_CALL_S = 0.25


@dataclass(frozen=True)
class CoreSplit:
    intra_op_threads: int  # 0: the network keeps every core (ONNX Runtime's default)
    noise_rate: float  # samples/s the noise threads draw alone
    network_rate: float  # samples/s the network classifies alone, on every core
    split_rate: float  # samples/s it classifies on the cores the noise leaves

    def describe(self) -> str:
        kept = "all cores" if not self.intra_op_threads else f"{self.intra_op_threads} core(s)"
        return (f"network on {kept} (alone: noise {self.noise_rate:,.0f}/s, network "
                f"{self.network_rate:,.0f}/s on all cores, {self.split_rate:,.0f}/s on the "
                "rest)")  # fmt: skip


def core_split(
    noise_rate: float, network_rate: float, split_rate: float, cores: int, noise_threads: int
) -> int:
    """ONNX Runtime's intra-op threads for a network sharing ``cores`` with ``noise_threads``
    threads of host noise: 0 (every core) unless the noise is better off with cores of its own.

    Sharing every core, noise and network mostly take turns: about 1 / (1/noise + 1/network)
    samples/s (``network_rate`` on every core). With cores - noise_threads cores for the
    network (where it runs at ``split_rate``), they run side by side at min(noise, split).
    Slow noise beside a fast network (the Fashion-MNIST CNN with NumPy's PCG64 on two cores)
    gains from the split; a slow network (a ResNet-20) or fast noise (ARS-5) keeps every core
    for the network."""
    if cores <= noise_threads or min(noise_rate, network_rate, split_rate) <= 0:
        return 0
    shared = 1.0 / (1.0 / noise_rate + 1.0 / network_rate)
    split = min(noise_rate, split_rate)
    return cores - noise_threads if split > SPLIT_GAIN * shared else 0


async def measure_core_split(
    backend: Backend, model: ModelVersion, batch_size: int, generator: str, noise_threads: int,
    cores: int,
) -> CoreSplit:  # fmt: skip
    """Time the model's host noise (one thread, scaled by ``noise_threads``) and its network
    on every core and on the cores the noise would leave, each alone for about
    ``SPLIT_SECONDS``; choose with ``core_split`` and leave the backend's session built for
    the choice (``set_intra_op_threads``)."""
    from .noise import noise_generator, noise_stream

    shape, rows = model.config.input_shape, min(batch_size, SPLIT_ROWS)
    clean = probe_batch(model.config, rows)
    out = np.empty_like(clean)

    def noise_rate() -> float:
        stream, start, began = noise_stream(noise_generator(), shape, generator,
                                            family=model.config.family), 0, time.perf_counter()  # fmt: skip
        while start == 0 or time.perf_counter() - began < SPLIT_SECONDS:
            for piece, drawn in stream.pieces(out, start):
                stream.fill(piece, clean[0], model.config.sigma, drawn)
            start += rows
        return noise_threads * start / (time.perf_counter() - began)

    async def network_rate() -> float:
        calls, began = 0, time.perf_counter()
        while calls < 2 or time.perf_counter() - began < SPLIT_SECONDS:
            await backend.classify(model, clean)
            calls += 1
        return calls * rows / (time.perf_counter() - began)

    if cores <= noise_threads:
        return CoreSplit(0, 0.0, 0.0, 0.0)
    began = time.perf_counter()
    await backend.classify(model, clean)  # warm-up, and a first look at the network's speed
    if time.perf_counter() - began > SPLIT_SLOW_CALL_S:
        return CoreSplit(0, 0.0, rows / (time.perf_counter() - began), 0.0)
    noise = await asyncio.to_thread(noise_rate)
    everywhere = await network_rate()
    backend.set_intra_op_threads(model, cores - noise_threads)
    split = await network_rate()
    threads = core_split(noise, everywhere, split, cores, noise_threads)
    if not threads:
        backend.set_intra_op_threads(model, 0)
    return CoreSplit(threads, noise, everywhere, split)
