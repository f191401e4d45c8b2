"""The torch backend (noise drawn on the device) through a live server, on the CPU (or the
device SMOOTHSERVE_TORCH_DEVICE names, e.g. cuda on a GPU host).

Every model has an ONNX file and a TorchScript twin, so the same requests can be answered by
the torch backend and by the embedded ONNX Runtime backend and their counts compared.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import LINEAR_SHAPE, LINEAR_SIGMA, linear_weights
from scipy.stats import chi2_contingency, norm

from smoothcert.families import FAMILIES
from smoothcert.procedures.fixed_n import certify
from smoothserve_dev.models import write_linear_model

torch = pytest.importorskip("torch")

from smoothcert.model_config import SmoothModelConfig  # noqa: E402
from smoothserve.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from smoothserve.backends.torch_backend import TorchBackend, draw_noisy_segments  # noqa: E402
from smoothserve.metrics import Metrics  # noqa: E402
from smoothserve.noise import noise_generator  # noqa: E402
from smoothserve.repository import latest  # noqa: E402
from smoothserve.sampling import DeviceNoise, HostNoise  # noqa: E402
from smoothserve.scheduler import BatchScheduler  # noqa: E402
from smoothserve_client import SmoothServeClient  # noqa: E402
from smoothserve_dev.testing import ServerProcess  # noqa: E402
from smoothtrain import torchscript  # noqa: E402

CNN_SHAPE, CNN_SIGMA, CNN_CLASSES = (1, 12, 12), 0.5, 5
SERVER_ARGS = ["--batch-size", "1024", "--max-n", "400000"]
DEVICE = os.environ.get("SMOOTHSERVE_TORCH_DEVICE", "cpu")


def linear_twin(repo: Path, name: str, w: np.ndarray, b: float, shape: tuple[int, ...]) -> None:
    """smoothserve_dev.models' linear ONNX model plus the same network in TorchScript."""
    version = write_linear_model(repo, name, w, b, LINEAR_SIGMA, shape) / "1"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape)), 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(np.stack([np.zeros(w.size), w.ravel()])))
        net[1].bias.copy_(torch.tensor([0.0, b]))
    torchscript.write_torchscript(net, shape, version / "model.pt")


def cnn_twin(repo: Path, name: str = "cnn") -> None:
    """A small random CNN whose votes spread over all classes, as ONNX and TorchScript."""
    from smoothtrain.onnx_export import export_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, CNN_CLASSES),
    ).eval()
    version = repo / name / "1"
    export_onnx(net, CNN_SHAPE, version / "model.onnx")
    torchscript.write_torchscript(net, CNN_SHAPE, version / "model.pt")
    assert (
        torchscript.max_difference_to_onnx(
            version / "model.pt", version / "model.onnx", CNN_SHAPE, 0.5
        )
        < 1e-4
    )
    labels = tuple(f"c{k}" for k in range(CNN_CLASSES))
    SmoothModelConfig(name=name, sigma=CNN_SIGMA, labels=labels, input_shape=CNN_SHAPE).write(
        repo / name
    )


@pytest.fixture(scope="module")
def twin_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("twin_repo")
    w, b = linear_weights()
    linear_twin(repo, "linear", w, b, LINEAR_SHAPE)
    pixel = np.zeros(LINEAR_SHAPE, np.float32)
    pixel.flat[0] = 1.0
    linear_twin(repo, "pixel", pixel, -0.5, LINEAR_SHAPE)  # class 1 iff the first pixel > 0.5
    cnn_twin(repo)
    return repo


@pytest.fixture(scope="module")
def torch_client(twin_repo):
    with ServerProcess(twin_repo, args=["--backend", "torch", *SERVER_ARGS]) as server:
        assert f"on {DEVICE}" in server.log()
        with SmoothServeClient(server.address, timeout=120) as client:
            yield client


def embedded_counts(repo: Path, name: str, x: np.ndarray, sizes: tuple[int, ...]) -> list:
    """Counts from the embedded ONNX Runtime backend (host noise), one draw per size."""

    async def main():
        backend = OnnxRuntimeBackend(repo, providers=["CPUExecutionProvider"])
        model = latest((await backend.start()).ready[name])
        scheduler = BatchScheduler(model, backend, Metrics(), batch_size=1024)
        scheduler.start()
        rng = noise_generator()
        counts = [await scheduler.count(x, size, rng) for size in sizes]
        await scheduler.close()
        await backend.close()
        return counts

    return asyncio.run(main())


