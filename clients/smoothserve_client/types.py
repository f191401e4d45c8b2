"""The API's result types, defined once for the server and the client, with their conversions
to and from the generated protobuf messages (as KServe's ``infer_type.py`` does).

The server's data plane builds a ``PredictResult`` and the transport calls ``to_proto``; the
client calls ``from_proto``. A new field means one edit here and one in ``smoothserve.proto``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, fields
from pathlib import Path

from .api.v1 import smoothserve_pb2 as pb

MODES = {"certify": pb.MODE_CERTIFY, "predict": pb.MODE_PREDICT}
MODE_NAMES = {value: name for name, value in MODES.items()}
PROCEDURES = {
    "fixed_n": pb.PROCEDURE_FIXED_N,
    "target_radius": pb.PROCEDURE_TARGET_RADIUS,
    "anytime": pb.PROCEDURE_ANYTIME,
}
PROCEDURE_NAMES = {value: name for name, value in PROCEDURES.items()}
DTYPES = {"float32": pb.DTYPE_FLOAT32, "uint8": pb.DTYPE_UINT8}
DTYPE_NAMES = {value: name for name, value in DTYPES.items()}
READY, FAILED = "READY", "FAILED"
SIGNED_RECORD_FORMAT = "smoothserve.signed-record.v1"


@dataclass(frozen=True)
class PredictResult:
    """One answer of CERTIFY or PREDICT: everything needed to recompute it from the counts."""

    prediction: int  # -1 when abstaining
    label: str
    abstain: bool
    radius: float
    p_a_lower: float
    p_value: float
    candidate: int
    counts: tuple[int, ...]
    selection_counts: tuple[int, ...]
    mode: str  # "certify" or "predict"
    n0: int
    n: int
    alpha: float
    sigma: float
    model_name: str
    model_version: str
    model_sha256: str
    server_time_seconds: float
    seed: int | None
    procedure: str = "fixed_n"  # or "target_radius", "anytime"
    target_radius: float = 0.0
    bound_alpha: float = 0.0  # the level of the bound behind p_a_lower (see the proto)
    looks: int = 0
    look_schedule: tuple[int, ...] = ()
    tolerance: float = 0.0
    sound_noise: bool = False  # floating-point-sound noise on the 1/255 lattice (security.md)
    record: bytes = b""  # the certificate record, canonical JSON (docs/api.md)
    record_signature: bytes = b""  # its Ed25519 signature
    request_id: str = ""  # the server's log lines of this request carry it
    noise_family: str = "gaussian"  # sigma is this family's scale (uniform: lambda)
    norm: str = "l2"  # the norm of the radius: "l2" (Gaussian), "l1" (uniform)

    def save_record(self, path: str | Path) -> None:
        """Write the signed certificate record to ``path`` for ``smoothserve-verify``."""
        if not self.record:
            raise ValueError("this result carries no certificate record")
        Path(path).write_text(signed_record_json(self.record, self.record_signature))

    def to_proto(self) -> pb.PredictResponse:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(mode=MODES[self.mode], procedure=PROCEDURES[self.procedure])
        return pb.PredictResponse(**values)

    @classmethod
    def from_proto(cls, message: pb.PredictResponse) -> PredictResult:
        values = {f.name: getattr(message, f.name) for f in fields(cls)}
        values.update(
            counts=tuple(message.counts),
            selection_counts=tuple(message.selection_counts),
            mode=MODE_NAMES.get(message.mode, "unknown"),
            seed=message.seed if message.HasField("seed") else None,
            procedure=PROCEDURE_NAMES.get(message.procedure, "unknown"),
            look_schedule=tuple(message.look_schedule),
        )
        return cls(**values)


@dataclass(frozen=True)
class ModelInfo:
    """A served model, or one that failed to load (``state`` FAILED, with the reason)."""

    name: str
    version: str = ""
    available_versions: tuple[str, ...] = ()
    sha256: str = ""
    sigma: float = 0.0
    labels: tuple[str, ...] = ()
    input_shape: tuple[int, ...] = ()
    value_range: tuple[float, float] = (0.0, 0.0)
    backend: str = ""
    platform: str = ""
    max_batch_size: int = 0
    default_n0: int = 0
    default_n: int = 0
    default_alpha: float = 0.0
    max_n: int = 0
    state: str = READY
    failure_reason: str = ""
    max_alpha: float = 0.0
    min_n: int = 0
    batch_size: int = 0
    batch_size_source: str = ""
    noise_generator: str = ""
    noise_family: str = ""  # sigma is this family's scale
    norm: str = ""  # the norm of the radii it certifies

    def to_proto(self) -> pb.ModelInfo:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "value_range"}
        return pb.ModelInfo(**values, value_low=self.value_range[0], value_high=self.value_range[1])

    @classmethod
    def from_proto(cls, message: pb.ModelInfo) -> ModelInfo:
        names = [f.name for f in fields(cls) if f.name != "value_range"]
        values = {name: getattr(message, name) for name in names}
        values.update(
            available_versions=tuple(message.available_versions),
            labels=tuple(message.labels),
            input_shape=tuple(message.input_shape),
            value_range=(message.value_low, message.value_high),
            state=message.state or READY,
        )
        return cls(**values)


@dataclass(frozen=True)
class SigningKey:
    """The public key that signs the server's certificate records."""

    algorithm: str
    key_id: str
    public_key_pem: str
    persistent: bool

    @classmethod
    def from_proto(cls, message: pb.SigningKey) -> SigningKey:
        return cls(**{f.name: getattr(message, f.name) for f in fields(cls)})

    def to_proto(self) -> pb.SigningKey:
        return pb.SigningKey(**{f.name: getattr(self, f.name) for f in fields(self)})


def signed_record_json(record: bytes, signature: bytes) -> str:
    """The file form of a signed record: the record's exact text (the bytes that were signed)
    and the signature in base64, in a small JSON envelope."""
    envelope = {
        "format": SIGNED_RECORD_FORMAT,
        "record": record.decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return json.dumps(envelope, indent=1) + "\n"


def read_signed_record(text: str) -> tuple[bytes, bytes]:
    """(record bytes, signature) from ``signed_record_json``'s form; ValueError if malformed."""
    try:
        envelope = json.loads(text)
        if envelope.get("format") != SIGNED_RECORD_FORMAT:
            raise ValueError(f"not a {SIGNED_RECORD_FORMAT} file")
        return envelope["record"].encode("ascii"), base64.b64decode(envelope["signature"], validate=True)
    except (KeyError, TypeError, AttributeError, UnicodeEncodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a signed record: {exc}") from exc
    except base64.binascii.Error as exc:
        raise ValueError(f"the signature is not base64: {exc}") from exc
