"""Server configuration: every option is a command-line flag and an environment variable.

The table of options below is the single source of the CLI, the environment variables and
the configuration reference in ``docs/operations.md`` (a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .records import server_version

ENV_PREFIX = "SMOOTHSERVE_"


def _option(default, help: str, type=None, choices=None, secret: bool = False,  # noqa: A002
            append: bool = False):  # fmt: skip
    """A config field; ``secret`` keeps the value out of ``repr`` (and so out of logs);
    ``append``: the flag may be repeated, its values (tuples) joined."""
    return field(
        default=default, repr=not secret,
        metadata={"help": help, "type": type, "choices": choices, "append": append},
    )  # fmt: skip


def _bool(value: str) -> bool:
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r}")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class ServerConfig:
    model_repo: Path = _option(Path("model_repo"), "Model repository (Triton layout).", Path)
    default_model: str = _option("", "Model used when a request names none; empty: the one named in <model-repo>/DEFAULT_MODEL, else the first by name.", str)
    host: str = _option("0.0.0.0", "Address the gRPC server binds.", str)
    port: int = _option(50051, "gRPC port; 0 picks a free one.", int)
    metrics_host: str = _option("0.0.0.0", "Address the Prometheus metrics server binds.", str)
    metrics_port: int = _option(9464, "Prometheus metrics port; 0 picks a free one, -1 disables.", int)
    http_port: int = _option(-1, "Open Inference Protocol REST port (/v2/...; Triton uses 8000); 0 picks a free one, -1 disables. Needs the `oip` extra.", int)
    http_header_timeout_s: float = _option(10.0, "Seconds a client of the REST and metrics ports has to send a request's head (line and headers), counted from connecting or from its previous response; slower connections are closed.", float)
    http_body_timeout_s: float = _option(30.0, "Seconds a request body on the REST and metrics ports may take to arrive, from the end of its head; slower connections are closed.", float)
    http_max_connections: int = _option(1000, "Open connections on the REST port, lowered to stay 512 below the open-file limit; past it a new connection closes the oldest one waiting for a request, or is closed itself if every one is busy.", int)
    oip_grpc: bool = _option(True, "Serve the Open Inference Protocol's gRPC service (inference.GRPCInferenceService) on the gRPC port, when the `oip` extra is installed.", _bool)
    backend: str = _option("onnxruntime", "Backend that runs the base network.", str, ("onnxruntime", "triton", "torch"))
    triton_urls: tuple[str, ...] = _option((), "Triton gRPC endpoints, comma-separated host:port.", _csv)
    triton_timeout_s: float = _option(30.0, "Seconds one Triton call may take (and start-up may wait for Triton).", float)
    triton_fp16: bool = _option(False, "Send FP16 batches to Triton; the models' configs must declare TYPE_FP16 inputs.", _bool)
    triton_shm: bool = _option(False, "Pass batches to Triton through system shared memory (Triton on this host).", _bool)
    torch_device: str = _option("", "Device of the torch backend (cpu, cuda, cuda:1); empty: cuda when available, else cpu.", str)
    torch_half: bool = _option(True, "Torch backend on CUDA: run the network in FP16 when its argmax agrees with FP32 on a probe batch at load, else FP32.", _bool)
    torch_cuda_graphs: bool = _option(False, "Torch backend on CUDA: replay the network as a CUDA graph captured for --batch-size (shorter batches padded).", _bool)
    batch_size: int = _option(0, "Noisy samples per backend batch, for every model; 0: each model's own (its config's smoothserve_batch_size, which `smoothserve-tune-batch` writes, else measured at load).", int)
    noise_generator: str = _option("auto", "Generator of host noise: ars5 (MKL's AES counter-based generator, the `fastnoise` extra), pcg64 (NumPy), or auto (ars5 when installed).", str, ("auto", "ars5", "pcg64"))
    pipeline_depth: int = _option(3, "Backend batches in flight per model; the triton backend uses at least 2 per endpoint.", int)
    noise_threads: int = _option(0, "Threads drawing host noise per model; 0: one per four cores (at least one) when the network also runs on this CPU (onnxruntime's CPU provider), else one per core.", int)
    intra_op_threads: int = _option(0, "ONNX Runtime intra-op threads; 0: one per core.", int)
    inter_op_threads: int = _option(1, "ONNX Runtime inter-op threads.", int)
    providers: tuple[str, ...] = _option((), "ONNX Runtime execution providers, comma-separated; empty: CUDA if installed, else CPU.", _csv)
    default_n0: int = _option(100, "Selection samples when a request sets none.", int)
    default_n: int = _option(10_000, "Estimation samples when a request sets none.", int)
    default_alpha: float = _option(0.001, "Failure probability when a request sets none.", float)
    max_n0: int = _option(100_000, "Largest n0 a request may ask for.", int)
    max_n: int = _option(1_000_000, "Largest n a request may ask for.", int)
    min_n: int = _option(1, "Smallest n a request may ask for: a deployment's floor on the evidence behind a certificate.", int)
    max_alpha: float = _option(0.5, "Largest alpha a request may ask for: a deployment's guarantee level (a certificate holds with probability at least 1 - alpha); alpha itself always lies below 0.5.", float)
    first_look: int = _option(64, "Sequential procedures: estimation samples at the first look (each later look doubles them, up to the request's n).", int)
    max_message_bytes: int = _option(16 * 1024 * 1024, "Largest request message, in bytes.", int)
    max_samples_in_flight: int = _option(4_000_000, "Noisy samples (n0 + n) admitted across all requests at once; a request that would exceed it gets RESOURCE_EXHAUSTED instead of queueing.", int)
    max_connection_age_s: float = _option(0.0, "Close each client connection after this many seconds (a GOAWAY, with --grace-period-s for calls in flight), so clients re-resolve DNS and reach pods the autoscaler added; 0: never.", float)
    max_concurrent_requests: int = _option(256, "Predict requests served at once; more get RESOURCE_EXHAUSTED.", int)
    grace_period_s: float = _option(25.0, "On SIGTERM, seconds in-flight requests may take to finish before they are cancelled.", float)
    tls_cert: Path | None = _option(None, "PEM certificate chain of the gRPC port; with --tls-key, enables TLS.", Path)
    tls_key: Path | None = _option(None, "PEM private key for --tls-cert.", Path)
    tls_client_ca: Path | None = _option(None, "PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).", Path)
    auth_tokens_file: Path | None = _option(None, "File of bearer tokens, one per line ('#' comments); when set (or with --auth-tokens), calls need 'authorization: Bearer <token>'.", Path)
    auth_tokens: tuple[str, ...] = _option((), "Bearer tokens, comma-separated; prefer the environment variable or the file, a flag shows in ps.", _csv, secret=True)
    allow_client_seeds: bool = _option(False, "Accept requests that choose the noise seed (audits that must replay a certificate). Off: such requests get FAILED_PRECONDITION, since a client that picks seeds can search for one that certifies.", _bool)
    signing_key: Path | None = _option(None, "PEM Ed25519 private key (PKCS#8, unencrypted) that signs certificate records; `smoothserve-key generate` makes one. Unset (and no --signing-key-pem): a key for this process only, with a warning.", Path)
    signing_key_pem: str = _option("", "The signing key itself as PEM text, for deployments that inject secrets as environment variables; prefer the variable to the flag.", str, secret=True)
    model_load_timeout_s: float = _option(60.0, "Seconds one model version may take to load (onnxruntime backend: building the session and running a probe batch); a model that takes longer fails (see --exit-on-error) and its probe is stopped, though a session still being built finishes in the background.", float)
    model_control_mode: str = _option("none", "How models are loaded, as Triton's --model-control-mode: none (every model of the repository at start-up, no changes after), poll (the same, then the repository is polled every --repository-poll-secs: a model added, changed or removed is loaded, reloaded or unloaded) or explicit (only the --load-model ones at start-up, then the repository extension's load and unload calls). onnxruntime and torch backends only.", str, ("none", "poll", "explicit"))
    repository_poll_secs: float = _option(15.0, "Poll mode: seconds between two polls of the model repository.", float)
    load_model: tuple[str, ...] = _option((), "Explicit mode: a model to load at start-up; repeat the flag (or separate names by commas) for several, '*' for all.", _csv, append=True)
    exit_on_error: bool = _option(True, "Exit at start-up when a model fails to load (as Triton's --exit-on-error); false: serve the others and report the failed ones in ListModels, GetModelInfo and the smoothserve_models metric.", _bool)
    otlp_endpoint: str = _option("", "OpenTelemetry: export spans (admission, sampling, statistics per request) to this OTLP/gRPC collector, e.g. http://collector:4317 (https for TLS); empty: no tracing. Needs the `tracing` extra.", str)
    ready_file: Path | None = _option(None, "Write the bound ports here as JSON once serving (for tests and supervisors).", Path)
    log_level: str = _option("INFO", "Logging level.", str, ("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _option("text", "Format of log lines on stderr: text (time, level, logger, [request ID], message) or json (one JSON object per line, with time, level, logger, message, request_id and the access log's fields as keys).", str, ("text", "json"))
    access_log: bool = _option(True, "Log one INFO line per Predict request, on every door, to the logger smoothserve.access: model, version, mode, procedure, outcome, status, samples drawn, latency and request ID (never input data); false: none.", _bool)

    @staticmethod
    def env_name(name: str) -> str:
        return ENV_PREFIX + name.upper()

    @staticmethod
    def flag_name(name: str) -> str:
        return "--" + name.replace("_", "-")

    @classmethod
    def options(cls) -> list[tuple[str, str, object, str]]:
        """(flag, environment variable, default, help) for every option."""
        return [
            (cls.flag_name(f.name), cls.env_name(f.name), f.default, f.metadata["help"])
            for f in fields(cls)
        ]

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog="smoothserve",
            description="Certified inference server (randomized smoothing) over gRPC.",
            epilog=f"Every flag can also be set by an environment variable {ENV_PREFIX}<NAME>. "
            "`smoothserve --version` prints the server's version and exits.",
        )
        # Kept out of the options list (SUPPRESS): it is no setting, and the list above is
        # the configuration reference (docs/operations.md); the epilog names it instead.
        parser.add_argument(
            "--version", action="version", version=f"smoothserve {server_version()}",
            help=argparse.SUPPRESS,
        )  # fmt: skip
        for f in fields(cls):
            parser.add_argument(
                cls.flag_name(f.name),
                dest=f.name,
                action="append" if f.metadata["append"] else "store",
                type=f.metadata["type"],
                choices=f.metadata["choices"],
                default=None,
                help=f"{f.metadata['help']} (env {cls.env_name(f.name)}; default: {_show(f.default)})",
            )
        return parser

    @classmethod
    def from_args(cls, argv: list[str] | None = None, environ: dict[str, str] | None = None) -> ServerConfig:
        """Flags override environment variables, which override defaults."""
        environ = os.environ if environ is None else environ
        parser = cls.parser()
        args = parser.parse_args(argv)
        values = {}
        for f in fields(cls):
            value = getattr(args, f.name)
            if value is not None and f.metadata["append"]:  # each flag's tuple, joined
                value = tuple(v for part in value for v in part)
            if value is None and cls.env_name(f.name) in environ:
                raw = environ[cls.env_name(f.name)]
                try:
                    value = f.metadata["type"](raw)
                except (ValueError, argparse.ArgumentTypeError) as exc:
                    parser.error(f"{cls.env_name(f.name)}={raw!r}: {exc}")
                if f.metadata["choices"] and value not in f.metadata["choices"]:
                    parser.error(f"{cls.env_name(f.name)} must be one of {f.metadata['choices']}")
            if value is not None:
                values[f.name] = value
        config = cls(**values)
        problems = config.problems()
        if problems:
            parser.error("; ".join(problems))
        return config

    def noise_threads_for(self, network_on_this_cpu: bool) -> int:
        """With the network on the same cores, fewer noise threads: one noise thread overlaps
        a batch's fill with the next run, while more preempt ONNX Runtime's own threads, whose
        parallel operators then wait for the slowest (ARS-5 noise, 2 cores: 95,800-106,300
        samples/s with one noise thread against 90,100-97,100 with two,
        `bench/scheduler_loop.py --generators ars5 --settings 1:1024:3,2:1024:3 --rounds 3`)."""
        cores = os.cpu_count() or 1
        return self.noise_threads or (max(1, cores // 4) if network_on_this_cpu else cores)

    @property
    def effective_pipeline_depth(self) -> int:
        """With several Triton endpoints, enough batches in flight to keep them all busy."""
        if self.backend == "triton":
            return max(self.pipeline_depth, 2 * len(self.triton_urls))
        return self.pipeline_depth

    def problems(self) -> list[str]:
        found = []
        if self.batch_size < 0:
            found.append("batch_size must be at least 1, or 0 for each model's own")
        for name in ("pipeline_depth", "default_n0", "default_n", "max_n0", "max_n",
                     "first_look"):  # fmt: skip
            if getattr(self, name) < 1:
                found.append(f"{name} must be at least 1")
        if not 0 < self.default_alpha < 0.5:
            found.append("default_alpha must lie in (0, 0.5)")
        if not 0 < self.max_alpha <= 0.5:
            found.append("max_alpha must lie in (0, 0.5]")
        if self.default_n > self.max_n or self.default_n0 > self.max_n0:
            found.append("defaults must not exceed the maxima")
        if self.default_alpha > self.max_alpha or not 1 <= self.min_n <= self.default_n:
            found.append("default_alpha must not exceed max_alpha, nor min_n default_n")
        for name in ("port", "metrics_port", "http_port"):
            low = 0 if name == "port" else -1
            if not low <= getattr(self, name) <= 65535:
                found.append(f"{name} must lie in [{low}, 65535], got {getattr(self, name)}")
        if self.max_samples_in_flight < self.max_n0 + self.max_n:
            found.append("max_samples_in_flight must be at least max_n0 + max_n")
        if self.max_concurrent_requests < 1 or self.grace_period_s < 0:
            found.append("max_concurrent_requests must be at least 1, grace_period_s at least 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            found.append("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            found.append("--tls-client-ca needs --tls-cert and --tls-key")
        if self.torch_cuda_graphs and not self.batch_size:
            found.append("--torch-cuda-graphs captures one batch size: set --batch-size")
        if self.backend == "triton" and not self.triton_urls:
            found.append("the triton backend needs --triton-urls")
        if self.triton_timeout_s <= 0:
            found.append("triton_timeout_s must be positive")
        if not 0 < self.model_load_timeout_s <= 86_400:
            found.append("model_load_timeout_s must lie in (0, 86400]")
        if not (0 < self.http_header_timeout_s <= 3600 and 0 < self.http_body_timeout_s <= 3600):
            found.append("http_header_timeout_s and http_body_timeout_s must lie in (0, 3600]")
        if self.http_max_connections < 1:
            found.append("http_max_connections must be at least 1")
        if self.model_control_mode != "none" and self.backend == "triton":
            found.append("--model-control-mode poll or explicit needs a backend that loads the "
                         "repository (onnxruntime, torch); Triton has its own model control")
        if self.load_model and self.model_control_mode != "explicit":
            found.append("--load-model needs --model-control-mode explicit")
        if not 0 < self.repository_poll_secs <= 86_400:
            found.append("repository_poll_secs must lie in (0, 86400]")
        if not 0 <= self.max_connection_age_s < 2**31 / 1000:  # gRPC takes it as int32 ms
            found.append("max_connection_age_s must lie in [0, 2147483)")
        return found


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "(empty)"
    return "(none)" if value is None else str(value)
