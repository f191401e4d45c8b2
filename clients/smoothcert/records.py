"""What a signed certificate record is, for the server that writes it and the verifier that
checks it: the format's name, the fields of an answer it carries, its canonical JSON, the
smoothing config it binds and that config's hash, and the Ed25519 keys and signatures.
The server's ``records.py`` builds and signs records with these; ``smoothcert.verify`` checks
them without the server installed."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .model_config import SmoothModelConfig

# The input dtypes SmoothServe takes, by the name a record's ``input.dtype`` holds, as the bytes
# whose SHA-256 the record carries (little-endian).
INPUT_DTYPES = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}

RECORD_FORMAT = "smoothserve.certificate.v4"
# v4 changes only the target-radius test's certifying counts (the exact group-sequential
# boundary on v3's looks: ``procedures.target_radius.exact_counts``); v3 records verify under
# v3's union-bound counts (``procedures.get(name, version=3)``).
RECORD_FORMAT_V3 = "smoothserve.certificate.v3"
# v2 records: a fixed n0 for every procedure, and the anytime levels alpha / (k (k + 1)) on a
# doubling schedule; they verify under those rules (``procedures.get(name, version=2)``). v3
# adds to a sequential procedure's ``plan`` its selection rule (``selection``: first look, cap
# n0, level) and, for anytime, its ``horizon`` and whether its looks were ``timed`` by a
# deadline.
RECORD_FORMAT_V2 = "smoothserve.certificate.v2"
# v1 records bind neither the smoothing config (beyond sigma) nor the look plan; the verifier
# checks them only when asked to (``--allow-format-v1``).
RECORD_FORMAT_V1 = "smoothserve.certificate.v1"
# Each format's version number (v1 records are decided under v2's rules).
FORMAT_VERSIONS = {RECORD_FORMAT: 4, RECORD_FORMAT_V3: 3, RECORD_FORMAT_V2: 2, RECORD_FORMAT_V1: 1}
ALGORITHM = "Ed25519"
# PredictResult fields that travel in the record as they are (the rest are added or left out:
# the timing and the record itself are not part of a certificate).
RESULT_FIELDS = (
    "prediction", "label", "abstain", "radius", "p_a_lower", "p_value", "candidate", "counts",
    "selection_counts", "mode", "n0", "n", "alpha", "sigma", "procedure", "target_radius",
    "tolerance", "bound_alpha", "looks", "look_schedule", "sound_noise", "noise_family", "norm",
)  # fmt: skip


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo); ValueError if it is not one."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from unencrypted PKCS#8 PEM; ValueError if it is not one."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def canonical_json(value: dict) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


CONFIG_FIELDS = ("noise_family", "sigma", "labels", "value_range", "input_shape", "input_data_type",
                 "sound_noise")  # fmt: skip


def smoothing_config(config: SmoothModelConfig) -> dict:
    """The part of a model's ``config.pbtxt`` that an answer depends on, as the record holds
    it: the noise family and its scale ``sigma`` (the radius and its norm follow from them),
    the labels (which name the classes the counts are
    of), the value range and input shape and dtype (how an input is read and where the noise is
    added) and whether the model makes every request use sound noise. Left out, since they do
    not change an answer: names of the tensors, batch sizes, instance counts, the platform."""
    low, high = config.value_range
    return {
        "noise_family": config.noise_family,
        "sigma": float(config.sigma),
        "labels": list(config.labels),
        "value_range": [float(low), float(high)],
        "input_shape": [int(d) for d in config.input_shape],
        "input_data_type": config.input_data_type,
        "sound_noise": bool(config.sound_noise),
    }


def config_sha256(config: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of a record's ``config`` object."""
    return hashlib.sha256(canonical_json(config)).hexdigest()


def check_signature(record: bytes, signature: bytes, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(signature, record)
        return True
    except InvalidSignature:
        return False
