"""Triton ``config.pbtxt`` for smoothed models: the model repository's single source of truth.

A SmoothServe model directory is a Triton model directory::

    model_repo/<name>/config.pbtxt
    model_repo/<name>/<version>/model.onnx

Smoothing metadata lives in the config's ``parameters`` (string values, as Triton requires):
``sigma``, ``labels`` (a JSON list), ``input_shape`` (JSON, without the batch axis) and
``value_range`` (JSON ``[low, high]`` of the pixel space the noise is added in).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


@dataclass(frozen=True)
class SmoothModelConfig:
    name: str
    sigma: float
    labels: tuple[str, ...]
    input_shape: tuple[int, ...]  # without the batch axis, e.g. (1, 28, 28)
    value_range: tuple[float, float] = (0.0, 1.0)
    input_name: str = "input"
    output_name: str = "logits"
    max_batch_size: int = 1024
    platform: str = "onnxruntime_onnx"
    instance_count: int = 1
    preferred_batch_sizes: tuple[int, ...] = (256, 512, 1024)
    extra_parameters: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_pbtxt(self) -> str:
        dims = ", ".join(str(d) for d in self.input_shape)
        params = {
            "sigma": repr(float(self.sigma)),
            "labels": json.dumps(list(self.labels)),
            "input_shape": json.dumps(list(self.input_shape)),
            "value_range": json.dumps(list(self.value_range)),
            **self.extra_parameters,
        }
        lines = [
            f'name: "{self.name}"',
            f'platform: "{self.platform}"',
            f"max_batch_size: {self.max_batch_size}",
            "input [",
            "  {",
            f'    name: "{self.input_name}"',
            "    data_type: TYPE_FP32",
            f"    dims: [ {dims} ]",
            "  }",
            "]",
            "output [",
            "  {",
            f'    name: "{self.output_name}"',
            "    data_type: TYPE_FP32",
            f"    dims: [ {self.num_classes} ]",
            "  }",
            "]",
            "dynamic_batching {",
            f"  preferred_batch_size: [ {', '.join(map(str, self.preferred_batch_sizes))} ]",
            "  max_queue_delay_microseconds: 200",
            "}",
            "instance_group [",
            "  {",
            f"    count: {self.instance_count}",
            "    kind: KIND_AUTO",
            "  }",
            "]",
        ]
        for key, value in params.items():
            lines.append(f'parameters {{ key: "{key}" value {{ string_value: {_quote(value)} }} }}')
        return "\n".join(lines) + "\n"

    @classmethod
    def from_pbtxt(cls, text: str) -> SmoothModelConfig:
        return cls.from_dict(parse_pbtxt(text))

    @classmethod
    def from_dict(cls, config: dict) -> SmoothModelConfig:
        """Build from a parsed config, as ``parse_pbtxt`` or Triton's JSON model config give it."""
        params = _parameters(config.get("parameters", []))
        missing = {"sigma", "labels"} - params.keys()
        if missing:
            raise ValueError(f"config of {config.get('name')!r} lacks parameters {sorted(missing)}")
        inputs = _as_list(config.get("input", []))
        outputs = _as_list(config.get("output", []))
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError("a smoothed model has exactly one input and one output")
        dims = tuple(int(d) for d in _as_list(inputs[0].get("dims", [])))
        shape = tuple(json.loads(params["input_shape"])) if "input_shape" in params else dims
        if dims and tuple(dims) != tuple(shape):
            raise ValueError(f"input dims {dims} disagree with parameter input_shape {shape}")
        known = {"sigma", "labels", "input_shape", "value_range"}
        groups = _as_list(config.get("instance_group", [{}]))
        preferred = config.get("dynamic_batching", {}).get("preferred_batch_size", [])
        return cls(
            name=str(config["name"]),
            sigma=float(params["sigma"]),
            labels=tuple(json.loads(params["labels"])),
            input_shape=tuple(int(d) for d in shape),
            value_range=tuple(float(v) for v in json.loads(params.get("value_range", "[0, 1]"))),
            input_name=str(inputs[0]["name"]),
            output_name=str(outputs[0]["name"]),
            max_batch_size=int(config.get("max_batch_size", 0)),
            platform=str(config.get("platform", config.get("backend", ""))),
            instance_count=int(groups[0].get("count", 1)) if groups else 1,
            preferred_batch_sizes=tuple(int(b) for b in _as_list(preferred)),
            extra_parameters={k: v for k, v in params.items() if k not in known},
        )

    def write(self, model_dir: Path) -> Path:
        model_dir.mkdir(parents=True, exist_ok=True)
        path = model_dir / "config.pbtxt"
        path.write_text(self.to_pbtxt())
        return path


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parameters(raw) -> dict[str, str]:
    if isinstance(raw, dict) and "key" not in raw:  # Triton's JSON: {key: {string_value: ...}}
        return {key: value["string_value"] for key, value in raw.items()}
    return {p["key"]: p["value"]["string_value"] for p in _as_list(raw)}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


_TOKEN = re.compile(
    r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"#]+))', re.DOTALL
)


def parse_pbtxt(text: str) -> dict:
    """Parse protobuf text format (the subset Triton configs use) into dicts and lists.

    A field that appears more than once, or whose value is a ``[...]`` list, becomes a list.
    """
    tokens = _tokenize(text)
    return _parse_fields(tokens, 0, closing=None)[1]


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot parse config near {text[pos:pos + 30]!r}")
            break
        pos = match.end()
        comment, string, punct, word = match.groups()
        if comment is None:
            token = string or punct or word
            if token is not None:
                tokens.append(token)
    return tokens


def _parse_fields(tokens: list[str], pos: int, closing: str | None) -> tuple[int, dict]:
    fields: dict = {}
    while pos < len(tokens) and tokens[pos] != closing:
        key = tokens[pos]
        pos += 1
        if pos < len(tokens) and tokens[pos] == ":":
            pos += 1
        pos, value = _parse_value(tokens, pos)
        if key in fields:
            previous = fields[key]
            fields[key] = (previous if isinstance(previous, list) else [previous]) + (
                value if isinstance(value, list) else [value]
            )
        else:
            fields[key] = value
        if pos < len(tokens) and tokens[pos] in {",", ";"}:
            pos += 1
    if closing is not None:
        if pos >= len(tokens):
            raise ValueError(f"unbalanced config: missing {closing!r}")
        pos += 1
    return pos, fields


def _parse_value(tokens: list[str], pos: int):
    token = tokens[pos]
    if token == "{":
        return _parse_fields(tokens, pos + 1, closing="}")
    if token == "[":
        items, pos = [], pos + 1
        while tokens[pos] != "]":
            pos, item = _parse_value(tokens, pos)
            items.append(item)
            if tokens[pos] == ",":
                pos += 1
        return pos + 1, items
    return pos + 1, _scalar(token)


def _scalar(token: str):
    if token.startswith('"'):
        try:
            return json.loads(token)
        except json.JSONDecodeError:
            return token[1:-1]
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(token, token)