def cnn_input() -> np.ndarray:
    return np.random.default_rng(5).random(CNN_SHAPE, dtype=np.float32)


def linear_point(distance: float) -> np.ndarray:
    w, _ = linear_weights()
    return (0.5 + distance * w / np.linalg.norm(w)).astype(np.float32)


def test_counts_agree_with_onnxruntime(twin_repo, torch_client) -> None:
    x = cnn_input()
    on_device = torch_client.predict("cnn", x, n0=100, n=100_000).counts
    (on_host,) = embedded_counts(twin_repo, "cnn", x, (100_000,))
    assert np.count_nonzero(on_host) >= 3  # the votes spread: a real comparison
    assert chi2_contingency(np.array([on_device, on_host]) + 1).pvalue > 1e-6

    distance, n = 0.3, 100_000  # the linear model's radius: the same within sampling error
    x = linear_point(distance)
    on_device = torch_client.predict("linear", x, n0=100, n=n, alpha=0.001).radius
    on_host = certify(*embedded_counts(twin_repo, "linear", x, (100, n)), FAMILIES["gaussian"],
                      LINEAR_SIGMA, 0.001)  # fmt: skip
    p = norm.cdf(distance / LINEAR_SIGMA)
    standard_error = LINEAR_SIGMA * np.sqrt(p * (1 - p) / n) / norm.pdf(norm.ppf(p))
    assert max(on_device, on_host.radius) <= distance
    assert abs(on_device - on_host.radius) < 6 * np.sqrt(2) * standard_error


def test_seeded_requests_reproduce(torch_client) -> None:
    x = cnn_input()
    first, again, other = (
        torch_client.predict("cnn", x, n0=500, n=20_000, seed=seed) for seed in (11, 11, 12)
    )
    assert list(first.counts) == list(again.counts)
    assert list(first.selection_counts) == list(again.selection_counts)
    assert list(first.counts) != list(other.counts)


@pytest.mark.parametrize(
    ("model", "offset", "expected"),
    [
        ("linear", 0.0, 0.5),  # on the boundary: the noise along w has mean 0
        ("linear", LINEAR_SIGMA, norm.cdf(1)),  # one sigma away: its variance is sigma^2
        ("pixel", 0.0, 0.5),  # one pixel's noise: mean 0 ...
        ("pixel", LINEAR_SIGMA, norm.cdf(1)),  # ... standard deviation sigma ...
        ("pixel", 2 * LINEAR_SIGMA, norm.cdf(2)),  # ... and a Gaussian tail
    ],
)
def test_device_noise_statistics(torch_client, model: str, offset: float, expected: float) -> None:
    if model == "linear":
        x = linear_point(offset)
    else:
        x = np.full(LINEAR_SHAPE, 0.5, np.float32)
        x.flat[0] += offset
    n = 200_000
    votes = torch_client.predict(model, x, n0=100, n=n).counts[1]
    assert abs(votes / n - expected) < 5 * np.sqrt(expected * (1 - expected) / n), votes / n


