"""``smoothserve-verify``: check a saved certificate record offline.

    smoothserve-verify record.json --public-key server.pub [--model model.onnx] [--input x.npy]

Checks, in order: the Ed25519 signature over the record's exact bytes (with a public key the
verifier trusts, never one carried by the record); the answer recomputed from the counts with
the project's pure functions (``certify.py``, ``sequential.py``); and, when given, the SHA-256
of the model file and of the input. A record made from a client-chosen seed is reported as a
replay: the client could have tried seeds until one certified, so it is reproducible evidence,
not an independent certificate.

Exit status: 0 valid, 1 invalid, 2 usage error, 3 valid but a replay (client-chosen seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from smoothserve_client.types import read_signed_record

from . import certify, sequential
from .records import RECORD_FORMAT, check_signature, key_id, load_public_key

VALID, INVALID, USAGE, REPLAY = 0, 1, 2, 3
DTYPES = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}


def close(a: float, b: float) -> bool:
    """Equal up to the last digits a different SciPy build may change."""
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def recompute(record: dict) -> list[str]:
    """Problems found recomputing the record's answer from its counts (none: it holds).

    The same pure functions as the server: CERTIFY (fixed n), the target-radius and anytime
    looks (sequential), PREDICT."""
    problems: list[str] = []
    counts = np.asarray(record["counts"], dtype=np.int64)
    selection = np.asarray(record["selection_counts"], dtype=np.int64)
    n, n0, alpha, sigma = record["n"], record["n0"], record["alpha"], record["sigma"]
    if counts.sum() != n or (counts < 0).any():
        problems.append(f"the counts sum to {counts.sum()}, not n = {n}")
    if record["mode"] == "certify" and selection.sum() != n0:
        problems.append(f"the selection counts sum to {selection.sum()}, not n0 = {n0}")
    if problems:
        return problems
    if record["mode"] == "predict":
        expected = certify.predict(counts, alpha)
        radius, p_a_lower, p_value = 0.0, 0.0, expected.p_value
        prediction, candidate = expected.prediction, expected.candidate
    elif record["procedure"] == sequential.FIXED_N:
        expected = certify.certify(selection, counts, sigma, alpha)
        radius, p_a_lower, p_value = expected.radius, expected.p_a_lower, 0.0
        prediction, candidate = expected.prediction, expected.candidate
    else:
        candidate = int(np.argmax(selection))
        look = sequential_look(record, int(counts[candidate]), problems)
        if look is None:
            return problems
        certified = sequential.certified(record["procedure"], look)
        prediction = candidate if certified else certify.ABSTAIN
        radius = look.radius if certified else 0.0
        p_a_lower, p_value = look.p_a_lower, 0.0
        if not close(look.look_alpha, record["bound_alpha"]):
            problems.append(f"bound_alpha {record['bound_alpha']} should be {look.look_alpha}")
    for name, value in (("prediction", prediction), ("candidate", candidate)):
        if record[name] != value:
            problems.append(f"{name} {record[name]} should be {value}")
    if record["abstain"] != (prediction == certify.ABSTAIN):
        problems.append(f"abstain {record['abstain']} does not match the prediction")
    for name, value in (("radius", radius), ("p_a_lower", p_a_lower), ("p_value", p_value)):
        if not close(record[name], value):
            problems.append(f"{name} {record[name]} should be {value}")
    return problems


def sequential_look(record: dict, count_a: int, problems: list[str]) -> sequential.Look | None:
    """The last look of a sequential record, recomputed; None (with a problem) if the record's
    schedule and sample count do not fit together."""
    schedule, looks, n = record["look_schedule"], record["looks"], record["n"]
    if not 1 <= looks <= len(schedule) or schedule[looks - 1] != n:
        problems.append(f"look {looks} of schedule {schedule} does not hold n = {n} samples")
        return None
    if record["procedure"] == sequential.TARGET:
        return sequential.target_radius_look(
            count_a, n, looks, tuple(schedule), record["target_radius"], record["sigma"],
            record["alpha"],
        )  # fmt: skip
    if record["procedure"] == sequential.ANYTIME:
        return sequential.anytime_look(
            count_a, n, looks, record["sigma"], record["alpha"], record["tolerance"]
        )
    problems.append(f"unknown procedure {record['procedure']!r}")
    return None


def input_sha256(path: Path, dtype: str) -> str:
    """SHA-256 of an input as it was sent: a ``.npy`` file's array (in the record's dtype,
    little-endian, C order), or any other file's raw bytes."""
    if path.suffix != ".npy":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    array = np.load(path, allow_pickle=False)
    want = DTYPES.get(dtype)
    if want is None or array.dtype.kind != want.kind or array.dtype.itemsize != want.itemsize:
        raise ValueError(f"{path} holds {array.dtype}; the record's input is {dtype}")
    return hashlib.sha256(np.ascontiguousarray(array, dtype=want).tobytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smoothserve-verify", description="Check a saved SmoothServe certificate record.",
        epilog="Exit status: 0 valid, 1 invalid, 2 usage error, 3 valid replay (client seed).",
    )  # fmt: skip
    parser.add_argument("record", type=Path, help="a record saved by the client (JSON)")
    parser.add_argument("--public-key", type=Path, action="append", required=True,
                        help="PEM public key of a server you trust; repeat for rotated keys")  # fmt: skip
    parser.add_argument("--model", type=Path, help="the model file, to check its SHA-256")
    parser.add_argument("--input", type=Path, help="the input (.npy, or the raw bytes sent)")
    args = parser.parse_args(argv)
    try:
        record_bytes, signature = read_signed_record(args.record.read_text())
        keys = {key_id(k): k for k in (load_public_key(p.read_bytes()) for p in args.public_key)}
    except (OSError, ValueError) as exc:
        print(f"smoothserve-verify: {exc}", file=sys.stderr)
        return USAGE
    report, valid = [], True

    def check(ok: bool, line: str) -> None:
        nonlocal valid
        valid = valid and ok
        report.append(("ok      " if ok else "FAILED  ") + line)

    record = json.loads(record_bytes)
    signer = record.get("key_id", "")
    key = keys.get(signer)
    check(key is not None and check_signature(record_bytes, signature, key),
          f"signature by key {signer}" + ("" if key else " (not among the trusted keys)"))  # fmt: skip
    if record.get("format") != RECORD_FORMAT:
        check(False, f"format {record.get('format')!r}, expected {RECORD_FORMAT}")
    else:
        problems = recompute(record)
        check(not problems, "answer recomputed from the counts" + "".join(
            f"\n          {p}" for p in problems))  # fmt: skip
    if args.model:
        digest = hashlib.sha256(args.model.read_bytes()).hexdigest()
        check(digest == record["model"]["sha256"], f"model file {args.model} SHA-256")
    if args.input:
        try:
            digest = input_sha256(args.input, record["input"]["dtype"])
        except ValueError as exc:
            digest = f"({exc})"
        check(digest == record["input"]["sha256"], f"input {args.input} SHA-256")
    replay = bool(record.get("seed", {}).get("client_chosen"))
    summary = (f"{record['model']['name']} v{record['model']['version']}: "
               + ("abstain" if record["abstain"] else
                  f"class {record['prediction']} ({record['label']}), radius {record['radius']:.4g}")
               + f", {record['procedure']}, alpha {record['alpha']}, at {record['server']['time']}")  # fmt: skip
    print(summary)
    print("\n".join(report))
    if not valid:
        print("INVALID")
        return INVALID
    if replay:
        print(f"VALID REPLAY: the client chose the noise seed ({record['seed']['value']}); the "
              "record reproduces, but is not an independent certificate")  # fmt: skip
        return REPLAY
    print("VALID")
    return VALID


if __name__ == "__main__":
    sys.exit(main())
