"""ONNX export (normalisation inside the graph, dynamic batch) and the model repository entry."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smoothcert.model_config import SmoothModelConfig

from .config import TrainConfig

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model: nn.Module, input_shape, path: Path, opset: int = 17) -> Path:
    """Trace ``model`` (which begins with Normalize) to ONNX: "input" [N,C,H,W] -> "logits"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def verify_onnx(
    path: Path, model: nn.Module, input_shape, sigma: float, batch: int = 64, seed: int = 0,
    noise=None,
) -> float:  # fmt: skip
    """onnx.checker, then the max |ORT - torch| over clean and noisy inputs (as served);
    ``noise(x)`` draws the model's noise (default: Gaussian at ``sigma``)."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(batch, *input_shape, generator=generator)
    if noise is None:
        noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
    else:
        noisy = clean + noise(clean)
    worst = 0.0
    for x in (clean, noisy, clean[:1]):
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(np.float32)})
        if got.shape != expected.shape:
            raise AssertionError(f"ORT output {got.shape} != torch {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def write_model_repo(
    model: nn.Module,
    cfg: TrainConfig,
    classes,
    input_shape,
    repo: Path,
    version: int = 1,
    max_batch_size: int = 1024,
) -> tuple[Path, SmoothModelConfig]:
    """``repo/<name>/<version>/model.onnx`` plus ``repo/<name>/config.pbtxt``."""
    model_dir = repo / cfg.name
    export_onnx(model, input_shape, model_dir / str(version) / "model.onnx")
    extra = {"arch": cfg.arch, "training": cfg.method, "dataset": cfg.dataset}
    if cfg.method == "smoothadv":
        extra |= {
            "attack": cfg.attack, "epsilon": repr(cfg.epsilon), "num_steps": str(cfg.num_steps),
            "num_noise_vec": str(cfg.num_noise_vec),
        }  # fmt: skip
    config = SmoothModelConfig(
        name=cfg.name,
        sigma=cfg.sigma,
        noise_family=cfg.noise_family,
        labels=tuple(classes),
        input_shape=tuple(int(d) for d in input_shape),
        value_range=(0.0, 1.0),
        max_batch_size=max_batch_size,
        extra_parameters=extra,
    )
    config.write(model_dir)
    return model_dir, config
