"""The image's build-time self-check (Dockerfile stage ``selfcheck``).

Starts the server exactly as the image's entry point would, from the image's environment, only
moved to free loopback ports (builds share the host's network); then checks the gRPC health
probe, certifies one input through the client, scrapes /metrics, stops the server with SIGTERM
and checks that the probe then fails. Any failure exits non-zero and fails the build.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from smoothserve_client.client import SmoothServeClient


def probe(address: str) -> int:
    command = [sys.executable, "-m", "smoothserve.healthcheck", "--address", address]
    return subprocess.run(command, check=False).returncode


def main() -> int:
    entry_point = shutil.which("smoothserve")
    assert entry_point, "no smoothserve entry point on PATH"
    work = Path(tempfile.mkdtemp(prefix="selfcheck-"))
    ready = work / "ready.json"
    env = {
        **os.environ,
        "SMOOTHSERVE_HOST": "127.0.0.1",
        "SMOOTHSERVE_PORT": "0",
        "SMOOTHSERVE_METRICS_HOST": "127.0.0.1",
        "SMOOTHSERVE_METRICS_PORT": "0",
        "SMOOTHSERVE_READY_FILE": str(ready),
    }
    print(
        f"selfcheck: starting {entry_point} on {os.environ['SMOOTHSERVE_MODEL_REPO']}", flush=True
    )
    server = subprocess.Popen([entry_point], env=env)
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert server.poll() is None, f"server exited with {server.returncode}"
            assert time.monotonic() < deadline, "server did not start in 180 s"
            time.sleep(0.2)
        time.sleep(0.2)  # the ready file is written in one call; let it land
        ports = json.loads(ready.read_text())
        address = f"127.0.0.1:{ports['port']}"

        assert probe(address) == 0, "health probe did not report SERVING"

        with SmoothServeClient(address, timeout=120) as client:
            models = client.list_models()
            assert models, "the server lists no model"
            info = models[0]
            image = np.random.default_rng().integers(0, 256, info.input_shape, dtype=np.uint8)
            result = client.predict("", image, n0=100, n=2000, alpha=0.001)
        print(
            f"selfcheck: models {[m.name for m in models]}; default model {result.model_name} "
            f"v{result.model_version} -> label={result.label!r} abstain={result.abstain} "
            f"radius={result.radius:.4f} in {result.server_time_seconds:.3f} s",
            flush=True,
        )
        assert result.model_name and sum(result.counts) == 2000, result
        assert result.abstain or result.radius > 0, result

        url = f"http://127.0.0.1:{ports['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            scrape = response.read().decode()
        served = [
            line for line in scrape.splitlines()
            if line.startswith("smoothserve_requests_total{") and not line.endswith(" 0.0")
        ]  # fmt: skip
        assert served, "no smoothserve_requests_total sample after a request"
        print(f"selfcheck: /metrics: {served[0]}", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert code == 0, f"server exited with {code} on SIGTERM"
    assert probe(address) == 1, "health probe passed with the server stopped"
    print("selfcheck: OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
