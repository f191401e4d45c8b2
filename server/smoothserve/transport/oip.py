"""The Open Inference Protocol (KServe v2) mapping, shared by its gRPC and REST transports.

A ModelInfer request certifies one input tensor: the certification options travel as request
parameters (``mode``, ``n0``, ``n``, ``alpha``, ``seed``, ``procedure``, ``target_radius``,
``tolerance``; absent ones take the server's defaults), and the answer comes back as named
output tensors and, in full, as response parameters (docs/api.md, "Open Inference Protocol").
Everything below the transport is the native API's: the same data plane, admission, limits
and metrics.
"""

from __future__ import annotations

import base64
import math
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from smoothserve_client.types import ModelInfo, PredictResult

from ..errors import InvalidArgument, Unavailable
from ..request import (
    CERTIFY,
    MODES,
    OIP_DATATYPES,
    PROCEDURES,
    PredictInput,
    check_request_bounds,
    checked_seed,
    checked_shape,
    option_integer,
    option_number,
    quote,
    values_to_bytes,
)

PLATFORM = "smoothserve"
INPUT_NAME = "input"
DATATYPES = OIP_DATATYPES
OUTPUT_NAMES = ("prediction", "abstain", "radius", "p_a_lower", "p_value", "candidate", "counts",
                "label")  # fmt: skip
OPTION_TYPES = {"mode": str, "procedure": str, "n0": int, "n": int, "seed": int,
                "alpha": float, "target_radius": float, "tolerance": float,
                "sound_noise": bool}  # fmt: skip
# OIP datatypes as model-config data types (``inference.DataType``)
CONFIG_TYPES = {"INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "FP64": "TYPE_FP64",
                "FP32": "TYPE_FP32", "BOOL": "TYPE_BOOL", "BYTES": "TYPE_STRING"}  # fmt: skip
MAX_OUTPUTS = 64
# Triton's protocol extensions served on both doors (REST adds binary_tensor_data)
EXTENSIONS = ("parameters", "model_repository", "statistics")
MAX_PARAMETERS = 64


