#!/usr/bin/env python
"""Soak test: many concurrent clients certify for a while against a loopback server.

    .venv/bin/python scripts/soak.py --duration 600 --clients 32

Starts its own server (a generated 1x28x28 linear model, loopback only) unless --address is
given, warms up, then drives ``--clients`` threads, each with its own channel, for
``--duration`` seconds. Prints a JSON report: requests, errors by status, p50/p99 latency and
the server's resident memory after the warm-up and at the end, and its peak. With
``--hostile-clients``, that many more threads send, all along, requests with fields built to
be costly (an 8-million-dimension shape, a 9,000-character name or version, a 10,000-dimension
shape): each must get INVALID_ARGUMENT. Exit status 1 when any certifying request failed, a
hostile one got another status, or RSS grew by more than --max-rss-growth.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 28, 28)


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def hostile_requests(model: str) -> list[bytes]:
    from smoothserve_client.api.v1 import smoothserve_pb2 as pb

    def request(name: str = model, version: str = "", rank: int = 3) -> bytes:
        shape = list(SHAPE) if rank == 3 else [1] * rank
        tensor = pb.Tensor(shape=shape, dtype=pb.DTYPE_UINT8, data=b"\0" * 784)
        message = pb.PredictRequest(model_name=name, model_version=version, input=tensor)
        return message.SerializeToString()

    return [request(rank=8_000_000), request(name="n" * 9000), request(version="9" * 9000),
            request(rank=10_000)]  # fmt: skip


def hostile_client(address: str, model: str, stop: threading.Event, seen: Counter, lock) -> None:
    import grpc

    payloads = hostile_requests(model)
    options = [("grpc.max_send_message_length", 1 << 25)]
    with grpc.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary("/smoothserve.v1.SmoothServe/Predict")
        while not stop.is_set():
            for payload in payloads:
                try:
                    call(payload, timeout=60)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                with lock:
                    seen[code] += 1


def write_repo(root: Path) -> Path:
    from smoothserve_dev.models import write_linear_model

    w = np.random.default_rng(0).normal(size=SHAPE)
    write_linear_model(root / "repo", "soak", w, -float(w.sum()) * 0.5, 0.25, SHAPE)
    return root / "repo"


class Load:
    """Client threads that certify random images until stopped; latencies after ``measure``."""

    def __init__(
        self, address: str, clients: int, n0: int, n: int, model: str, hostile: int = 0
    ) -> None:
        self.address, self.n0, self.n, self.model = address, n0, n, model
        self.stop = threading.Event()
        self.measuring = threading.Event()
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.hostile: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]
        self.threads += [
            threading.Thread(
                target=hostile_client, args=(address, model, self.stop, self.hostile, self.lock)
            )
            for _ in range(hostile)
        ]

    def _run(self, index: int) -> None:
        from smoothserve_client.client import SmoothServeClient, SmoothServeError

        rng = np.random.default_rng(index)
        with SmoothServeClient(self.address, timeout=60) as client:
            while not self.stop.is_set():
                image = rng.integers(0, 256, SHAPE, dtype=np.uint8)
                started = time.perf_counter()
                try:
                    client.predict(self.model, image, n0=self.n0, n=self.n)
                    error = None
                except SmoothServeError as exc:
                    error = exc.code.name
                elapsed = time.perf_counter() - started
                if self.measuring.is_set():
                    with self.lock:
                        if error:
                            self.errors[error] += 1
                        else:
                            self.latencies.append(elapsed)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def soak(address: str, pid: int | None, args: argparse.Namespace) -> dict:
    rss_trace: list[tuple[float, int]] = []
    with Load(address, args.clients, args.n0, args.n, args.model, args.hostile_clients) as load:
        time.sleep(args.warmup)
        load.measuring.set()
        started = time.monotonic()
        rss_start = rss_bytes(pid) if pid else 0
        while (elapsed := time.monotonic() - started) < args.duration:
            if pid:
                rss_trace.append((round(elapsed, 1), rss_bytes(pid)))
            time.sleep(min(args.rss_every, max(0.0, args.duration - elapsed)))
        load.measuring.clear()
        rss_end = rss_bytes(pid) if pid else 0
        seconds = time.monotonic() - started
    # Growth compares the median of the first and of the last quarter of the trace: single
    # samples swing by +-20 % while clients' 16 MB hostile requests come and go.
    if len(rss_trace) >= 8:
        quarter = len(rss_trace) // 4
        rss_start = int(np.median([r for _, r in rss_trace[:quarter]]))
        rss_end = int(np.median([r for _, r in rss_trace[-quarter:]]))
    latencies = np.array(load.latencies or [float("nan")])
    return {
        "clients": args.clients,
        "duration_s": round(seconds, 1),
        "n0": args.n0,
        "n": args.n,
        "requests": len(load.latencies),
        "errors": dict(load.errors),
        "requests_per_s": round(len(load.latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2) if rss_start else None,
        "rss_trace_mb": [(t, round(r / 2**20, 1)) for t, r in rss_trace],
        "rss_peak_mb": round(peak_rss_bytes(pid) / 2**20, 1) if pid else None,
        "hostile_statuses": dict(load.hostile),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="unmeasured seconds first")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--n0", type=int, default=16)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--model", default="soak")
    parser.add_argument("--address", help="an existing server (loopback); default: start one")
    parser.add_argument("--pid", type=int, help="with --address: the server's pid, for RSS")
    parser.add_argument("--rss-every", type=float, default=30.0, help="RSS sampling period, s")
    parser.add_argument("--max-rss-growth", type=float, default=10.0, help="percent")
    parser.add_argument("--server-arg", action="append", default=[], help="extra server flag")
    parser.add_argument("--hostile-clients", type=int, default=0, help="threads of huge fields")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.address:
        return soak(args.address, args.pid, args)
    from smoothserve_dev.testing import ServerProcess

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        repo = write_repo(Path(tmp))
        with ServerProcess(repo, args.server_arg) as server:
            report = soak(server.address, server.process.pid, args)
            report["server_exit_code"] = server.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    report = run(argv)
    print(json.dumps(report, indent=1))
    growth = report["rss_growth_pct"]
    unexpected = set(report["hostile_statuses"]) - {"INVALID_ARGUMENT"}
    bad = report["errors"] or unexpected or (growth is not None and growth > args.max_rss_growth)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
