"""The data plane: validates a request, draws the samples CERTIFY or PREDICT needs through
the scheduler, and applies the statistics. It knows nothing of gRPC."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from . import certify as stats
from .admission import Admission
from .config import ServerConfig
from .errors import BadState, InvalidArgument, ModelFailed, NotFound
from .metrics import Metrics
from .noise import noise_generator
from .repository import ModelVersion, latest
from .scheduler import BatchScheduler

log = logging.getLogger(__name__)
CERTIFY, PREDICT = "certify", "predict"
DTYPES = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}
# Checked before anything else is read from a request, so that no error message, log line or
# copy grows with what a client sends.
MAX_NAME_CHARS = 256
MAX_VERSION_CHARS = 19  # a version is a decimal number that fits in int64
MAX_RANK = 8
MAX_TENSOR_HEADER_BYTES = MAX_RANK * 11 + 16  # shape (packed or not) and dtype, on the wire
QUOTE_CHARS = 64


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """Client data in a message: repr of at most ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def check_request_bounds(model_name: str, model_version: str, rank: int = 0) -> None:
    """The bounds a request must meet before the server copies or quotes any of it."""
    if len(model_name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"model name longer than {MAX_NAME_CHARS} characters")
    if len(model_version) > MAX_VERSION_CHARS:
        raise InvalidArgument(f"model version longer than {MAX_VERSION_CHARS} characters")
    if rank > MAX_RANK:
        raise InvalidArgument(f"input shape has {rank} dimensions; at most {MAX_RANK} are allowed")


def check_tensor_header(header_bytes: int) -> None:
    """The shape and dtype of an input take at most a few bytes on the wire; more means a
    shape of too many dimensions, refused before it is built (it may take 16x its bytes)."""
    if header_bytes > MAX_TENSOR_HEADER_BYTES:
        raise InvalidArgument(f"input shape has more than {MAX_RANK} dimensions")


@dataclass(frozen=True)
class PredictInput:
    model_name: str
    model_version: str
    shape: tuple[int, ...]
    dtype: str  # "float32" or "uint8"; anything else is rejected
    data: bytes
    mode: str = CERTIFY
    n0: int | None = None
    n: int | None = None
    alpha: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class PredictOutput:
    prediction: int
    label: str
    abstain: bool
    radius: float
    p_a_lower: float
    p_value: float
    candidate: int
    counts: np.ndarray
    selection_counts: np.ndarray | None
    mode: str
    n0: int
    n: int
    alpha: float
    sigma: float
    model: ModelVersion
    server_time_seconds: float
    seed: int | None


