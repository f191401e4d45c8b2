#!/usr/bin/env python
"""Fuzz a live server with random and malformed requests.

    .venv/bin/python scripts/fuzz.py --count 10000

Starts its own loopback server (a generated (1, 8, 8) linear model, --max-n 1000) unless
--address is given. Sends ``--count`` requests: structurally random PredictRequests (odd
shapes, dtypes, byte lengths, NaN/Inf, out-of-range values, n/n0/alpha/seed at and past their
limits, unknown enum values), mutated serialisations of valid requests (bit flips, truncation,
splices), raw random bytes through a generic ``channel.unary_unary`` with identity
serialisers, to every method including health and an unknown one, oversized messages, and
huge fields within the size limit (shapes of up to a million dimensions, packed or not,
names and versions of up to 900 KB). Passes when no call returns UNKNOWN, INTERNAL or any
status a bad request should not cause (UNAVAILABLE or DEADLINE_EXCEEDED would mean a crash or
a hang), no error message is longer than 1,000 characters, the server is still running, and
a valid request is answered at the end. Prints a JSON report with the server's peak RSS;
exit status 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL, SHAPE = "fuzz", (1, 8, 8)
PREDICT = "/smoothserve.v1.SmoothServe/Predict"
METHODS = [
    PREDICT,
    "/smoothserve.v1.SmoothServe/ListModels",
    "/smoothserve.v1.SmoothServe/GetModelInfo",
    "/grpc.health.v1.Health/Check",
    "/smoothserve.v1.SmoothServe/NoSuchMethod",
]
ACCEPTABLE = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}
SERVER_ARGS = ["--max-n", "1000", "--max-n0", "100", "--default-n", "100", "--default-n0", "10",
               "--max-samples-in-flight", "200000",
               "--max-message-bytes", str(1 << 20), "--batch-size", "256"]  # fmt: skip
INTS = [0, 1, -1, 2, 8, 64, 100, 101, 999, 1000, 1001, 2**31 - 1, 2**31, 2**62, 2**63 - 1, -(2**63)]
FLOATS = [0.0, -0.0, 0.5, 1.0, -1.0, 1.0000001, 1e-45, 1e30, -1e30, math.inf, -math.inf, math.nan]
ALPHAS = [0.001, 0.1, 0.4999999, 0.5, 0.0, -0.0, 1e-300, 1.0, -0.1, math.inf, math.nan, 5e-324]


def pb():
    from smoothserve_client.api.v1 import smoothserve_pb2

    return smoothserve_pb2


def valid_request(rng: random.Random) -> bytes:
    m = pb()
    data = np.float32([rng.random() for _ in range(64)]).tobytes()
    options = m.PredictOptions(mode=rng.choice([0, 1]), n0=rng.randint(1, 20), n=rng.randint(1, 50))
    request = m.PredictRequest(
        model_name=MODEL, input=m.Tensor(shape=list(SHAPE), dtype=1, data=data), options=options
    )
    return request.SerializeToString()


def _data(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.choice([0, 1, 63, 64, 255, 256, 257, rng.randrange(2000)]))
    if kind == 1:  # the right length for float32, with hostile values
        return struct.pack("<64f", *(rng.choice(FLOATS + [rng.random()]) for _ in range(64)))
    if kind == 2:
        return bytes(rng.randrange(256) for _ in range(64))  # right length for uint8
    if kind == 3:
        return np.float32([rng.uniform(-2, 3) for _ in range(64)]).tobytes()
    return b""


def random_request(rng: random.Random) -> bytes:
    m = pb()
    shape = rng.choice(
        [list(SHAPE), [], [64], [8, 8], [1, 8, 8, 1], [0, 8, 8], [-1, 8, 8], [2**62, 2**62, 4],
         [rng.choice(INTS) for _ in range(rng.randrange(7))]]
    )  # fmt: skip
    request = m.PredictRequest(
        model_name=rng.choice([MODEL, MODEL, "", "nope", "../" * 20, "\u00e9\u0000x", "a" * 5000]),
        model_version=rng.choice(["", "", "1", "2", "0", "-1", "01", "latest", "\u2603"]),
        input=m.Tensor(shape=shape, dtype=rng.choice([0, 1, 2, 3, -7, 2**31 - 1]), data=_data(rng)),
    )
    options = request.options
    options.mode = rng.choice([0, 1, 2, -1, 2**31 - 1])
    for name, pool in (("n0", INTS), ("n", INTS)):
        if rng.random() < 0.8:
            setattr(options, name, rng.choice([*pool, rng.randint(1, 200)]))
    if rng.random() < 0.7:
        options.alpha = rng.choice([*ALPHAS, rng.random()])
    if rng.random() < 0.3:
        options.seed = rng.choice([0, 1, 2**64 - 1, rng.getrandbits(64)])
    return request.SerializeToString()


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        if op == 0 and data:  # flip a bit
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif op == 2:  # splice in random bytes
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randint(1, 16))
        else:  # duplicate a slice
            i = rng.randrange(len(data) + 1)
            data[i:i] = data[i : i + rng.randint(1, 32)]
    return bytes(data)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def huge_fields(rng: random.Random) -> tuple[str, bytes]:
    """A request under the size limit whose fields would be costly to copy or quote."""
    m = pb()
    budget = (1 << 20) - 4096
    kind = rng.choice(["rank", "rank_unpacked", "name", "version", "both"])
    request = m.PredictRequest(model_name=MODEL, input=m.Tensor(shape=list(SHAPE), dtype=1))
    if kind in ("name", "both"):
        request.model_name = "n" * rng.choice([300, 9000, budget // (2 if kind == "both" else 1)])
    if kind in ("version", "both"):
        request.model_version = "9" * rng.choice([20, 9000, budget // 2])
    if kind == "rank":
        del request.input.shape[:]
        request.input.shape.extend([1] * rng.choice([9, 10_000, budget]))
    data = request.SerializeToString()
    if kind == "rank_unpacked":  # field 1 as separate varints: legal, and never packed
        tensor = b"\x08\x01" * rng.choice([9, 10_000, budget // 2]) + b"\x10\x01"
        data = b"\x0a" + varint(len(MODEL)) + MODEL.encode() + b"\x1a" + varint(len(tensor)) + tensor
    return kind, data


def make_case(rng: random.Random) -> tuple[str, str, bytes]:
    """(kind, method, request bytes)."""
    roll = rng.random()
    if roll < 0.35:
        return "random_request", PREDICT, random_request(rng)
    if roll < 0.60:
        return "mutated", PREDICT, mutate(valid_request(rng), rng)
    if roll < 0.70:
        return "valid", PREDICT, valid_request(rng)
    if roll < 0.75:
        kind, data = huge_fields(rng)
        return f"huge_{kind}", PREDICT, data
    if roll < 0.95:
        method = rng.choice(METHODS)
        return "raw_bytes", method, rng.randbytes(rng.choice([0, 1, 2, 5, 17, 100, rng.randrange(3000)]))
    return "oversized", PREDICT, b"\x1a" + rng.randbytes((1 << 20) + rng.randint(1, 4096))


def fuzz(address: str, count: int, seed: int, workers: int = 8) -> dict:
    rng = random.Random(seed)
    cases = [make_case(rng) for _ in range(count)]
    codes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    failures: list[dict] = []
    started = time.monotonic()
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 1 << 22)]) as ch:
        calls: dict[str, Callable] = {m: ch.unary_unary(m) for m in METHODS}  # identity (de)serialisers

        longest_details = 0

        def send(case: tuple[str, str, bytes]) -> tuple[str, str, str]:
            nonlocal longest_details
            kind, method, payload = case
            try:
                calls[method](payload, timeout=30)
                return kind, method, "OK"
            except grpc.RpcError as error:
                longest_details = max(longest_details, len(error.details() or ""))
                return kind, method, error.code().name

        with ThreadPoolExecutor(workers) as pool:
            for (kind, method, code), case in zip(pool.map(send, cases), cases, strict=True):
                codes[code] += 1
                by_kind.setdefault(kind, Counter())[code] += 1
                unknown_method = method.endswith("NoSuchMethod") and code == "UNIMPLEMENTED"
                if code not in ACCEPTABLE and not unknown_method:
                    failures.append({"kind": kind, "method": method, "code": code,
                                     "request_hex": case[2][:200].hex()})  # fmt: skip
        final_ok = check_valid(ch)
    return {
        "requests": count,
        "seconds": round(time.monotonic() - started, 1),
        "codes": dict(codes),
        "by_kind": {k: dict(v) for k, v in by_kind.items()},
        "failures": len(failures),
        "longest_error_details": longest_details,
        "failure_examples": failures[:20],
        "final_valid_request_ok": final_ok,
    }


def check_valid(channel: grpc.Channel) -> bool:
    m = pb()
    image = np.full(SHAPE, 0.8, np.float32).tobytes()
    request = m.PredictRequest(
        model_name=MODEL,
        input=m.Tensor(shape=list(SHAPE), dtype=1, data=image),
        options=m.PredictOptions(n0=10, n=100),
    )
    call = channel.unary_unary(
        PREDICT, request_serializer=m.PredictRequest.SerializeToString,
        response_deserializer=m.PredictResponse.FromString,
    )  # fmt: skip
    response = call(request, timeout=30)
    return response.prediction == 1 and sum(response.counts) == 100


def write_repo(root: Path) -> Path:
    from smoothserve_dev.models import write_linear_model

    write_linear_model(root / "repo", MODEL, np.full(64, 1 / 8), -4.0, 0.25, SHAPE)
    return root / "repo"


def run(count: int, seed: int, address: str | None = None, workers: int = 8) -> dict:
    if address:
        return fuzz(address, count, seed, workers)
    from smoothserve_dev.testing import ServerProcess

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp, ServerProcess(
        write_repo(Path(tmp)), SERVER_ARGS
    ) as server:
        report = fuzz(server.address, count, seed, workers)
        report["server_alive_after"] = server.process.poll() is None
        report["server_peak_rss_mib"] = peak_rss_mib(server.process.pid)
        report["server_exit_code"] = server.stop()
        report["tracebacks_in_server_log"] = server.log().count("Traceback")
    return report


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return math.nan


def passed(report: dict) -> bool:
    return (
        report["failures"] == 0
        and report["longest_error_details"] <= 1000
        and report["final_valid_request_ok"]
        and report.get("server_alive_after", True)
        and report.get("tracebacks_in_server_log", 0) == 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--address", help="an existing server serving model 'fuzz' (1, 8, 8)")
    args = parser.parse_args(argv)
    report = run(args.count, args.seed, args.address, args.workers)
    print(json.dumps(report, indent=1))
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
