"""A burst at the door: many concurrent Predicts at once, more than --max-concurrent-requests
admits, against the two-class linear model (so the scheduler's own work, not the network,
is what the burst loads). Prints the latency of the refused and of the served requests, and
the refused ones' median against a baseline burst in which almost every request is refused
(the floor: gRPC's own cost of taking that many calls).

    .venv/bin/python bench/burst.py [--requests 300] [--n 2000] [--limit 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from smoothserve_client.api.v1 import smoothserve_pb2 as pb
from smoothserve_client.api.v1 import smoothserve_pb2_grpc as pb_grpc
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess

SHAPE = (1, 8, 8)


async def burst(address: str, requests: int, n: int) -> dict[str, list[float]]:
    """Seconds per request, by status, for ``requests`` Predicts sent at once."""
    x = np.full(SHAPE, 0.5, np.float32)
    tensor = pb.Tensor(shape=list(SHAPE), dtype=pb.DTYPE_FLOAT32, data=x.tobytes())
    request = pb.PredictRequest(model_name="linear", input=tensor,
                                options=pb.PredictOptions(n0=100, n=n))  # fmt: skip
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.SmoothServeStub(channel)
        await stub.ListModels(pb.ListModelsRequest())  # connected before the clock starts

        async def one() -> tuple[str, float]:
            started = time.perf_counter()
            try:
                await stub.Predict(request, timeout=300)
                status = "OK"
            except grpc.aio.AioRpcError as error:
                status = error.code().name
            return status, time.perf_counter() - started

        by_status: dict[str, list[float]] = {}
        for status, seconds in await asyncio.gather(*(one() for _ in range(requests))):
            by_status.setdefault(status, []).append(seconds)
    return by_status


def summary(by_status: dict[str, list[float]]) -> str:
    return ", ".join(
        f"{status} {len(s)}: median {statistics.median(s):.3f} s, max {max(s):.3f} s"
        for status, s in sorted(by_status.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=256, help="--max-concurrent-requests")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    repo = Path(tempfile.mkdtemp(prefix="burst-"))
    w = np.random.default_rng(7).normal(size=SHAPE).astype(np.float32)
    write_linear_model(repo, "linear", w, -float(w.sum()) * 0.5, 0.25, SHAPE)
    refused: dict[str, list[float]] = {"mixed": [], "floor": []}
    for round_ in range(args.rounds):  # alternating, so a slow spell of the machine hits both
        for kind, limit in (("mixed", args.limit), ("floor", 1)):
            with ServerProcess(repo, ["--max-concurrent-requests", str(limit)]) as server:
                result = asyncio.run(burst(server.address, args.requests, args.n))
            print(f"round {round_ + 1} {kind:5} (limit {limit}): {summary(result)}", flush=True)
            refused[kind].append(statistics.median(result.get("RESOURCE_EXHAUSTED", [0.0])))
    mixed, floor = (statistics.median(refused[k]) for k in ("mixed", "floor"))
    print(f"refused, median of rounds: {mixed:.3f} s in the burst, {floor:.3f} s when almost "
          f"all are refused: {mixed / floor:.2f}x the floor")  # fmt: skip


if __name__ == "__main__":
    main()
