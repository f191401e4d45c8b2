#!/usr/bin/env python
"""Fuzz a live server with random and malformed requests.

    .venv/bin/python scripts/fuzz.py --count 10000                  # every door
    .venv/bin/python scripts/fuzz.py --count 10000 --doors native   # smoothserve.v1 only

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

The Open Inference Protocol doors get the same treatment (``--doors``, default all three):
over gRPC, structurally random ModelInferRequests (odd datatypes and shapes, typed contents
outside their datatype, raw and typed contents together, parameters of every type), mutated
serialisations, huge shapes packed and unpacked, raw bytes to every OIP method; over REST, a
structural JSON fuzz (any node of a valid body replaced by a random JSON value, keys dropped,
values outside the datatype, JSON nested 100,000 deep, huge integers, a wrong or lying
Content-Encoding or Inference-Header-Content-Length, random bytes, unknown routes). There a
pass means no 5xx, every infer error a JSON ``{"error": ...}`` body, no connection dropped.
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
DOORS = ("native", "oip_grpc", "rest")
SERVER_ARGS = ["--http-port", "0", "--max-n", "1000", "--max-n0", "100", "--default-n", "100", "--default-n0", "10",
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


# -- the Open Inference Protocol doors -------------------------------------------------------

OIP_SERVICE = "/inference.GRPCInferenceService/"
OIP_METHODS = [OIP_SERVICE + m for m in ("ModelInfer", "ModelMetadata", "ModelReady",
                                         "ModelConfig", "ServerMetadata", "NoSuchMethod")]  # fmt: skip
JSON_ATOMS = [None, True, False, 0, -1, 256, 255, 0.7, 1e39, -1e39, 2**64, 10**400, "", "x",
              "UINT8", "FP32", "NaN", [], {}, [1], {"a": 1}, [[[]]]]  # fmt: skip


def oip():
    from tritonclient.grpc import service_pb2

    return service_pb2


def _oip_parameter(parameter, value) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value if -(2**63) <= value < 2**63 else 0
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def oip_request(rng: random.Random, valid: bool = False):
    m = oip()
    request = m.ModelInferRequest(model_name=MODEL)
    datatype = "FP32" if valid else rng.choice(["UINT8", "FP32", "FP32", "INT32", "BYTES", "", "fp32"])
    shape = [1, *SHAPE] if valid or rng.random() < 0.6 else rng.choice(
        [[], [64], list(SHAPE), [2, *SHAPE], [-1, *SHAPE], [0], [rng.choice(INTS) for _ in range(4)]])
    tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
    values = [rng.random() for _ in range(64)]
    if valid:
        tensor.contents.fp32_contents.extend(values)
        request.parameters["n"].int64_param = rng.randint(1, 50)
        request.parameters["n0"].int64_param = rng.randint(1, 20)
        return request
    kind = rng.randrange(6)
    if kind == 0:
        tensor.contents.uint_contents.extend(rng.choice([0, 255, 256, 2**32 - 1, rng.randrange(300)])
                                             for _ in range(rng.choice([64, 63, 65, 0])))
    elif kind == 1:
        tensor.contents.fp32_contents.extend(rng.choice(FLOATS + [rng.random()]) for _ in range(64))
    elif kind == 2:
        request.raw_input_contents.append(_data(rng))
    elif kind == 3:  # ambiguous: both, or two buffers
        tensor.contents.fp32_contents.extend(values)
        request.raw_input_contents.append(np.float32(values).tobytes())
        if rng.random() < 0.5:
            request.raw_input_contents.append(b"\0" * 64)
    elif kind == 4:
        tensor.contents.int64_contents.extend([1] * 64)
    if rng.random() < 0.2:
        request.inputs.add(name="second", datatype="FP32", shape=[1])
    for name in rng.sample(["mode", "procedure", "n0", "n", "alpha", "seed", "target_radius",
                            "tolerance", "sound_noise", "other"], rng.randrange(5)):  # fmt: skip
        value = rng.choice([*INTS, *FLOATS, *ALPHAS, "certify", "predict", "anytime",
                            "target_radius", "fixed_n", True, False, "x"])  # fmt: skip
        _oip_parameter(request.parameters[name], value)
    for _ in range(rng.choice([0, 0, 1, 3])):
        request.outputs.add(name=rng.choice(["radius", "counts", "label", "secret", ""]))
    request.model_name = rng.choice([MODEL, MODEL, MODEL, "", "nope", "a" * 5000])
    return request


def oip_huge(rng: random.Random) -> tuple[str, bytes]:
    budget = (1 << 20) - 4096
    kind = rng.choice(["rank", "rank_unpacked", "name", "bytes_contents", "many_outputs"])
    if kind == "rank":
        tensor = b"\x1a" + varint(budget) + b"\x01" * budget
    elif kind == "rank_unpacked":
        tensor = b"\x18\x01" * (budget // 2)
    elif kind == "bytes_contents":
        contents = b"\x42\x00" * (budget // 2)
        tensor = b"\x2a" + varint(len(contents)) + contents
    elif kind == "many_outputs":
        return kind, (b"\x0a" + varint(len(MODEL)) + MODEL.encode()) + b"\x32\x00" * (budget // 2)
    else:
        return kind, b"\x0a" + varint(budget) + b"n" * budget
    return kind, (b"\x0a" + varint(len(MODEL)) + MODEL.encode() + b"\x2a" + varint(len(tensor))
                  + tensor)  # fmt: skip


def make_oip_case(rng: random.Random) -> tuple[str, str, bytes]:
    roll = rng.random()
    infer = OIP_METHODS[0]
    if roll < 0.45:
        return "oip_random", infer, oip_request(rng).SerializeToString()
    if roll < 0.70:
        return "oip_mutated", infer, mutate(oip_request(rng, valid=True).SerializeToString(), rng)
    if roll < 0.78:
        return "oip_valid", infer, oip_request(rng, valid=True).SerializeToString()
    if roll < 0.85:
        kind, data = oip_huge(rng)
        return f"oip_huge_{kind}", infer, data
    return "oip_raw_bytes", rng.choice(OIP_METHODS), rng.randbytes(rng.randrange(3000))


def rest_valid_body(rng: random.Random) -> dict:
    datatype = rng.choice(["UINT8", "FP32"])
    data = ([rng.randrange(256) for _ in range(64)] if datatype == "UINT8"
            else [rng.random() for _ in range(64)])  # fmt: skip
    return {"inputs": [{"name": "input", "datatype": datatype, "shape": [1, *SHAPE], "data": data}],
            "parameters": {"n": rng.randint(1, 50), "n0": rng.randint(1, 20)},
            "outputs": [{"name": "radius"}, {"name": "counts", "parameters": {"binary_data": False}}]}  # fmt: skip


def _random_json(rng: random.Random, depth: int = 0):
    if depth > 2 or rng.random() < 0.6:
        return rng.choice(JSON_ATOMS)
    if rng.random() < 0.5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["name", "datatype", "shape", "data", "parameters", "n", "x"]):
            _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}  # fmt: skip


def _mutate_json(node, rng: random.Random):
    """A copy of ``node`` with one random sub-node replaced, dropped or given a random key."""
    if isinstance(node, dict) and node and rng.random() < 0.8:
        key = rng.choice(list(node))
        copy = dict(node)
        action = rng.random()
        if action < 0.2:
            del copy[key]
        elif action < 0.6:
            copy[key] = _mutate_json(node[key], rng)
        else:
            copy[key] = _random_json(rng)
        return copy
    if isinstance(node, list) and node and rng.random() < 0.8:
        copy = list(node)
        i = rng.randrange(len(copy))
        copy[i] = _mutate_json(copy[i], rng) if rng.random() < 0.6 else _random_json(rng)
        return copy
    return _random_json(rng)


def _json_bytes(value) -> bytes:
    # Python's json writes NaN and Infinity, and integers of any length: both are hostile here
    return json.dumps(value, allow_nan=True).encode()


def make_rest_case(rng: random.Random) -> tuple[str, str, str, bytes, dict]:
    """(kind, HTTP method, path, body, headers)."""
    infer = f"/v2/models/{MODEL}/infer"
    roll = rng.random()
    if roll < 0.55:
        body = rest_valid_body(rng)
        for _ in range(rng.randint(1, 3)):
            body = _mutate_json(body, rng)
        return "rest_structural", "POST", infer, _json_bytes(body), {}
    if roll < 0.65:
        return "rest_valid", "POST", infer, _json_bytes(rest_valid_body(rng)), {}
    if roll < 0.72:
        depth = rng.choice([1000, 5000, 100_000])
        return "rest_deep", "POST", infer, b"[" * depth + b"]" * depth, {}
    if roll < 0.78:
        header = _json_bytes(rest_valid_body(rng))
        lying = {"Inference-Header-Content-Length": str(rng.choice(
            [-1, 0, 1, len(header) + 1, 2**70, "x"]))}  # fmt: skip
        encoding = {"Content-Encoding": rng.choice(["gzip", "deflate", "br", "x"])}
        return "rest_headers", "POST", infer, header, rng.choice([lying, encoding])
    if roll < 0.84:
        number = "9" * rng.choice([400, 4000])
        name = rng.choice(["alpha", "n", "target_radius", "tolerance", "seed"])
        return "rest_huge_number", "POST", infer, f'{{"parameters": {{"{name}": {number}}}}}'.encode(), {}
    if roll < 0.92:
        return "rest_random_bytes", "POST", infer, rng.randbytes(rng.randrange(2000)), {}
    path = rng.choice(["/v2", "/v2/models/nope/infer", f"/v2/models/{MODEL}",
                       f"/v2/models/{MODEL}/versions/0/infer", "/v2/health/ready", "/nope",
                       f"/v2/models/{'a' * 3000}/infer"])  # fmt: skip
    return "rest_routes", rng.choice(["GET", "POST"]), path, rng.randbytes(rng.randrange(100)), {}


def fuzz_oip_grpc(address: str, count: int, seed: int, workers: int = 8) -> dict:
    rng = random.Random(seed)
    cases = [make_oip_case(rng) for _ in range(count)]
    codes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    failures: list[dict] = []
    longest = 0
    started = time.monotonic()
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 1 << 22)]) as ch:
        calls = {m: ch.unary_unary(m) for m in OIP_METHODS}

        def send(case):
            nonlocal longest
            kind, method, payload = case
            try:
                calls[method](payload, timeout=30)
                return "OK"
            except grpc.RpcError as error:
                longest = max(longest, len(error.details() or ""))
                return error.code().name

        with ThreadPoolExecutor(workers) as pool:
            for code, (kind, method, payload) in zip(pool.map(send, cases), cases, strict=True):
                codes[code] += 1
                by_kind.setdefault(kind, Counter())[code] += 1
                unimplemented = code == "UNIMPLEMENTED" and method.endswith("NoSuchMethod")
                if code not in ACCEPTABLE and not unimplemented:
                    failures.append({"kind": kind, "method": method, "code": code,
                                     "request_hex": payload[:200].hex()})  # fmt: skip
        final = oip_request(random.Random(seed), valid=True)
        final_ok = len(calls[OIP_METHODS[0]](final.SerializeToString(), timeout=30)) > 0
    return {"requests": count, "seconds": round(time.monotonic() - started, 1),
            "codes": dict(codes), "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "failures": len(failures), "longest_error_details": longest,
            "failure_examples": failures[:20], "final_valid_request_ok": final_ok}  # fmt: skip


def fuzz_rest(host: str, port: int, count: int, seed: int, workers: int = 8) -> dict:
    import http.client

    rng = random.Random(seed)
    cases = [make_rest_case(rng) for _ in range(count)]
    statuses: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    failures: list[dict] = []
    started = time.monotonic()

    def send(case) -> tuple[str, bool]:
        kind, method, path, body, headers = case
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as error:
            return f"connection_error:{type(error).__name__}", False
        finally:
            connection.close()
        json_error = True
        if response.status >= 400 and path.endswith("/infer"):
            try:
                json_error = "error" in json.loads(payload)
            except ValueError:
                json_error = False
        return str(response.status), json_error

    with ThreadPoolExecutor(workers) as pool:
        for (status, json_error), case in zip(pool.map(send, cases), cases, strict=True):
            statuses[status] += 1
            by_kind.setdefault(case[0], Counter())[status] += 1
            if not status[0].isdigit() or status.startswith("5") or not json_error:
                failures.append({"kind": case[0], "path": case[2][:80], "status": status,
                                 "json_error": json_error, "body": case[3][:200].hex()})  # fmt: skip
    final = send(("rest_valid", "POST", f"/v2/models/{MODEL}/infer",
                  _json_bytes(rest_valid_body(random.Random(seed))), {}))  # fmt: skip
    return {"requests": count, "seconds": round(time.monotonic() - started, 1),
            "statuses": dict(statuses), "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "failures": len(failures), "longest_error_details": 0,
            "failure_examples": failures[:20], "final_valid_request_ok": final[0] == "200"}  # fmt: skip


def run(count: int, seed: int, address: str | None = None, workers: int = 8,
        doors: tuple[str, ...] = DOORS, http_port: int = -1) -> dict:  # fmt: skip
    """One report per door, run one door after the other against the same server."""
    if address:
        host = address.rsplit(":", 1)[0]
        return {door: run_door(door, address, host, http_port, count, seed, workers)
                for door in doors}  # fmt: skip
    from smoothserve_dev.testing import ServerProcess

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp, ServerProcess(
        write_repo(Path(tmp)), SERVER_ARGS
    ) as server:
        report: dict = {"server_rss_at_start_mib": rss_mib(server.process.pid)}
        for door in doors:
            report[door] = run_door(door, server.address, "127.0.0.1", server.http_port, count,
                                    seed, workers)  # fmt: skip
            report[door]["server_rss_after_mib"] = rss_mib(server.process.pid)
        report["server_alive_after"] = server.process.poll() is None
        report["server_peak_rss_mib"] = peak_rss_mib(server.process.pid)
        report["server_rss_growth_mib"] = round(
            report["server_peak_rss_mib"] - report["server_rss_at_start_mib"], 1
        )
        report["server_exit_code"] = server.stop()
        report["tracebacks_in_server_log"] = server.log().count("Traceback")
    return report


def run_door(door, address, host, http_port, count, seed, workers) -> dict:
    if door == "native":
        return fuzz(address, count, seed, workers)
    if door == "oip_grpc":
        return fuzz_oip_grpc(address, count, seed, workers)
    if http_port < 0:
        raise SystemExit("the REST door needs --http-port with --address")
    return fuzz_rest(host, http_port, count, seed, workers)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return math.nan


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return math.nan


def passed(report: dict) -> bool:
    doors = [report[door] for door in DOORS if door in report]
    return (
        all(d["failures"] == 0 and d["longest_error_details"] <= 1000
            and d["final_valid_request_ok"] for d in doors)  # fmt: skip
        and report.get("server_alive_after", True)
        and report.get("tracebacks_in_server_log", 0) == 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="requests per door")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--doors", default=",".join(DOORS),
                        help=f"comma-separated, of {', '.join(DOORS)}")  # fmt: skip
    parser.add_argument("--address", help="an existing server serving model 'fuzz' (1, 8, 8)")
    parser.add_argument("--http-port", type=int, default=-1, help="its REST port, with --address")
    args = parser.parse_args(argv)
    doors = tuple(d for d in args.doors.split(",") if d)
    if unknown := set(doors) - set(DOORS):
        parser.error(f"unknown doors {sorted(unknown)}")
    report = run(args.count, args.seed, args.address, args.workers, doors, args.http_port)
    print(json.dumps(report, indent=1))
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
