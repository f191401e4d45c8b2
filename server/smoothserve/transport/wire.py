"""Bounds of an OIP ModelInfer request checked on its protobuf wire bytes, before it is parsed.

Parsing builds every repeated field in full: a shape of 16 million dimensions becomes 16
million Python integers (gigabytes) before any check can run. This walks the wire format
instead, skipping each length-delimited field by its length, so its cost is bounded by the
number of fields it looks at (each capped) and it allocates nothing that grows with the
request. Field numbers are those of KServe's / Triton's ``grpc_service.proto``.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import InvalidArgument
from ..request import MAX_NAME_CHARS, MAX_RANK

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
# ModelInferRequest
NAME, VERSION, ID, PARAMETERS, INPUTS, OUTPUTS, RAW_CONTENTS = 1, 2, 3, 4, 5, 6, 7
# ModelInferRequest.InferInputTensor
TENSOR_NAME, TENSOR_DATATYPE, TENSOR_SHAPE, TENSOR_PARAMETERS, TENSOR_CONTENTS = 1, 2, 3, 4, 5
# InferTensorContents: the two an input of SmoothServe's datatypes may use
UINT_CONTENTS, FP32_CONTENTS = 4, 6
MAX_FIELDS = 256  # top-level fields; a valid request has a handful plus its parameters
MAX_CONTENTS_FIELDS = 64  # typed contents come packed: one field (or a few chunks)
MAX_ID_BYTES = 1024


class Field:
    __slots__ = ("number", "wire_type", "start", "end", "value")

    def __init__(self, number: int, wire_type: int, start: int, end: int, value: int) -> None:
        self.number, self.wire_type, self.start, self.end, self.value = (
            number, wire_type, start, end, value,
        )  # fmt: skip

    @property
    def length(self) -> int:
        return self.end - self.start


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise InvalidArgument("the request is not a valid protobuf message")


def fields(data: bytes, start: int, end: int, limit: int, what: str) -> Iterator[Field]:
    """The fields of the message in ``data[start:end]``; more than ``limit`` is refused."""
    pos, count = start, 0
    while pos < end:
        count += 1
        if count > limit:
            raise InvalidArgument(f"{what} has more than {limit} fields")
        key, pos = _varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = _varint(data, pos, end)
            yield Field(number, wire_type, pos, pos, value)
            continue
        if wire_type == LENGTH:
            length, pos = _varint(data, pos, end)
        elif wire_type in (FIXED64, FIXED32):
            length = 8 if wire_type == FIXED64 else 4
        else:
            raise InvalidArgument("the request is not a valid protobuf message")
        if pos + length > end:
            raise InvalidArgument("the request is not a valid protobuf message")
        yield Field(number, wire_type, pos, pos + length, 0)
        pos += length


def check_model_infer(data: bytes) -> None:
    """Refuse, before parsing, a ModelInfer request whose parsed form would grow beyond its
    bounds: names, more than one input or raw buffer, a shape of more than MAX_RANK
    dimensions, parameters or outputs beyond their caps, or typed contents other than
    packed ``uint_contents`` / ``fp32_contents``."""
    counts = {INPUTS: 0, RAW_CONTENTS: 0, OUTPUTS: 0, PARAMETERS: 0}
    for field in fields(data, 0, len(data), MAX_FIELDS, "ModelInfer"):
        if field.number in (NAME, VERSION) and field.length > 4 * MAX_NAME_CHARS:
            raise InvalidArgument(f"model name or version longer than {MAX_NAME_CHARS} characters")
        if field.number == ID and field.length > MAX_ID_BYTES:
            raise InvalidArgument(f"request id longer than {MAX_ID_BYTES} bytes")
        if field.number in counts:
            counts[field.number] += 1
        if field.number == INPUTS:
            if counts[INPUTS] > 1:
                raise InvalidArgument("ModelInfer takes one input tensor")
            _check_input(data, field)
    if counts[RAW_CONTENTS] > 1:
        raise InvalidArgument("ModelInfer takes one input: send one raw_input_contents buffer")


def _check_input(data: bytes, tensor: Field) -> None:
    dims = 0
    for field in fields(data, tensor.start, tensor.end, MAX_FIELDS, "the input tensor"):
        if field.number in (TENSOR_NAME, TENSOR_DATATYPE) and field.length > 4 * MAX_NAME_CHARS:
            raise InvalidArgument("input name or datatype too long")
        if field.number == TENSOR_SHAPE:
            # packed: up to 10 bytes a dimension; unpacked: one field each
            dims += _packed_count(data, field) if field.wire_type == LENGTH else 1
            if dims > MAX_RANK:
                raise InvalidArgument(f"input shape has more than {MAX_RANK} dimensions")
        if field.number == TENSOR_CONTENTS:
            _check_contents(data, field)


def _packed_count(data: bytes, field: Field) -> int:
    if field.length > 10 * (MAX_RANK + 1):
        return MAX_RANK + 1
    return sum(1 for byte in data[field.start : field.end] if not byte & 0x80)


def _check_contents(data: bytes, contents: Field) -> None:
    for field in fields(data, contents.start, contents.end, MAX_CONTENTS_FIELDS, "contents"):
        if field.number not in (UINT_CONTENTS, FP32_CONTENTS):
            raise InvalidArgument(
                "input contents must be uint_contents (UINT8) or fp32_contents (FP32)"
            )


__all__ = ["check_model_infer"]
