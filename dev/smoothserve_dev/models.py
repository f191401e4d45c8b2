"""ONNX models built by hand for tests: their smoothed behaviour is known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from smoothcert.model_config import EnsembleStep, SmoothModelConfig, component_config_text


def linear_network(name: str, w: np.ndarray, b: float, shape: tuple[int, ...]) -> onnx.ModelProto:
    """The ONNX graph of ``write_linear_model``: logits [0, w.x + b] of inputs ``input``."""
    flat = int(np.prod(shape))
    weights = np.zeros((flat, 2), dtype=np.float32)
    weights[:, 1] = np.asarray(w, dtype=np.float32).reshape(flat)
    bias = np.array([0.0, b], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_linear_model(
    repo: Path, name: str, w: np.ndarray, b: float, sigma: float, shape: tuple[int, ...],
    noise_family: str = "gaussian",
) -> Path:  # fmt: skip
    """A two-class linear classifier: class 1 where w.x + b > 0, else class 0, smoothed with
    ``noise_family`` noise of scale ``sigma``.

    Under Gaussian noise its smoothed classifier is itself, and its exact certified L2 radius
    at x is |w.x + b|/||w||. With w a coordinate axis (a half-plane x_i > t), under uniform
    noise on [-sigma, sigma]^d, p_A = 1/2 + |x_i - t| / (2 sigma) and the exact L1 radius is
    |x_i - t| (for |x_i - t| <= sigma). Logits are [0, w.x + b], so ties go to class 0.
    """
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(linear_network(name, w, b, shape), model_dir / "1" / "model.onnx")
    SmoothModelConfig(
        name=name, sigma=sigma, labels=("negative", "positive"), input_shape=tuple(shape),
        noise_family=noise_family,
    ).write(model_dir)  # fmt: skip
    return model_dir


def write_histogram_model(
    repo: Path,
    name: str,
    direction: np.ndarray,
    centers: np.ndarray,
    sigma: float,
    shape: tuple[int, ...],
) -> Path:
    """A classifier whose vote counts are a histogram of z = direction . x.

    Class k has logit c_k z - c_k^2 / 2 = -(z - c_k)^2 / 2 + z^2 / 2, so the argmax is the
    centre c_k nearest to z: under noise the smoothed counts bin z = d.x + d.noise into
    cells bounded by the midpoints between consecutive (sorted) centres.
    """
    flat = int(np.prod(shape))
    d = np.asarray(direction, dtype=np.float64).reshape(flat)
    c = np.asarray(centers, dtype=np.float64)
    weights = (d[:, None] * c[None, :]).astype(np.float32)
    bias = (-(c**2) / 2).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(c)])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "1" / "model.onnx")
    labels = tuple(f"bin{k}" for k in range(len(c)))
    SmoothModelConfig(name=name, sigma=sigma, labels=labels, input_shape=tuple(shape)).write(
        model_dir
    )
    return model_dir


def write_component_config(
    model_dir: Path, inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]],
    max_batch_size: int = 1024,
) -> Path:  # fmt: skip
    """A component's ``config.pbtxt`` (Triton's, no smoothing parameters): ONNX Runtime,
    FP32 tensors with these names and dims (no batch axis)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    path.write_text(component_config_text(model_dir.name, inputs, outputs, max_batch_size,
                                          batching=False))  # fmt: skip
    return path


def write_identity_denoiser(
    repo: Path, name: str, shape: tuple[int, ...], max_batch_size: int = 1024,
    version: str = "1", opset: int = 17,
) -> Path:  # fmt: skip
    """A "denoiser" component that returns its input exactly: a 3x3 convolution whose kernel is
    1 at the centre of each channel's own plane and 0 elsewhere (zero padding), so the composed
    model's votes are the classifier's on the same noisy inputs. ``input`` -> ``denoised``."""
    channels = shape[0]
    kernel = np.zeros((channels, channels, 3, 3), np.float32)
    for c in range(channels):
        kernel[c, c, 1, 1] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "K"], ["denoised"], pads=[1, 1, 1, 1])],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("denoised", TensorProto.FLOAT, ["batch", *shape])],
        initializer=[numpy_helper.from_array(kernel, "K")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model_dir = repo / name
    (model_dir / version).mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / version / "model.onnx")
    write_component_config(model_dir, {"input": shape}, {"denoised": shape}, max_batch_size)
    return model_dir


def write_linear_component(
    repo: Path, name: str, w: np.ndarray, b: float, shape: tuple[int, ...],
    max_batch_size: int = 1024,
) -> Path:  # fmt: skip
    """``write_linear_model``'s classifier as a component: the same network, a config without
    smoothing parameters (``input`` -> ``logits``, two classes)."""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(linear_network(name, w, b, shape), model_dir / "1" / "model.onnx")
    write_component_config(model_dir, {"input": shape}, {"logits": (2,)}, max_batch_size)
    return model_dir


def write_ensemble(
    repo: Path, name: str, denoiser: str, classifier: str, sigma: float,
    shape: tuple[int, ...], labels: tuple[str, ...] = ("negative", "positive"),
    max_batch_size: int = 1024, noise_family: str = "gaussian",
) -> Path:  # fmt: skip
    """A smoothed ensemble in Triton's convention: ``denoiser`` (``input`` -> ``denoised``),
    then ``classifier`` (``input`` -> ``logits``), the smoothing parameters on the ensemble, and
    an empty version folder ``1/`` (a ``.keep`` file, so that git keeps it)."""
    steps = (
        EnsembleStep(denoiser, -1, (("input", "input"),), (("denoised", "denoised"),)),
        EnsembleStep(classifier, -1, (("input", "denoised"),), (("logits", "logits"),)),
    )
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / ".keep").touch()
    SmoothModelConfig(
        name=name, sigma=sigma, labels=labels, input_shape=tuple(shape), platform="ensemble",
        max_batch_size=max_batch_size, noise_family=noise_family, ensemble_steps=steps,
    ).write(model_dir)  # fmt: skip
    return model_dir
