"""A real Triton server for ``model_repo`` on a CPU machine, for tests and benchmarks.

``nvidia-pytriton`` bundles a ``tritonserver`` binary with only the Python backend, so the
production configs (``platform: "onnxruntime_onnx"``) cannot load as they are. The twin
repository keeps each model's name, input and output names, dims, ``max_batch_size``,
dynamic batching and ``parameters`` (sigma, labels, ...) and swaps the platform for a Python
model that runs the same ``model.onnx`` with ONNX Runtime on the CPU. ``fp16=True`` declares
``TYPE_FP16`` inputs instead (the twin casts to float32 before ONNX Runtime), which is what an
fp16-input export would declare in production.

An ensemble (``platform: "ensemble"``: a denoiser, then a classifier) keeps its config
unchanged, with its version folders (Triton's ensemble scheduler runs it in the twin as in
production); each of its components gets a Python-backend twin like a model's (its config as
written, the platform swapped), so the same steps run the same ``model.onnx`` files. An
ensemble's tensors keep their declared types (``fp16`` does not apply to them).

``samplers=True`` adds each model's sampler (``smoothserve.triton_sampler``, target ``cpu``:
NumPy PCG64 noise in the sampler's stub, the network run by the twin through BLS), so that
SmoothServe takes the sampler path for it.

Command line: ``python -m smoothserve_dev.triton_twin --model-repo model_repo [--samplers]``
serves the twin until interrupted and prints its gRPC address.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from importlib import resources
from pathlib import Path

from google.protobuf import text_format

from smoothcert.model_config import SmoothModelConfig, parse_pbtxt
from smoothcert.schema.model_config_pb2 import DataType, InstanceGroup
from smoothserve import repository
from smoothserve.triton_sampler import write_sampler

# The Python-backend model every twin version runs (package data, copied into the twin).
TWIN_MODEL = "twin_backend/model.py"


def tritonserver_home() -> Path | None:
    """``site-packages/pytriton/tritonserver`` of nvidia-pytriton, or None when not installed."""
    try:
        import pytriton
    except ImportError:
        return None
    home = Path(pytriton.__file__).parent / "tritonserver"
    return home if (home / "bin" / "tritonserver").is_file() else None


def twin_config(config: SmoothModelConfig, fp16: bool = False, threads: int = 1) -> str:
    """The production config with the platform swapped for the Python backend."""
    proto = config.to_proto()
    proto.platform = ""
    proto.backend = "python"
    proto.input[0].data_type = DataType.TYPE_FP16 if fp16 else DataType.TYPE_FP32
    for group in proto.instance_group:
        group.kind = InstanceGroup.KIND_CPU
    proto.parameters["twin_threads"].string_value = str(threads)
    return text_format.MessageToString(proto)


def component_twin_config(text: str, threads: int = 1) -> str:
    """A component's config (any model's, smoothing parameters or not) with the platform
    swapped for the Python backend."""
    proto = parse_pbtxt(text)
    proto.platform = ""
    proto.backend = "python"
    for group in proto.instance_group:
        group.kind = InstanceGroup.KIND_CPU
    proto.parameters["twin_threads"].string_value = str(threads)
    return text_format.MessageToString(proto)


def _twin_version(model_py: str, version_dir: Path, model_file: Path) -> None:
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.py").write_text(model_py)
    link = version_dir / repository.MODEL_FILE
    if not link.exists():
        link.symlink_to(Path(model_file).resolve())


def build_twin_repository(
    model_repo: Path,
    dest: Path,
    fp16: bool = False,
    threads: int = 1,
    only: tuple[str, ...] = (),
    samplers: bool = False,
    sampler_options: dict | None = None,
) -> list[str]:
    """Write the twin of every model of ``model_repo`` (or of those in ``only``) under
    ``dest``, with its CPU sampler when ``samplers`` (``sampler_options``: ``write_sampler``'s
    keywords); return the network names. Each twin model is one Python stub process."""
    dest.mkdir(parents=True, exist_ok=True)
    model_py = resources.files(__package__).joinpath(TWIN_MODEL).read_text()
    models = repository.scan(Path(model_repo)).ready
    if only:
        models = {name: versions for name, versions in models.items() if name in only}
    components: dict[str, dict[str, Path]] = {}  # the ensembles' steps: name -> version -> file
    for name, versions in models.items():
        model_dir = dest / name
        model_dir.mkdir(exist_ok=True)
        config = next(iter(versions.values())).config
        if config.is_ensemble:  # unchanged: Triton's ensemble scheduler runs the twins' steps
            source = Path(model_repo) / name
            (model_dir / "config.pbtxt").write_text((source / "config.pbtxt").read_text())
            for version, model in versions.items():
                (model_dir / version).mkdir(exist_ok=True)
                (model_dir / version / ".keep").touch()  # Triton needs the folder, not a file
                for step in model.steps:
                    components.setdefault(step.name, {})[step.version] = step.path
        else:
            (model_dir / "config.pbtxt").write_text(twin_config(config, fp16, threads))
            for version, model in versions.items():
                _twin_version(model_py, model_dir / version, Path(model.path))
        if samplers:
            write_sampler(config, sorted(versions), dest, "cpu", **(sampler_options or {}))
    for name, files in components.items():  # a step that is a served model: twinned above
        model_dir = dest / name
        if name not in models:
            model_dir.mkdir(exist_ok=True)
            text = (Path(model_repo) / name / "config.pbtxt").read_text()
            (model_dir / "config.pbtxt").write_text(component_twin_config(text, threads))
        for version, path in files.items():
            _twin_version(model_py, model_dir / version, path)
    return sorted(models)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def triton_environment(home: Path) -> dict[str, str]:
    """LD_LIBRARY_PATH and PATH the bundled server and its Python stub need (DEVELOPERS.md)."""
    libs = home.parent.parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p
    )
    # The stub embeds libpython and finds its prefix (so numpy and onnxruntime) through PATH.
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _backend_directory(home: Path, dest: Path) -> Path:
    """A backends directory holding the Python backend and the stub for this interpreter."""
    python = dest / "python"
    python.mkdir(parents=True, exist_ok=True)
    for item in (home / "backends" / "python").iterdir():
        if item.is_file() and not (python / item.name).exists():
            (python / item.name).symlink_to(item)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    if not (python / stub.name).exists():
        (python / stub.name).symlink_to(stub)
    return dest


class TritonProcess:
    """A ``tritonserver`` on free loopback ports; ``stop()`` then ``start()`` keeps the ports.

    ``with TritonProcess(repo) as triton: triton.url`` -> "127.0.0.1:PORT" (gRPC).
    """

    def __init__(
        self,
        model_repository: Path,
        start_timeout: float = 90.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        home = tritonserver_home()
        if home is None:
            raise RuntimeError("nvidia-pytriton is not installed (pip install -e ./dev, as scripts/test.sh does)")
        self.home = home
        self.model_repository = Path(model_repository)
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self._dir = tempfile.TemporaryDirectory(prefix="triton-")
        # the Python backend's regions in /dev/shm; a killed server leaves them behind
        self.shm_prefix = f"twin{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self.workdir = Path(self._dir.name)
        self.backends = _backend_directory(home, self.workdir / "backends")
        self.grpc_port, self.metrics_port = free_port(), free_port()
        self.log_path = self.workdir / "triton.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        return [
            str(self.home / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backends}",
            f"--cache-directory={self.home / 'caches'}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=4194304",
            "--allow-http=false",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--exit-timeout-secs=5",
            *self.extra_args,
        ]

    def start(self) -> TritonProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=triton_environment(self.home),
            start_new_session=True,
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + self.start_timeout
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while True:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise RuntimeError(f"tritonserver exited with {code}:\n{self.log()}")
                with contextlib.suppress(Exception):
                    if client.is_server_ready(client_timeout=1.0):
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"tritonserver not ready in {self.start_timeout} s:\n{self.log()}"
                    )
                time.sleep(0.1)
        finally:
            client.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash would: no graceful shutdown, connections drop at once."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._clean_up()

    def stop(self, timeout: float = 30.0) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._clean_up()

    def _clean_up(self) -> None:
        for region in Path("/dev/shm").glob(self.shm_prefix + "*"):
            region.unlink(missing_ok=True)
        if getattr(self, "_log", None) and not self._log.closed:
            self._log.close()

    def __enter__(self) -> TritonProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._dir.cleanup()


def scrape(metrics_url: str, metric: str) -> dict[str, float]:
    """Values of one Prometheus metric from a /metrics page, keyed by its label set."""
    from urllib.request import urlopen

    with urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - loopback URL we built
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(metric + "{") or line.startswith(metric + " "):
            key, _, value = line.rpartition(" ")
            values[key[len(metric) :]] = float(value)
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--fp16", action="store_true", help="declare FP16 inputs")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model")
    parser.add_argument("--samplers", action="store_true", help="add each model's CPU sampler")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="triton-twin-") as tmp:
        names = build_twin_repository(
            args.model_repo, Path(tmp), args.fp16, args.threads, samplers=args.samplers
        )
        with TritonProcess(Path(tmp)) as triton:
            # blocked only now: tritonserver would inherit the mask and ignore SIGTERM
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            print(json.dumps({"url": triton.url, "metrics": triton.metrics_url, "models": names}))
            sys.stdout.flush()
            signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    main()
