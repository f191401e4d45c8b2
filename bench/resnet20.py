"""A CIFAR-shaped ResNet-20 with random weights, for benchmarks only (never committed).

He et al.'s CIFAR ResNet-20 (3 stages of 3 basic blocks, 16/32/64 channels) from
``smoothtrain.models``, CIFAR-10 normalisation as its first layer, so it takes pixels in
[0, 1] like the shipped models; its weights come from a fixed torch seed. ``write_model``
exports it as the shipped models are exported (``smoothtrain.onnx_export``: opset 17, dynamic
batch, "input" -> "logits") into ``<repo>/<NAME>/1/model.onnx`` with a ``config.pbtxt``.

    .venv/bin/python bench/resnet20.py /tmp/repo    # writes /tmp/repo/cifar_resnet20_random
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from smoothcert.model_config import SmoothModelConfig
from smoothtrain.models import build_model
from smoothtrain.onnx_export import export_onnx, verify_onnx

NAME = "cifar_resnet20_random"
INPUT_SHAPE = (3, 32, 32)
SIGMA = 0.5
SEED = 0
LABELS = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
MAX_BATCH_SIZE = 1024


def build(seed: int = SEED) -> nn.Module:
    """The network in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return build_model("resnet20", "cifar10", INPUT_SHAPE, len(LABELS)).eval()


def model_config() -> SmoothModelConfig:
    return SmoothModelConfig(
        name=NAME,
        sigma=SIGMA,
        labels=LABELS,
        input_shape=INPUT_SHAPE,
        value_range=(0.0, 1.0),
        max_batch_size=MAX_BATCH_SIZE,
        extra_parameters={
            "arch": "resnet20",
            "dataset": "cifar10 (shape only)",
            "training": f"none: random weights, torch seed {SEED}",
        },
    )


def config_text(config: SmoothModelConfig) -> str:
    """``config.pbtxt`` in the layout of the shipped models' configs."""
    dims = ", ".join(map(str, config.input_shape))
    preferred = ", ".join(map(str, config.preferred_batch_sizes))
    parameters = {
        "sigma": repr(config.sigma),
        "labels": json.dumps(list(config.labels)),
        "input_shape": json.dumps(list(config.input_shape)),
        "value_range": json.dumps(list(config.value_range)),
        **config.extra_parameters,
    }
    return "\n".join(
        [
            f'name: "{config.name}"',
            f'platform: "{config.platform}"',
            f"max_batch_size: {config.max_batch_size}",
            "input [", "  {", f'    name: "{config.input_name}"', "    data_type: TYPE_FP32",
            f"    dims: [ {dims} ]", "  }", "]",
            "output [", "  {", f'    name: "{config.output_name}"', "    data_type: TYPE_FP32",
            f"    dims: [ {config.num_classes} ]", "  }", "]",
            "dynamic_batching {", f"  preferred_batch_size: [ {preferred} ]",
            "  max_queue_delay_microseconds: 200", "}",
            "instance_group [", "  {", "    count: 1", "    kind: KIND_AUTO", "  }", "]",
            *(
                f"parameters {{ key: {json.dumps(k)} value {{ string_value: {json.dumps(v)} }} }}"
                for k, v in parameters.items()
            ),
            "",
        ]
    )  # fmt: skip


def write_model(repo: Path, seed: int = SEED) -> tuple[Path, nn.Module]:
    """Export the network into ``repo``; returns its model directory and the torch module,
    checked against ONNX Runtime on clean and noisy inputs."""
    model = build(seed)
    model_dir = repo / NAME
    onnx_path = export_onnx(model, INPUT_SHAPE, model_dir / "1" / "model.onnx")
    worst = verify_onnx(onnx_path, model, INPUT_SHAPE, SIGMA)
    if worst > 1e-3:
        raise AssertionError(f"ONNX Runtime differs from torch by {worst:.2e}")
    config = model_config()
    text = config_text(config)
    if SmoothModelConfig.from_pbtxt(text).to_proto() != config.to_proto():
        raise AssertionError("config.pbtxt does not parse back to the model's configuration")
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir, model


if __name__ == "__main__":
    directory, _ = write_model(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
    print(f"wrote {directory}")
