"""The PyTorch backend: the served networks' TorchScript twins, with the noise drawn on the device.

Each version directory holds ``model.pt`` (TorchScript, from ``smoothtrain.torchscript``) next
to ``model.onnx``; Triton's onnxruntime_onnx platform loads only model.onnx. The noise never
crosses the host: per segment, x + sigma * randn is built on the device from the seed the
scheduler drew (a Philox torch.Generator on CUDA; on the CPU NumPy's PCG64 from
``noise.noise_generator``, as torch's CPU generator keeps only 32 bits of a seed), the argmax is
taken there and only the class indices come back. torch is imported only when this
backend is chosen. An ensemble (``repository.py``: a denoiser, then a classifier) runs as its
components' twins composed into one scripted module (``load_network``).
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smoothcert.families import NoiseFamily

from ..noise import GAUSSIAN, noise_generator
from ..repository import ModelStates, ModelVersion
from .base import Backend, NoisySegment, check_logits, first_line
from .torch_graphs import CudaGraphRunner

log = logging.getLogger(__name__)
TORCHSCRIPT_FILE = "model.pt"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in 2.x
        return torch.jit.load(str(path), map_location=device).eval()


class _Chain(torch.nn.Module):
    """An ensemble's components run in turn (denoised smoothing: a denoiser, then a
    classifier), scripted as one module so it is frozen and optimized as any twin."""

    def __init__(self, steps: list[torch.jit.ScriptModule]) -> None:
        super().__init__()
        self.steps = torch.nn.ModuleList(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x


def load_network(model: ModelVersion, device: torch.device) -> torch.jit.ScriptModule:
    """A model's TorchScript twin; for an ensemble, its components' twins composed (each
    ``<component>/<version>/model.pt`` beside the step's model.onnx). FileNotFoundError names
    a missing twin."""
    paths = [step.path.parent / TORCHSCRIPT_FILE for step in model.steps] if model.steps else [
        Path(model.path).parent / TORCHSCRIPT_FILE if model.path else None
    ]  # fmt: skip
    for path in paths:
        if path is None or not path.is_file():
            raise FileNotFoundError(f"no {TORCHSCRIPT_FILE} beside "
                                    f"{path.parent / 'model.onnx' if path else model.path} "
                                    "(run python -m smoothtrain.torchscript)")  # fmt: skip
    if not model.steps:
        return load_torchscript(paths[0], device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_Chain([load_torchscript(p, device) for p in paths])).eval()


def optimized(module: torch.jit.ScriptModule, device: torch.device) -> torch.jit.ScriptModule:
    """Frozen (weights folded into the graph, conv+BN fused); on the CPU also in oneDNN layouts,
    about 5x faster there for the Fashion-MNIST CNN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        frozen = torch.jit.freeze(module.eval())
        return torch.jit.optimize_for_inference(frozen) if device.type == "cpu" else frozen


@dataclass
class _Network:
    module: torch.jit.ScriptModule
    dtype: torch.dtype
    shape: tuple[int, ...]
    graph: CudaGraphRunner | None = None


class TorchBackend(Backend):
    """``half_max_disagreement``: the share of a probe batch on which FP16, or the optimised
    graph, may change FP32's argmax before it is refused."""

    name = "torch"
    model_control = True
    generates_noise = True

    def __init__(
        self,
        model_repo: Path,
        device: str = "",
        half: bool = True,
        cuda_graphs: bool = False,
        batch_size: int = 256,
        max_concurrent_batches: int = 2,
        half_max_disagreement: float = 0.01,
    ) -> None:
        self.model_repo = Path(model_repo)
        self.device = torch.device(device or default_device())
        self.half = half and self.device.type == "cuda"
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        if cuda_graphs and not self.cuda_graphs:
            log.warning(
                "--torch-cuda-graphs needs a CUDA device; running eagerly on %s", self.device
            )
        self.batch_size = batch_size
        self.half_max_disagreement = half_max_disagreement
        self._executor = ThreadPoolExecutor(max_concurrent_batches, thread_name_prefix="torch")
        self._networks: dict[tuple[str, str, str], _Network] = {}

    async def load_model(self, states: ModelStates, name: str) -> None:
        loaded = []
        for model in states.ready[name].values():
            try:
                self._networks[model.key] = self._load(model)
                loaded.append(model)
            except FileNotFoundError as exc:
                states.fail(name, str(exc))
                break
            except Exception as exc:  # a corrupt file raises whatever torch raises
                states.fail(name, f"{model.name} version {model.version}: {first_line(exc)}")
                break
        if name in states.failed:
            for model in loaded:
                self.unload_model(model)

    def unload_model(self, model: ModelVersion) -> None:
        self._networks.pop(model.key, None)

    def _load(self, model: ModelVersion) -> _Network:
        shape = tuple(model.config.input_shape)
        module = load_network(model, self.device)
        probe = self._probe_batch(model)
        with torch.no_grad():
            logits = module(probe)
        check_logits(model.config, logits.cpu().numpy(), len(probe))
        network = _Network(module, torch.float32, shape)
        if self.half:
            network = self._try_half(model, probe, logits.argmax(1)) or network
        network.module = self._optimize(model, network, probe, logits.argmax(1))
        if self.cuda_graphs:
            network.graph = CudaGraphRunner(
                network.module, shape, self.batch_size, network.dtype, self.device
            )
        log.info("loaded %s version %s on %s (%s)", model.name, model.version, self.device,
                 str(network.dtype).removeprefix("torch."))  # fmt: skip
        return network

    def _probe_batch(self, model: ModelVersion, images: int = 8, copies: int = 128) -> torch.Tensor:
        """Noisy copies of random images in the model's pixel range, as the server feeds it."""
        low, high = model.config.value_range
        gen = torch.Generator(self.device).manual_seed(0)
        x = torch.rand((images, 1, *model.config.input_shape), generator=gen, device=self.device)
        x = low + (high - low) * x
        noise = torch.randn((images, copies, *model.config.input_shape), generator=gen,
                            device=self.device)  # fmt: skip
        return (x + model.config.sigma * noise).flatten(0, 1)

    def _try_half(
        self, model: ModelVersion, probe: torch.Tensor, reference: torch.Tensor
    ) -> _Network | None:
        """The FP16 network, if its argmax agrees with FP32's on the probe batch."""
        try:
            module = load_network(model, self.device).half()
            with torch.no_grad():
                classes = module(probe.half()).argmax(1)
        except RuntimeError as exc:
            log.warning("%s: FP16 failed (%s); running FP32", model.name, exc)
            return None
        disagreement = float((classes != reference).float().mean())
        if disagreement > self.half_max_disagreement:
            log.warning("%s: FP16 argmax disagrees with FP32 on %.2f%% of a probe batch; "
                        "running FP32", model.name, 100 * disagreement)  # fmt: skip
            return None
        return _Network(module, torch.float16, tuple(model.config.input_shape))

    def _optimize(
        self, model: ModelVersion, network: _Network, probe: torch.Tensor, reference: torch.Tensor
    ) -> torch.jit.ScriptModule:
        """The optimized module, unless its argmax disagrees with the plain FP32 one."""
        try:
            module = optimized(network.module, self.device)
            with torch.no_grad():
                classes = module(probe.to(network.dtype)).argmax(1)
        except RuntimeError as exc:
            log.warning("%s: graph optimisation failed (%s); running unoptimised", model.name, exc)
            return network.module
        if float((classes != reference).float().mean()) > self.half_max_disagreement:
            log.warning("%s: the optimised graph disagrees; running unoptimised", model.name)
            return network.module
        return module

    async def classify(self, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        network = self._networks[model.key]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._classify_batch, network, batch)

    def _classify_batch(self, network: _Network, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            inputs = torch.from_numpy(batch).to(self.device, network.dtype)
            return self._argmax(network, inputs, len(batch))

    async def classify_noisy(self, model: ModelVersion, segments: list[NoisySegment]) -> np.ndarray:
        network = self._networks[model.key]
        noise = (model.config.sigma, model.config.family)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._classify_noisy, network, segments, noise
        )

    def _classify_noisy(
        self, network: _Network, segments: list[NoisySegment], noise: tuple[float, NoiseFamily]
    ) -> np.ndarray:
        total = sum(count for _, count, _ in segments)
        with torch.no_grad():
            if network.graph is not None and total <= network.graph.batch_size:
                with network.graph.lock:
                    draw_noisy_segments(network.graph.input[:total], segments, *noise)
                    return to_numpy(network.graph.run()[:total])
            inputs = torch.empty((total, *network.shape), dtype=network.dtype, device=self.device)
            draw_noisy_segments(inputs, segments, *noise)
            return self._argmax(network, inputs, total)

    @staticmethod
    def _argmax(network: _Network, inputs: torch.Tensor, total: int) -> np.ndarray:
        return to_numpy(network.module(inputs).argmax(1)[:total])

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def draw_noisy_segments(
    out: torch.Tensor, segments: list[NoisySegment], sigma: float, family: NoiseFamily = GAUSSIAN
) -> None:
    """Rows of ``out`` (on its device) become, segment after segment, ``count`` noisy copies
    x + sigma * eps of the segment's clean input; eps, of the noise ``family`` (N(0, I) by
    default), is a function of the segment's whole seed alone: Philox on CUDA, NumPy's PCG64
    (``noise_generator``) on the CPU."""
    offset = 0
    for x, count, seed in segments:
        rows = out[offset : offset + count]
        if out.device.type == "cpu":
            # Not torch's CPU generator (MT19937): it keeps only the low 32 bits of a seed, so
            # segments would share streams after ~2^16 of them. PCG64 takes the whole seed.
            # Drawn straight into the tensor's memory (float32: FP16 is CUDA-only); a separate
            # array and a copy would cost about a tenth more per batch.
            family.fill_standard(rows.numpy(), noise_generator(seed))
        else:  # Philox, keyed by the whole 64-bit seed
            family.fill_torch(rows, torch.Generator(out.device).manual_seed(seed))
        rows *= sigma
        rows += torch.tensor(x, dtype=out.dtype, device=out.device)  # the clean input only
        offset += count


def to_numpy(classes: torch.Tensor) -> np.ndarray:
    """Only the class indices cross to the host, as int32; int64 on arrival."""
    return classes.to(torch.int32).cpu().numpy().astype(np.int64)
