"""Write the TorchScript twin of served models, for the torch backend.

For each checkpoint ``checkpoints/<name>.pt`` whose model is in the repository, traces the
network (normalisation included, as in the ONNX graph) to ``model_repo/<name>/<version>/model.pt``
next to model.onnx, and checks its logits against the ONNX model with ONNX Runtime on clean and
noisy batches (max |difference| <= --tolerance); a twin that fails is deleted.

    .venv/bin/python -m smoothtrain.torchscript                # every checkpoint served
    .venv/bin/python -m smoothtrain.torchscript fmnist_cnn_s25 --version 1
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]  # the checkout, as in smoothtrain.cli
TORCHSCRIPT_FILE = "model.pt"  # smoothserve.backends.torch_backend reads this name


def write_torchscript(model: nn.Module, input_shape: Sequence[int], path: Path) -> Path:
    """Trace ``model`` (which takes [N, C, H, W] pixels) and save it; the batch stays dynamic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in 2.x
        traced = torch.jit.trace(model.eval(), (example,))
        torch.jit.save(traced, str(path))
    return path


def max_difference_to_onnx(
    torchscript: Path,
    onnx_model: Path,
    input_shape: Sequence[int],
    sigma: float,
    batch: int = 64,
    seed: int = 0,
) -> float:
    """Max |logits(TorchScript) - logits(ONNX Runtime)| on clean, noisy and one-row batches."""
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(torchscript), map_location="cpu").eval()
    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    clean = rng.random((batch, *input_shape), dtype=np.float32)
    noisy = clean + np.float32(sigma) * rng.standard_normal(clean.shape, dtype=np.float32)
    worst = 0.0
    for x in (clean, noisy, clean[:1]):
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        (got,) = session.run(None, {input_name: x})
        if got.shape != expected.shape:
            raise AssertionError(f"ONNX logits {got.shape} != TorchScript {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def latest_version(model_dir: Path) -> str:
    versions = [p.name for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise FileNotFoundError(f"{model_dir} has no version directory")
    return max(versions, key=int)


def export_one(
    checkpoint: Path, repo: Path, version: str | None, tolerance: float
) -> tuple[Path, float]:
    from smoothcert.model_config import ComponentConfig, SmoothModelConfig
    from smoothtrain.checkpoint import load_model
    from smoothtrain.denoise import load_denoiser

    model_dir = repo / checkpoint.stem
    version_dir = model_dir / (version or latest_version(model_dir))
    text = (model_dir / "config.pbtxt").read_text()
    component = ComponentConfig.from_pbtxt(text)
    # a smoothed model is checked under its own noise; an ensemble's component under sigma 0.5
    sigma = SmoothModelConfig.from_pbtxt(text).sigma if component.smoothed else 0.5
    if "input_shape" in torch.load(checkpoint, map_location="cpu", weights_only=False):
        model, _, state = load_model(checkpoint)
        shape = tuple(int(d) for d in state["input_shape"])
    else:  # a denoiser (smoothtrain.denoise): same shape in and out
        model, _, _ = load_denoiser(checkpoint)
        shape = tuple(component.inputs[0].dims)
    if shape != tuple(component.inputs[0].dims):
        raise ValueError(
            f"{checkpoint}: input shape {shape}, the repository says {component.inputs[0].dims}"
        )
    path = write_torchscript(model, shape, version_dir / TORCHSCRIPT_FILE)
    difference = max_difference_to_onnx(path, version_dir / "model.onnx", shape, sigma)
    if difference > tolerance:
        path.unlink()
        raise AssertionError(f"{path}: logits differ from model.onnx by {difference:.2e}")
    return path, difference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", help="models to export; default: every checkpoint served"
    )
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--version", default=None, help="version directory; default: the latest")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    names = args.names or sorted(
        p.stem for p in args.checkpoints.glob("*.pt") if (args.model_repo / p.stem).is_dir()
    )
    if not names:
        print(f"no checkpoint in {args.checkpoints} has a model in {args.model_repo}")
        return 1
    failed = 0
    for name in names:
        try:
            path, difference = export_one(
                args.checkpoints / f"{name}.pt", args.model_repo, args.version, args.tolerance
            )
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {path.relative_to(args.model_repo)} (max |logits - ONNX| {difference:.1e})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
