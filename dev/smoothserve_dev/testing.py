"""Run a real SmoothServe server in a subprocess on free loopback ports (tests, benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class ServerProcess:
    """``with ServerProcess(model_repo=...) as server: server.address`` -> "127.0.0.1:PORT".

    The harness starts the server with ``--allow-client-seeds true``, since tests replay seeded
    requests; ``args`` come after it, so ``--allow-client-seeds false`` restores the default.
    """

    def __init__(
        self,
        model_repo: Path | str,
        args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.model_repo = Path(model_repo)
        self.args = list(args)
        self.env = env
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = -1
        self.http_port = -1
        self._dir = tempfile.TemporaryDirectory(prefix="smoothserve-")
        self.log_path = Path(self._dir.name) / "server.log"
        self._final_log = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> ServerProcess:
        ready = Path(self._dir.name) / "ready.json"
        command = [
            sys.executable, "-m", "smoothserve",
            "--model-repo", str(self.model_repo),
            "--host", "127.0.0.1", "--port", "0",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0",
            "--ready-file", str(ready),
            "--allow-client-seeds", "true",
            *self.args,
        ]  # fmt: skip
        env = {**os.environ, **(self.env or {})}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server did not start in {self.start_timeout} s:\n{self.log()}")
            time.sleep(0.05)
        ports = json.loads(ready.read_text())
        self.port, self.metrics_port = ports["port"], ports["metrics_port"]
        self.http_port = ports.get("http_port", -1)
        return self

    def log(self) -> str:
        """The server's log so far; after the ``with`` block, the whole log (kept when the
        temporary folder goes, so a check made after the block still reads it)."""
        if self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return self._final_log

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._final_log = self.log()
        self._dir.cleanup()