def test_device_path_keeps_no_noise_on_the_host(twin_repo, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("noise drawn on, or a batch sent from, the host")

    monkeypatch.setattr("smoothserve.sampling.noise_stream", forbidden)

    async def main():
        backend = TorchBackend(twin_repo, device=DEVICE)
        model = latest((await backend.start()).ready["cnn"])
        monkeypatch.setattr(backend, "classify", forbidden)
        seen: list[tuple[tuple[int, ...], int]] = []
        classify_noisy = backend.classify_noisy

        async def recording(model, segments):
            seen.extend((x.shape, count) for x, count, _ in segments)
            return await classify_noisy(model, segments)

        backend.classify_noisy = recording
        metrics = Metrics()
        scheduler = BatchScheduler(model, backend, metrics, batch_size=256, pipeline_depth=2)
        strategy = scheduler.noise
        scheduler.start()
        jobs = [scheduler.count(cnn_input(), 1_000, noise_generator()) for _ in range(3)]
        counts = await asyncio.gather(*jobs)
        await scheduler.close()
        await backend.close()
        return strategy, seen, counts, metrics.noisy_samples.labels("cnn")._value.get()

    strategy, seen, counts, drawn = asyncio.run(main())
    assert isinstance(strategy, DeviceNoise) and not hasattr(strategy, "_buffers")
    assert {shape for shape, _ in seen} == {CNN_SHAPE}  # only clean inputs cross
    assert sum(count for _, count in seen) == drawn == 3_000
    assert [c.sum() for c in counts] == [1_000] * 3


def test_host_backends_keep_their_buffers(twin_repo) -> None:
    """The control for the test above: the ONNX Runtime path does fill host buffers."""

    async def main():
        backend = OnnxRuntimeBackend(twin_repo, providers=["CPUExecutionProvider"])
        model = latest((await backend.start()).ready["cnn"])
        scheduler = BatchScheduler(model, backend, Metrics(), batch_size=64, pipeline_depth=2)
        await scheduler.close()
        await backend.close()
        return scheduler.noise

    strategy = asyncio.run(main())
    assert isinstance(strategy, HostNoise)
    assert [b.shape for b in strategy._buffers] == [(64, *CNN_SHAPE)] * 2  # one per slot


def test_models_without_torchscript_are_refused(tmp_path) -> None:
    w, b = linear_weights()
    write_linear_model(tmp_path, "onnx_only", w, b, LINEAR_SIGMA, LINEAR_SHAPE)
    states = asyncio.run(TorchBackend(tmp_path, device="cpu").start())
    assert not states.ready and "smoothtrain.torchscript" in states.failed["onnx_only"]


def test_half_precision_falls_back_when_it_disagrees(twin_repo) -> None:
    backend = TorchBackend(twin_repo, device="cpu")
    model = latest(asyncio.run(backend.start()).ready["linear"])
    probe = backend._probe_batch(model)
    reference = backend._networks[model.key].module(probe).argmax(1)
    backend.half_max_disagreement = 1.0
    assert backend._try_half(model, probe, reference).dtype == torch.float16
    backend.half_max_disagreement = -1.0  # any disagreement at all is too much
    assert backend._try_half(model, probe, reference) is None


def test_segments_draw_from_their_whole_seed() -> None:
    """Seeds that differ only above bit 32 give different noise (torch's CPU generator would
    not), the same seed the same noise, and each segment gets its own input."""
    x0, x1 = np.zeros(CNN_SHAPE, np.float32), np.ones(CNN_SHAPE, np.float32)
    seed = 12345
    out = torch.empty((6, *CNN_SHAPE), device=DEVICE)
    draw_noisy_segments(out, [(x0, 2, seed), (x0, 2, seed + 2**32), (x1, 2, seed)], 0.5)
    assert not torch.equal(out[0:2], out[2:4])
    assert torch.allclose(out[4:6] - 1, out[0:2], atol=1e-6)
    again = torch.empty((2, *CNN_SHAPE), device=DEVICE)
    draw_noisy_segments(again, [(x0, 2, seed + 2**32)], 0.5)
    assert torch.equal(again, out[2:4])  # a segment's noise is a function of its seed alone
    noise = out[0:4].flatten().cpu()
    assert abs(float(noise.mean())) < 0.1 and abs(float(noise.std()) - 0.5) < 0.05


def test_cpu_segments_draw_from_noise_generator() -> None:
    """On the CPU a segment's noise is exactly ``noise_generator(seed)``'s normals (NumPy's
    PCG64 keyed by all 63 bits), not torch's 32-bit-seeded CPU generator."""
    x = np.full(CNN_SHAPE, 0.5, np.float32)
    seed = 2**62 + 2**40 + 7
    out = torch.empty((3, *CNN_SHAPE))
    draw_noisy_segments(out, [(x, 3, seed)], 0.5)
    expected = 0.5 * noise_generator(seed).standard_normal((3, *CNN_SHAPE), dtype=np.float32)
    np.testing.assert_allclose(out.numpy() - x, expected, atol=1e-6)
    torch_cpu = torch.randn((3, *CNN_SHAPE), generator=torch.Generator().manual_seed(seed))
    assert not np.allclose(out.numpy() - x, 0.5 * torch_cpu.numpy(), atol=1e-3)
