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
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from smoothserve_client.types import ModelInfo, PredictResult

from ..dataplane import CERTIFY, PREDICT, PROCEDURES, PredictInput, check_request_bounds
from ..errors import InvalidArgument

PLATFORM = "smoothserve"
INPUT_NAME = "input"
DATATYPES = {"UINT8": "uint8", "FP32": "float32"}
OPTION_TYPES = {"mode": str, "procedure": str, "n0": int, "n": int, "seed": int,
                "alpha": float, "target_radius": float, "tolerance": float,
                "sound_noise": bool}  # fmt: skip


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


def to_input(
    model_name: str,
    model_version: str,
    datatype: str,
    shape: list[int],
    data: bytes,
    parameters: Mapping[str, object],
    seconds_left: float | None = None,
) -> PredictInput:
    """A ModelInfer request as the data plane's input; a leading batch axis of 1 is dropped."""
    check_request_bounds(model_name, model_version, len(shape))
    if datatype not in DATATYPES:
        raise InvalidArgument(f"input datatype must be UINT8 or FP32, got {datatype[:16]!r}")
    if len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    options = {}
    for name, value in parameters.items():
        kind = OPTION_TYPES.get(name)
        if kind is None:
            continue  # other parameters (OIP's own, tracing) are not certification options
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidArgument(f"parameter {name} must be an integer")
        if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidArgument(f"parameter {name} must be a number")
        if kind is bool and not isinstance(value, bool):
            raise InvalidArgument(f"parameter {name} must be a boolean")
        if kind is str and not isinstance(value, str):
            raise InvalidArgument(f"parameter {name} must be a string")
        options[name] = kind(value)
    mode = options.pop("mode", CERTIFY)
    if mode not in (CERTIFY, PREDICT):
        raise InvalidArgument(f"parameter mode must be certify or predict, got {mode[:16]!r}")
    procedure = options.pop("procedure", PROCEDURES[0])
    if procedure not in PROCEDURES:
        raise InvalidArgument(f"parameter procedure must be one of {', '.join(PROCEDURES)}")
    return PredictInput(
        model_name=model_name, model_version=model_version, shape=tuple(shape),
        dtype=DATATYPES[datatype], data=data, mode=mode, procedure=procedure,
        deadline=None if seconds_left is None else time.monotonic() + seconds_left, **options,
    )  # fmt: skip


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
    return [
        ("prediction", "INT32", [1]), ("abstain", "BOOL", [1]), ("radius", "FP64", [1]),
        ("p_a_lower", "FP64", [1]), ("p_value", "FP64", [1]), ("candidate", "INT32", [1]),
        ("counts", "INT64", [len(info.labels)]), ("label", "BYTES", [1]),
    ]  # fmt: skip


def metadata_input(info: ModelInfo) -> tuple[str, str, list[int]]:
    """The one input: a batch of 1 (or none) of the model's shape; UINT8 pixels or FP32."""
    return INPUT_NAME, "FP32", [-1, *info.input_shape]