class DataPlane:
    def __init__(
        self,
        models: dict[str, dict[str, ModelVersion]],
        schedulers: dict[tuple[str, str], BatchScheduler],
        config: ServerConfig,
        metrics: Metrics,
        admission: Admission | None = None,
        failed: dict[str, str] | None = None,
    ) -> None:
        self.models = models
        self.failed = failed or {}  # model name -> why it failed to load
        self.schedulers = schedulers
        self.config = config
        self.metrics = metrics
        self.admission = admission or Admission(
            config.max_samples_in_flight, config.max_concurrent_requests, metrics
        )

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        check_request_bounds(name, version, 0)
        name = name or self.default_model_name()
        if name in self.failed:
            raise ModelFailed(f"model {name!r} failed to load: {self.failed[name]}")
        versions = self.models.get(name)
        if versions is None:
            raise NotFound(f"model {quote(name)} is not served; models: {sorted(self.models)}")
        if not version:
            return latest(versions)
        if version not in versions:
            raise NotFound(
                f"model {name!r} has no version {quote(version)}; versions: {sorted(versions)}"
            )
        return versions[version]

    def metric_label(self, name: str) -> str:
        """The model label of a request's metrics: its model, or the default when it names
        none. Names the server does not know all count as "(unknown)", so clients cannot grow
        the metrics without bound."""
        if not name:
            try:
                name = self.default_model_name()
            except NotFound:
                return "(unknown)"
        return name if name in self.models or name in self.failed else "(unknown)"

    def default_model_name(self) -> str:
        if self.config.default_model:
            return self.config.default_model
        if not self.models:
            raise NotFound("no model is served")
        return sorted(self.models)[0]

    async def predict(self, request: PredictInput) -> PredictOutput:
        started = time.perf_counter()
        model = self.resolve(request.model_name, request.model_version)
        mode, n0, n, alpha = self.sampling_plan(request)
        # Admission first: a refusal costs the server nothing, whatever the input.
        ticket = self.admission.admit((n0 if mode == CERTIFY else 0) + n)
        estimating = False
        try:
            x = decode_input(request, model)
            scheduler = self.schedulers[(model.name, model.version)]
            rng = noise_generator(request.seed)
            sigma = model.config.sigma
            if mode == CERTIFY:
                selection = await scheduler.count(x, n0, rng, ticket.release)
                check_counts(selection, n0, model)
                estimating = True
                estimation = await scheduler.count(x, n, rng, ticket.release)
                check_counts(estimation, n, model)
                result = stats.certify(selection, estimation, sigma, alpha)
                radius, p_a_lower, p_value = result.radius, result.p_a_lower, 0.0
                if not (math.isfinite(radius) and radius >= 0):
                    raise BadState(f"{model.name}: radius {radius} is not a finite number >= 0")
            else:
                estimating = True
                selection, estimation = None, await scheduler.count(x, n, rng, ticket.release)
                check_counts(estimation, n, model)
                result = stats.predict(estimation, alpha)
                radius, p_a_lower, p_value = 0.0, 0.0, result.p_value
        finally:
            ticket.close()
            if not estimating:  # failed or cancelled before the estimation phase began
                self.metrics.samples_abandoned.labels(model.name).inc(n)
        labels = model.config.labels
        return PredictOutput(
            prediction=result.prediction,
            label="" if result.abstain else labels[result.prediction],
            abstain=result.abstain,
            radius=radius,
            p_a_lower=p_a_lower,
            p_value=p_value,
            candidate=result.candidate,
            counts=estimation,
            selection_counts=selection,
            mode=mode,
            n0=n0 if mode == CERTIFY else 0,
            n=n,
            alpha=alpha,
            sigma=sigma,
            model=model,
            server_time_seconds=time.perf_counter() - started,
            seed=request.seed,
        )

    def sampling_plan(self, request: PredictInput) -> tuple[str, int, int, float]:
        """Mode, n0, n and alpha after defaults, each checked against the server's limits."""
        c = self.config
        if request.mode not in (CERTIFY, PREDICT):
            raise InvalidArgument(f"unknown mode {request.mode!r}")
        n0 = c.default_n0 if request.n0 is None else request.n0
        n = c.default_n if request.n is None else request.n
        alpha = c.default_alpha if request.alpha is None else request.alpha
        if request.mode == CERTIFY and not 1 <= n0 <= c.max_n0:
            raise InvalidArgument(f"n0 must lie in [1, {c.max_n0}], got {n0}")
        if not 1 <= n <= c.max_n:
            raise InvalidArgument(f"n must lie in [1, {c.max_n}], got {n}")
        if not (math.isfinite(alpha) and 0 < alpha < 0.5):
            raise InvalidArgument(f"alpha must lie in (0, 0.5), got {alpha}")
        if alpha > c.max_alpha:
            raise InvalidArgument(f"this server certifies at alpha <= {c.max_alpha}, got {alpha}")
        if n < c.min_n:
            raise InvalidArgument(f"this server needs n >= {c.min_n}, got {n}")
        return request.mode, n0, n, alpha


def check_counts(counts: np.ndarray, drawn: int, model: ModelVersion) -> None:
    """Votes must account for every sample drawn, one per class of the model: anything else
    means a backend and its config disagree, and no certificate may come of it."""
    total = int(counts.sum())
    if counts.shape != (model.config.num_classes,) or total != drawn or counts.min() < 0:
        log.error(
            "%s version %s: %d votes over %d classes for %d samples drawn; no certificate",
            model.name, model.version, total, counts.size, drawn,
        )  # fmt: skip
        raise BadState(f"model {model.name!r} gave inconsistent votes; no certificate was made")


def decode_input(request: PredictInput, model: ModelVersion) -> np.ndarray:
    """The input as float32 in the model's pixel space, or InvalidArgument saying what is wrong."""
    spec = model.config
    if request.dtype not in DTYPES:
        raise InvalidArgument(f"dtype must be float32 or uint8, got {request.dtype or 'unspecified'}")
    if tuple(request.shape) != spec.input_shape:
        raise InvalidArgument(
            f"model {spec.name!r} takes shape {list(spec.input_shape)}, got {list(request.shape)}"
        )
    dtype = DTYPES[request.dtype]
    expected = math.prod(spec.input_shape) * dtype.itemsize
    if len(request.data) != expected:
        raise InvalidArgument(
            f"shape {list(request.shape)} of {request.dtype} needs {expected} bytes, "
            f"got {len(request.data)}"
        )
    array = np.frombuffer(request.data, dtype=dtype).reshape(spec.input_shape)
    low, high = spec.value_range
    if request.dtype == "uint8":
        return (array.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low))
    if not np.isfinite(array).all():
        raise InvalidArgument("input contains NaN or Inf")
    if array.min() < low or array.max() > high:
        raise InvalidArgument(f"float32 input must lie in [{low}, {high}]")
    return array.astype(np.float32)
