"""The data plane: validates a request, draws the samples CERTIFY or PREDICT needs through
the scheduler, and applies the statistics. It knows nothing of gRPC."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from . import certify as stats
from .admission import Admission
from .config import ServerConfig
from .errors import InvalidArgument, NotFound
from .metrics import Metrics
from .noise import noise_generator
from .repository import ModelVersion, latest
from .scheduler import BatchScheduler

CERTIFY, PREDICT = "certify", "predict"
DTYPES = {"float32": np.dtype("<f4"), "uint8": np.dtype("u1")}


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
    ) -> None:
        self.models = models
        self.schedulers = schedulers
        self.config = config
        self.metrics = metrics
        self.admission = admission or Admission(
            config.max_samples_in_flight, config.max_concurrent_requests, metrics
        )

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        name = name or self.default_model_name()
        versions = self.models.get(name)
        if versions is None:
            raise NotFound(f"model {name!r} is not served; models: {sorted(self.models)}")
        if not version:
            return latest(versions)
        if version not in versions:
            raise NotFound(f"model {name!r} has no version {version!r}; versions: {sorted(versions)}")
        return versions[version]

    def default_model_name(self) -> str:
        if self.config.default_model:
            return self.config.default_model
        if not self.models:
            raise NotFound("no model is served")
        return sorted(self.models)[0]

    async def predict(self, request: PredictInput) -> PredictOutput:
        started = time.perf_counter()
        model = self.resolve(request.model_name, request.model_version)
        x = decode_input(request, model)
        mode, n0, n, alpha = self.sampling_plan(request)
        scheduler = self.schedulers[(model.name, model.version)]
        rng = noise_generator(request.seed)
        sigma = model.config.sigma
        ticket = self.admission.admit((n0 if mode == CERTIFY else 0) + n)
        estimating = False
        try:
            if mode == CERTIFY:
                selection = await scheduler.count(x, n0, rng, ticket.release)
                estimating = True
                estimation = await scheduler.count(x, n, rng, ticket.release)
                result = stats.certify(selection, estimation, sigma, alpha)
                radius, p_a_lower, p_value = result.radius, result.p_a_lower, 0.0
            else:
                estimating = True
                selection, estimation = None, await scheduler.count(x, n, rng, ticket.release)
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
        return request.mode, n0, n, alpha


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
