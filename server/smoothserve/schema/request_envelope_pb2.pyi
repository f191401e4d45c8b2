from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorOutline(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class PredictRequestOutline(_message.Message):
    __slots__ = ("model_name", "model_version", "input")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    model_name: bytes
    model_version: bytes
    input: TensorOutline
    def __init__(self, model_name: _Optional[bytes] = ..., model_version: _Optional[bytes] = ..., input: _Optional[_Union[TensorOutline, _Mapping]] = ...) -> None: ...