@dataclass(frozen=True)
class Tensor:
    """An output tensor: name, OIP datatype, shape and values (a 1-D NumPy array)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray


def raw_bytes(tensor: Tensor) -> bytes:
    """A tensor in the protocol's raw form: little-endian elements, BOOL as one byte each,
    BYTES elements each after a 4-byte little-endian length."""
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in tensor.values)
    return tensor.values.astype(tensor.values.dtype.newbyteorder("<")).tobytes()


def check_outputs(names: Sequence[object]) -> None:
    """Requested outputs must be ones the server answers with, checked before any sample."""
    if len(names) > MAX_OUTPUTS:
        raise InvalidArgument(f"at most {MAX_OUTPUTS} outputs may be requested")
    for name in names:
        if not isinstance(name, str) or name not in OUTPUT_NAMES:
            shown = quote(name) if isinstance(name, str) else type(name).__name__
            raise InvalidArgument(f"unknown output {shown}; outputs: {', '.join(OUTPUT_NAMES)}")


def options_of(parameters: Mapping[str, object]) -> dict[str, object]:
    """The certification options among a request's parameters, each of its type and range;
    other parameters (OIP's own, tracing) are not certification options and are left alone."""
    if len(parameters) > MAX_PARAMETERS:
        raise InvalidArgument(f"at most {MAX_PARAMETERS} parameters are allowed")
    options: dict[str, object] = {}
    for name, value in parameters.items():
        kind = OPTION_TYPES.get(name)
        if kind is None:
            continue
        if name == "seed":
            options[name] = checked_seed(value)
        elif kind is int:
            options[name] = option_integer(name, value)
        elif kind is float:
            options[name] = option_number(name, value)
        elif not isinstance(value, kind):
            raise InvalidArgument(f"parameter {name} must be a {kind.__name__}")
        else:
            options[name] = value
    mode = options.pop("mode", CERTIFY)
    if mode not in MODES:
        raise InvalidArgument(f"parameter mode must be certify or predict, got {quote(mode, 16)}")
    procedure = options.setdefault("procedure", PROCEDURES[0])
    if procedure not in PROCEDURES:
        raise InvalidArgument(f"parameter procedure must be one of {', '.join(PROCEDURES)}")
    options["mode"] = mode
    return options


def to_input(
    model_name: str,
    model_version: str,
    datatype: object,
    shape: Sequence,
    data: bytes | Sequence | np.ndarray,
    parameters: Mapping[str, object],
    seconds_left: float | None = None,
    outputs: Sequence[object] = (),
    model_shape: Sequence[int] = (),
) -> PredictInput:
    """A ModelInfer request as the data plane's input, its shape as the model reads it
    (``model_input_shape``: a batch axis of one in front of the model's ``model_shape`` is
    dropped).

    ``data`` is the input's raw little-endian bytes, or its values (a JSON list, a protobuf
    repeated field), which must each be exactly representable in ``datatype``. Cheap checks
    come first: names, datatype, shape, outputs and options, then the values."""
    check_request_bounds(model_name, model_version)
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        shown = quote(datatype, 16) if isinstance(datatype, str) else type(datatype).__name__
        raise InvalidArgument(f"input datatype must be UINT8 or FP32, got {shown}")
    shape = model_input_shape(checked_shape(shape), tuple(model_shape))
    check_outputs(outputs)
    options = options_of(parameters)
    dtype = DATATYPES[datatype]
    if not isinstance(data, bytes):
        data = values_to_bytes(data, dtype)
    return PredictInput(
        model_name=model_name, model_version=model_version, shape=shape, dtype=dtype, data=data,
        deadline=None if seconds_left is None else time.monotonic() + seconds_left, **options,
    )  # fmt: skip


def model_input_shape(shape: tuple[int, ...], model_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a request's input as the model reads it. A request certifies one input, of
    the model's shape ``[C, H, W]`` or with a batch axis of one, ``[1, C, H, W]`` (what the
    metadata gives), whatever C is; a batch of any other size is refused. Any other shape is
    left as sent, for the data plane to refuse naming the model's shape."""
    if model_shape and len(shape) == len(model_shape) + 1 and shape[1:] == model_shape:
        if shape[0] != 1:
            raise InvalidArgument(
                f"a request certifies one input: shape {list(shape)} is a batch of {shape[0]}; "
                f"send {[1, *model_shape]} or {list(model_shape)}, one request per input"
            )
        return model_shape
    return shape


def outputs(result: PredictResult) -> list[Tensor]:
    """The answer as output tensors, in a fixed order."""

    def scalar(name: str, datatype: str, value, dtype) -> Tensor:
        return Tensor(name, datatype, (1,), np.array([value], dtype=dtype))

    return [
        scalar("prediction", "INT32", result.prediction, np.int32),
        scalar("abstain", "BOOL", result.abstain, np.bool_),
        scalar("radius", "FP64", result.radius, np.float64),
        scalar("p_a_lower", "FP64", result.p_a_lower, np.float64),
        scalar("p_value", "FP64", result.p_value, np.float64),
        scalar("candidate", "INT32", result.candidate, np.int32),
        Tensor("counts", "INT64", (len(result.counts),), np.array(result.counts, np.int64)),
        scalar("label", "BYTES", result.label.encode(), object),
    ]


def parameters(result: PredictResult) -> dict[str, object]:
    """Every field of the answer as a response parameter (the record as text, the signature in
    base64), so a client that reads parameters alone can recompute and verify it."""
    values: dict[str, object] = {}
    for name, value in result.__dict__.items():
        if name == "record":
            values[name] = value.decode("ascii")
        elif name == "record_signature":
            values[name] = base64.b64encode(value).decode("ascii")
        elif isinstance(value, tuple):
            values[name] = ",".join(str(v) for v in value)
        elif value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        else:
            values[name] = value
    return values


def metadata_outputs(info: ModelInfo) -> list[tuple[str, str, list[int]]]:
    """(name, datatype, shape) of the outputs, as ModelMetadata reports them."""
    shapes = {"counts": [len(info.labels)]}
    types = {"prediction": "INT32", "abstain": "BOOL", "candidate": "INT32", "counts": "INT64",
             "label": "BYTES"}  # fmt: skip
    return [(name, types.get(name, "FP64"), shapes.get(name, [1])) for name in OUTPUT_NAMES]


def metadata_input(info: ModelInfo) -> tuple[str, str, list[int]]:
    """The one input: a batch of exactly one of the model's shape, ``[1, C, H, W]`` (the
    batch axis may also be left out); FP32 values, or UINT8 pixels."""
    return INPUT_NAME, "FP32", [1, *info.input_shape]


def model_config(info: ModelInfo) -> dict:
    """A Triton-style config of the smoothed model as OIP clients see it, in Triton's REST
    (JSON) form; the gRPC ``ModelConfig`` is this, parsed into ``inference.ModelConfig``. One
    input with ``max_batch_size`` 1 (each request certifies one input: the batch axis is 1)
    and the output tensors. Load tools such as perf_analyzer read it before they start."""
    name, datatype, shape = metadata_input(info)
    return {
        "name": info.name, "platform": PLATFORM, "max_batch_size": 1,
        "input": [{"name": name, "data_type": CONFIG_TYPES[datatype], "dims": shape[1:]}],
        "output": [{"name": n, "data_type": CONFIG_TYPES[d], "dims": s}
                   for n, d, s in metadata_outputs(info)],
    }  # fmt: skip


def repository_control(plane, repository_name: str = ""):
    """The engine's ModelControl for the repository extension; SmoothServe has one repository
    (--model-repo), named by no name."""
    if repository_name:
        raise InvalidArgument("this server has one model repository: leave repository_name empty")
    if plane.control is None:
        raise Unavailable("this server has no model control")
    return plane.control


def check_load_parameters(parameters) -> None:
    """Triton's load may carry a config or files to load instead of the repository's: refused
    (a certified model is the one in the repository, whose config the record binds)."""
    if parameters:
        raise InvalidArgument("load parameters (a config or files to load) are not supported: "
                              "load the model as the repository holds it")  # fmt: skip

