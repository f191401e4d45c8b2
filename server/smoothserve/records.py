"""Signed certificate records: what a third party needs to check a certificate offline.

A record is canonical JSON (UTF-8, ASCII only, keys sorted, no spaces; floats in Python's
shortest round-trip form) of the certificate's inputs and outputs: the SHA-256 of the input's
bytes, the model's name, version and SHA-256, the smoothing config the answer depends on
(``config``: sigma, labels, value range, input shape and dtype, the model's noise setting) and
its SHA-256, alpha, n0, n, the counts, the procedure, its parameters and its look plan (the
first look and the cap the schedule follows from), the answer, whether the client chose the
noise seed and which generator drew the noise, the server's version and the time. The server
signs those exact bytes with Ed25519; a verifier checks the signature over the bytes it
received and only then parses them, so it never has to rebuild the canonical form (docs/api.md,
"Certificate records", is precise enough for another language). What each part binds, and what
``smoothserve-verify`` rechecks: docs/security.md.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from smoothcert.model_config import SmoothModelConfig
from smoothcert.records import (  # noqa: F401 - the record format, re-exported for the server
    ALGORITHM,
    CONFIG_FIELDS,
    RECORD_FORMAT,
    RECORD_FORMAT_V1,
    RECORD_FORMAT_V2,
    RESULT_FIELDS,
    canonical_json,
    check_signature,
    config_sha256,
    key_id,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
    smoothing_config,
)
from smoothserve_client.types import PredictResult, SigningKey

log = logging.getLogger(__name__)
@functools.cache
def server_version() -> str:
    try:
        return metadata.version("smoothserve")
    except metadata.PackageNotFoundError:
        return "unknown"


MAX_KEY_FILE_BYTES = 64 * 1024  # a PEM Ed25519 private key is about 120 bytes


def read_key_file(path: Path) -> bytes:
    """The bytes of a private key file, which must be a regular file of at most
    ``MAX_KEY_FILE_BYTES`` that only its owner may read or write (as ssh requires: fix it with
    ``chmod 600``). At most that many bytes are read, so ``/dev/zero`` cannot fill memory, and
    the file is opened without blocking, so a FIFO cannot hang start-up."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_mode & 0o077:
            raise ValueError(
                f"permissions {stat.S_IMODE(info.st_mode):04o} are too open: other users may "
                f"read the private key; run chmod 600 {path}"
            )
        data = file.read(MAX_KEY_FILE_BYTES + 1)
    if info.st_size > MAX_KEY_FILE_BYTES or len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"larger than {MAX_KEY_FILE_BYTES // 1024} KiB: not a PEM private key")
    return data


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
                return cls(load_private_key(read_key_file(Path(key_file))), persistent=True)
            except OSError as exc:
                raise ValueError(f"signing key {key_file}: {exc.strerror or exc}") from None
            except (ValueError, TypeError) as exc:
                raise ValueError(f"signing key {key_file}: {exc}") from None
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


def look_plan(result: PredictResult, first_look: int, extra: dict | None = None) -> dict:
    """What a result's look schedule follows from: the first look size (the server's
    ``--first-look``) and the cap (the n the request allowed, where every schedule ends),
    with ``extra`` (a sequential procedure's selection rule; anytime's horizon and whether a
    deadline timed its looks); fixed n and PREDICT: one look of n, first look 0."""
    if result.mode == "certify" and result.procedure != "fixed_n":
        if first_look < 1 or not result.look_schedule:
            raise ValueError("a sequential result needs its schedule and a first look >= 1")
        extra = dict(extra or {})
        cap = int(extra.pop("cap", result.look_schedule[-1]))
        return {"first_look": int(first_look), "cap": cap, **extra}
    return {"first_look": 0, "cap": int(result.n)}


def certificate_record(
    result: PredictResult,
    input_sha256: str,
    input_shape: tuple[int, ...],
    input_dtype: str,
    signer_key_id: str,
    when: datetime | None = None,
    noise_generator: str = "",
    *,
    model_config: SmoothModelConfig,
    first_look: int = 0,
    plan: dict | None = None,
) -> bytes:
    """The canonical bytes of a result's record (see the module doc); ``noise_generator``
    names what drew the noise (``noise.py``), which a replay of a seed needs;
    ``model_config`` is the served model's config, ``first_look`` the server's first look
    size (sequential procedures), ``plan`` the rest of a sequential procedure's plan
    (``look_plan``: the cap when the schedule does not end at it, the selection rule, the
    anytime horizon and timing)."""
    when = when or datetime.now(UTC)
    time = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    config = smoothing_config(model_config)
    model = {"name": result.model_name, "version": result.model_version}
    seed = {"client_chosen": result.seed is not None, "value": result.seed}
    record = {name: getattr(result, name) for name in RESULT_FIELDS}
    record.update(
        counts=list(result.counts),
        selection_counts=list(result.selection_counts),
        look_schedule=list(result.look_schedule),
        format=RECORD_FORMAT,
        config=config,
        config_sha256=config_sha256(config),
        plan=look_plan(result, first_look, plan),
        input={"sha256": input_sha256, "shape": list(input_shape), "dtype": input_dtype},
        model={**model, "sha256": result.model_sha256},
        seed={**seed, "generator": noise_generator},
        server={"version": server_version(), "time": time},
        key_id=signer_key_id,
    )
    return canonical_json(record)


