"""A Predict request as every door (native gRPC, OIP gRPC, OIP REST) hands it to the data
plane, and the checks each door applies before it builds anything that grows with client data.

The rule for client values: a value outside its datatype (a UINT8 pixel of 256 or -1, a
non-integer for an integer type, a number beyond float32) is refused, never wrapped, rounded
or clipped, so a certificate is only ever made for the input the client sent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from smoothcert.procedures import CERTIFY_PROCEDURES
from smoothcert.records import INPUT_DTYPES

from .errors import InvalidArgument

CERTIFY, PREDICT = "certify", "predict"
MODES = (CERTIFY, PREDICT)
PROCEDURES = CERTIFY_PROCEDURES
FIXED_N = PROCEDURES[0]  # the default procedure
# The input datatypes, by the data plane's name; OIP's names map onto them.
DTYPES = INPUT_DTYPES
OIP_DATATYPES = {"UINT8": "uint8", "FP32": "float32"}
FLOAT32_MAX = float(np.finfo(np.float32).max)
INT64_MAX = 2**63 - 1

# Checked before anything else is read from a request, so that no error message, log line or
# copy grows with what a client sends.
MAX_NAME_CHARS = 256
MAX_VERSION_CHARS = 19  # a version is a decimal number that fits in int64
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_TENSOR_HEADER_BYTES = MAX_RANK * 11 + 16  # shape (packed or not) and dtype, on the wire
QUOTE_CHARS = 64


@dataclass(frozen=True)
class PredictInput:
    model_name: str
    model_version: str
    shape: tuple[int, ...]
    dtype: str  # "float32" or "uint8"; anything else is rejected
    data: bytes
    mode: str = CERTIFY
    n0: int | None = None
    n: int | None = None
    alpha: float | None = None
    seed: int | None = None
    procedure: str = FIXED_N
    target_radius: float | None = None
    tolerance: float | None = None
    deadline: float | None = None  # time.monotonic() by which the answer must be sent
    sound_noise: bool | None = None  # None: the model's config decides (sound_noise.py)
    arrived: float = field(default_factory=time.monotonic, compare=False)  # when it was read


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """Client data in a message: repr of at most ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def check_request_bounds(model_name: str, model_version: str, rank: int = 0) -> None:
    """The bounds a request must meet before the server copies or quotes any of it."""
    if len(model_name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"model name longer than {MAX_NAME_CHARS} characters")
    if len(model_version) > MAX_VERSION_CHARS:
        raise InvalidArgument(f"model version longer than {MAX_VERSION_CHARS} characters")
    if rank > MAX_RANK:
        raise InvalidArgument(f"input shape has {rank} dimensions; at most {MAX_RANK} are allowed")


def check_tensor_header(header_bytes: int) -> None:
    """The shape and dtype of an input take at most a few bytes on the wire; more means a
    shape of too many dimensions, refused before it is built (it may take 16x its bytes)."""
    if header_bytes > MAX_TENSOR_HEADER_BYTES:
        raise InvalidArgument(f"input shape has more than {MAX_RANK} dimensions")


def checked_shape(shape: Sequence) -> tuple[int, ...]:
    """A shape as a tuple of integers in [0, MAX_DIM], at most MAX_RANK of them."""
    if not isinstance(shape, Sequence) or isinstance(shape, str | bytes):
        raise InvalidArgument("the input's shape must be a list of integers")
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"input shape has more than {MAX_RANK} dimensions")
    if not all(is_integer(d) and 0 <= d <= MAX_DIM for d in shape):
        raise InvalidArgument(f"the input's shape must be integers in [0, {MAX_DIM}]")
    return tuple(int(d) for d in shape)


def is_integer(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def values_to_bytes(values: Sequence | np.ndarray, dtype: str) -> bytes:
    """Client values given as numbers (a JSON list, a protobuf repeated field) as the
    little-endian bytes of ``dtype``; InvalidArgument, naming the first offender's position,
    for any value the datatype does not hold exactly: a non-integer or an integer outside
    [0, 255] for uint8, a non-number or a number beyond float32's range for float32."""
    array = values if isinstance(values, np.ndarray) else _numeric_array(values)
    if dtype == "uint8":
        if array.dtype.kind not in "iu":
            raise InvalidArgument("UINT8 input values must be integers in [0, 255]")
        bad = np.flatnonzero((array < 0) | (array > 255)) if array.size else ()
        if len(bad):
            raise InvalidArgument(
                f"UINT8 input value {int(array[bad[0]])} at position {int(bad[0])} is outside "
                "[0, 255]; values are never wrapped or clipped"
            )
    elif dtype == "float32":
        if array.dtype.kind not in "iuf":
            raise InvalidArgument("FP32 input values must be numbers")
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~(np.abs(array.astype(np.float64)) <= FLOAT32_MAX))
        if len(bad):
            raise InvalidArgument(
                f"FP32 input value at position {int(bad[0])} is NaN, infinite or beyond float32"
            )
    else:
        raise InvalidArgument(f"dtype must be float32 or uint8, got {quote(dtype, 16)}")
    return array.astype(DTYPES[dtype]).tobytes()


def _numeric_array(values: Sequence) -> np.ndarray:
    """A flat int64 or float64 array of JSON-like numbers (nested lists allowed, up to
    MAX_RANK deep); anything else (bool, str, None, an int beyond int64) is refused."""
    flat: list = []
    _flatten(values, flat, 0)
    if not all(is_number(v) for v in flat):
        raise InvalidArgument("input values must be numbers (no booleans, strings or nulls)")
    if all(is_integer(v) for v in flat):
        if not all(-INT64_MAX <= v <= INT64_MAX for v in flat):
            raise InvalidArgument("an input value is an integer beyond any input datatype")
        return np.array(flat, dtype=np.int64)
    try:
        return np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer too large for a double
        raise InvalidArgument("an input value is beyond float32's range") from None


def _flatten(values: Sequence, out: list, depth: int) -> None:
    if not isinstance(values, list | tuple):
        raise InvalidArgument("input data must be a list of numbers")
    if depth > MAX_RANK:
        raise InvalidArgument(f"input data nested deeper than {MAX_RANK} levels")
    for value in values:
        if isinstance(value, list | tuple):
            _flatten(value, out, depth + 1)
        else:
            out.append(value)


def option_integer(name: str, value: object, low: int = 0, high: int = INT64_MAX) -> int:
    if not is_integer(value) or not low <= value <= high:
        raise InvalidArgument(f"parameter {name} must be an integer in [{low}, {high}]")
    return int(value)


def option_number(name: str, value: object) -> float:
    """A number option as a float; a number too large for a double is refused, not inf."""
    if not is_number(value):
        raise InvalidArgument(f"parameter {name} must be a number")
    try:
        return float(value)
    except OverflowError:
        raise InvalidArgument(f"parameter {name} is too large") from None


def checked_seed(seed: object) -> int | None:
    """A seed is an integer in [0, 2^64) (the native API's uint64)."""
    if seed is None:
        return None
    return option_integer("seed", seed, 0, 2**64 - 1)
