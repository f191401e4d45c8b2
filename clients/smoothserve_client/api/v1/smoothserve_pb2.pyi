from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_CERTIFY: _ClassVar[Mode]
    MODE_PREDICT: _ClassVar[Mode]

class Procedure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROCEDURE_FIXED_N: _ClassVar[Procedure]
    PROCEDURE_TARGET_RADIUS: _ClassVar[Procedure]
    PROCEDURE_ANYTIME: _ClassVar[Procedure]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
MODE_CERTIFY: Mode
MODE_PREDICT: Mode
PROCEDURE_FIXED_N: Procedure
PROCEDURE_TARGET_RADIUS: Procedure
PROCEDURE_ANYTIME: Procedure
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_UINT8: DType

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PredictOptions(_message.Message):
    __slots__ = ("mode", "n0", "n", "alpha", "seed", "procedure", "target_radius", "tolerance", "sound_noise")
    MODE_FIELD_NUMBER: _ClassVar[int]
    N0_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PROCEDURE_FIELD_NUMBER: _ClassVar[int]
    TARGET_RADIUS_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    SOUND_NOISE_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    n0: int
    n: int
    alpha: float
    seed: int
    procedure: Procedure
    target_radius: float
    tolerance: float
    sound_noise: bool
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ..., n0: _Optional[int] = ..., n: _Optional[int] = ..., alpha: _Optional[float] = ..., seed: _Optional[int] = ..., procedure: _Optional[_Union[Procedure, str]] = ..., target_radius: _Optional[float] = ..., tolerance: _Optional[float] = ..., sound_noise: bool = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "input", "options")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    input: Tensor
    options: PredictOptions
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ..., options: _Optional[_Union[PredictOptions, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("prediction", "label", "abstain", "radius", "p_a_lower", "p_value", "candidate", "counts", "selection_counts", "mode", "n0", "n", "alpha", "sigma", "model_name", "model_version", "model_sha256", "server_time_seconds", "seed", "procedure", "target_radius", "bound_alpha", "looks", "look_schedule", "tolerance", "record", "record_signature", "sound_noise", "request_id", "noise_family", "norm")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_FIELD_NUMBER: _ClassVar[int]
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    P_A_LOWER_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_COUNTS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    N0_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PROCEDURE_FIELD_NUMBER: _ClassVar[int]
    TARGET_RADIUS_FIELD_NUMBER: _ClassVar[int]
    BOUND_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LOOKS_FIELD_NUMBER: _ClassVar[int]
    LOOK_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    RECORD_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SOUND_NOISE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NOISE_FAMILY_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    prediction: int
    label: str
    abstain: bool
    radius: float
    p_a_lower: float
    p_value: float
    candidate: int
    counts: _containers.RepeatedScalarFieldContainer[int]
    selection_counts: _containers.RepeatedScalarFieldContainer[int]
    mode: Mode
    n0: int
    n: int
    alpha: float
    sigma: float
    model_name: str
    model_version: str
    model_sha256: str
    server_time_seconds: float
    seed: int
    procedure: Procedure
    target_radius: float
    bound_alpha: float
    looks: int
    look_schedule: _containers.RepeatedScalarFieldContainer[int]
    tolerance: float
    record: bytes
    record_signature: bytes
    sound_noise: bool
    request_id: str
    noise_family: str
    norm: str
    def __init__(self, prediction: _Optional[int] = ..., label: _Optional[str] = ..., abstain: bool = ..., radius: _Optional[float] = ..., p_a_lower: _Optional[float] = ..., p_value: _Optional[float] = ..., candidate: _Optional[int] = ..., counts: _Optional[_Iterable[int]] = ..., selection_counts: _Optional[_Iterable[int]] = ..., mode: _Optional[_Union[Mode, str]] = ..., n0: _Optional[int] = ..., n: _Optional[int] = ..., alpha: _Optional[float] = ..., sigma: _Optional[float] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., model_sha256: _Optional[str] = ..., server_time_seconds: _Optional[float] = ..., seed: _Optional[int] = ..., procedure: _Optional[_Union[Procedure, str]] = ..., target_radius: _Optional[float] = ..., bound_alpha: _Optional[float] = ..., looks: _Optional[int] = ..., look_schedule: _Optional[_Iterable[int]] = ..., tolerance: _Optional[float] = ..., record: _Optional[bytes] = ..., record_signature: _Optional[bytes] = ..., sound_noise: bool = ..., request_id: _Optional[str] = ..., noise_family: _Optional[str] = ..., norm: _Optional[str] = ...) -> None: ...

class GetSigningKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SigningKey(_message.Message):
    __slots__ = ("algorithm", "key_id", "public_key_pem", "persistent")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    key_id: str
    public_key_pem: str
    persistent: bool
    def __init__(self, algorithm: _Optional[str] = ..., key_id: _Optional[str] = ..., public_key_pem: _Optional[str] = ..., persistent: bool = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "available_versions", "sha256", "sigma", "labels", "input_shape", "value_low", "value_high", "backend", "platform", "max_batch_size", "default_n0", "default_n", "default_alpha", "max_n", "state", "failure_reason", "max_alpha", "min_n", "batch_size", "batch_size_source", "noise_generator", "noise_family", "norm")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_LOW_FIELD_NUMBER: _ClassVar[int]
    VALUE_HIGH_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_N0_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_N_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ALPHA_FIELD_NUMBER: _ClassVar[int]
    MAX_N_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    MAX_ALPHA_FIELD_NUMBER: _ClassVar[int]
    MIN_N_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    NOISE_GENERATOR_FIELD_NUMBER: _ClassVar[int]
    NOISE_FAMILY_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    available_versions: _containers.RepeatedScalarFieldContainer[str]
    sha256: str
    sigma: float
    labels: _containers.RepeatedScalarFieldContainer[str]
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    value_low: float
    value_high: float
    backend: str
    platform: str
    max_batch_size: int
    default_n0: int
    default_n: int
    default_alpha: float
    max_n: int
    state: str
    failure_reason: str
    max_alpha: float
    min_n: int
    batch_size: int
    batch_size_source: str
    noise_generator: str
    noise_family: str
    norm: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., available_versions: _Optional[_Iterable[str]] = ..., sha256: _Optional[str] = ..., sigma: _Optional[float] = ..., labels: _Optional[_Iterable[str]] = ..., input_shape: _Optional[_Iterable[int]] = ..., value_low: _Optional[float] = ..., value_high: _Optional[float] = ..., backend: _Optional[str] = ..., platform: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., default_n0: _Optional[int] = ..., default_n: _Optional[int] = ..., default_alpha: _Optional[float] = ..., max_n: _Optional[int] = ..., state: _Optional[str] = ..., failure_reason: _Optional[str] = ..., max_alpha: _Optional[float] = ..., min_n: _Optional[int] = ..., batch_size: _Optional[int] = ..., batch_size_source: _Optional[str] = ..., noise_generator: _Optional[str] = ..., noise_family: _Optional[str] = ..., norm: _Optional[str] = ...) -> None: ...
