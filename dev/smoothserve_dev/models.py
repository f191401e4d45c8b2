"""ONNX models built by hand for tests: their smoothed behaviour is known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from smoothcert.model_config import SmoothModelConfig


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
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "1" / "model.onnx")
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
