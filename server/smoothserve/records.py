"""Signed certificate records: what a third party needs to check a certificate offline.

A record is canonical JSON (UTF-8, ASCII only, keys sorted, no spaces; floats in Python's
shortest round-trip form) of the certificate's inputs and outputs: the SHA-256 of the input's
bytes, the model's name, version and SHA-256, sigma, alpha, n0, n, the counts, the procedure
and its parameters, the answer, whether the client chose the noise seed, the server's version
and the time. The server signs those exact bytes with Ed25519; a verifier checks the
signature over the bytes it received and only then parses them, so it never has to rebuild
the canonical form (docs/api.md, "Certificate records", is precise enough for another
language).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from smoothserve_client.types import PredictResult, SigningKey

log = logging.getLogger(__name__)
RECORD_FORMAT = "smoothserve.certificate.v1"
ALGORITHM = "Ed25519"
# PredictResult fields that travel in the record as they are (the rest are added or left out:
# the timing and the record itself are not part of a certificate).
RESULT_FIELDS = (
    "prediction", "label", "abstain", "radius", "p_a_lower", "p_value", "candidate", "counts",
    "selection_counts", "mode", "n0", "n", "alpha", "sigma", "procedure", "target_radius",
    "tolerance", "bound_alpha", "looks", "look_schedule", "sound_noise",
)  # fmt: skip


@functools.cache
def server_version() -> str:
    try:
        return metadata.version("smoothserve")
    except metadata.PackageNotFoundError:
        return "unknown"


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


class Signer:
    """Signs records with one Ed25519 key: a configured one, or one made for this process."""

    def __init__(self, key: Ed25519PrivateKey, persistent: bool) -> None:
        self._key = key
        self.persistent = persistent
        self.key_id = key_id(key.public_key())

    @classmethod
    def from_settings(cls, key_file: Path | None, key_pem: str) -> Signer:
        """The key of ``key_file`` or ``key_pem``; a fresh key (with a warning) if neither."""
        if key_file is not None and key_pem:
            raise ValueError("set the signing key as a file or as PEM text, not both")
        if key_file is not None:
            try:
                return cls(load_private_key(Path(key_file).read_bytes()), persistent=True)
            except (OSError, ValueError, TypeError) as exc:
                raise ValueError(f"signing key {key_file}: {exc}") from exc
        if key_pem:
            try:
                return cls(load_private_key(key_pem.encode()), persistent=True)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"signing key (PEM text): {exc}") from exc
        signer = cls(Ed25519PrivateKey.generate(), persistent=False)
        log.warning(
            "no --signing-key: records are signed with key %s, made for this process only; "
            "configure a key so records stay verifiable after a restart", signer.key_id,
        )  # fmt: skip
        return signer

    def signing_key(self) -> SigningKey:
        return SigningKey(ALGORITHM, self.key_id, public_key_pem(self._key.public_key()),
                          self.persistent)  # fmt: skip

    def sign(self, record: bytes) -> bytes:
        return self._key.sign(record)


def canonical_json(value: dict) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def certificate_record(
    result: PredictResult,
    input_sha256: str,
    input_shape: tuple[int, ...],
    input_dtype: str,
    signer_key_id: str,
    when: datetime | None = None,
    noise_generator: str = "",
) -> bytes:
    """The canonical bytes of a result's record (see the module doc); ``noise_generator``
    names what drew the noise (``noise.py``), which a replay of a seed needs."""
    when = when or datetime.now(UTC)
    record = {name: getattr(result, name) for name in RESULT_FIELDS}
    record.update(
        counts=list(result.counts),
        selection_counts=list(result.selection_counts),
        look_schedule=list(result.look_schedule),
        format=RECORD_FORMAT,
        input={"sha256": input_sha256, "shape": list(input_shape), "dtype": input_dtype},
        model={"name": result.model_name, "version": result.model_version,
               "sha256": result.model_sha256},  # fmt: skip
        seed={"client_chosen": result.seed is not None, "value": result.seed,
              "generator": noise_generator},  # fmt: skip
        server={"version": server_version(),
                "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z")},  # fmt: skip
        key_id=signer_key_id,
    )
    return canonical_json(record)


def check_signature(record: bytes, signature: bytes, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(signature, record)
        return True
    except InvalidSignature:
        return False
