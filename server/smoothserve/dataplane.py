"""The data plane: validates a request, draws the samples CERTIFY or PREDICT needs through
the scheduler, and applies the statistics. It knows nothing of gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
import weakref
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from smoothcert import procedures
from smoothcert.procedures import Plan, Procedure, selection
from smoothserve_client.types import FAILED, ModelInfo, PredictResult, SigningKey

from . import looks
from .admission import Admission
from .config import ServerConfig
from .errors import (
    BadState,
    FailedPrecondition,
    InvalidArgument,
    ModelFailed,
    NotFound,
)
from .looks import AnswerOverhead, DrawClock, Timing, check_counts
from .metrics import Metrics, ModelStats
from .noise import noise_generator
from .records import Signer, certificate_record
from .repository import ModelVersion, latest
from .request import (  # noqa: F401 - PREDICT..MAX_RANK: the request's names, re-exported
    CERTIFY,
    DTYPES,
    FIXED_N,
    MAX_NAME_CHARS,
    MAX_RANK,
    PREDICT,
    PROCEDURES,
    PredictInput,
    check_request_bounds,
    quote,
)
from .scheduler import BatchScheduler, Tally
from .sound_noise import SoundNoiseError, lattice_indices, sound_lattice
from .tracing import span

log = logging.getLogger(__name__)
UNKNOWN_MODEL = "(unknown)"  # the metric label of every name the server does not serve
class DataPlane:
    """Everything a transport needs: predictions, model information, metric labels and
    request metrics, so that a transport never reaches into the config, models or metrics."""

    def __init__(
        self,
        models: dict[str, dict[str, ModelVersion]],
        schedulers: dict[tuple[str, str], BatchScheduler],
        config: ServerConfig,
        metrics: Metrics,
        admission: Admission | None = None,
        failed: dict[str, str] | None = None,
        backend_name: str = "",
        signer: Signer | None = None,
    ) -> None:
        self.models = models
        self.backend_name = backend_name
        self.failed = failed or {}  # model name -> why it failed to load
        self.schedulers = schedulers
        self.config = config
        self.metrics = metrics
        self.admission = admission or Admission(
            config.max_samples_in_flight, config.max_concurrent_requests, metrics
        )
        self.signer = signer or Signer.from_settings(config.signing_key, config.signing_key_pem)
        self._holds: dict[BatchScheduler, int] = {}  # requests running on each scheduler
        self._idle: dict[BatchScheduler, asyncio.Event] = {}  # set when its last one ends
        self.control = None  # engine.ModelControl: the repository extension's calls
        # draw times, per scheduler (forgotten with a scheduler retired by a reload)
        self.clocks: weakref.WeakKeyDictionary[BatchScheduler, DrawClock] = (
            weakref.WeakKeyDictionary())  # fmt: skip
        self.overhead = AnswerOverhead()

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        check_request_bounds(name, version, 0)
        name = name or self.default_model_name()
        if name in self.failed:
            raise ModelFailed(f"model {name!r} failed to load: {self.failed[name]}")
        versions = self.models.get(name)
        components = getattr(self.control, "components", {})
        if versions is None and name in components:  # an ensemble's step, never served alone
            raise NotFound(f"model {name!r} is {components[name]}")
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
                return UNKNOWN_MODEL
        return name if name in self.models or name in self.failed else UNKNOWN_MODEL

    def default_model_name(self) -> str:
        if self.config.default_model:
            return self.config.default_model
        if not self.models:
            raise NotFound("no model is served")
        return sorted(self.models)[0]

    def model_info(self, name: str, version: str = "") -> ModelInfo:
        """A served model's information, or a failed one's state and reason."""
        check_request_bounds(name, version)
        if name in self.failed:
            return ModelInfo(name=name, state=FAILED, failure_reason=self.failed[name])
        model, cfg = self.resolve(name, version), self.config
        c = model.config
        scheduler = self.schedulers[(model.name, model.version)]
        return ModelInfo(
            name=model.name,
            version=model.version,
            available_versions=tuple(sorted(self.models[model.name], key=int)),
            sha256=model.sha256,
            sigma=c.sigma,
            labels=c.labels,
            input_shape=c.input_shape,
            value_range=c.value_range,
            backend=self.backend_name,
            platform=c.platform,
            max_batch_size=c.max_batch_size,
            noise_family=c.noise_family,
            norm=c.family.norm,
            default_n0=cfg.default_n0,
            default_n=cfg.default_n,
            default_alpha=cfg.default_alpha,
            max_n=cfg.max_n,
            max_alpha=cfg.max_alpha,
            min_n=cfg.min_n,
            batch_size=scheduler.batch_size,
            batch_size_source=scheduler.batch_source,
            noise_generator=scheduler.generator,
        )

    def signing_key(self) -> SigningKey:
        return self.signer.signing_key()

    def list_models(self) -> list[ModelInfo]:
        return [self.model_info(name) for name in sorted({*self.models, *self.failed})]

    # -- the model tables under model control (engine.ModelControl) ---------------------------

    @contextlib.contextmanager
    def holding(self, scheduler: BatchScheduler) -> Iterator[None]:
        """Mark ``scheduler`` in use by one request for the duration of the block."""
        self._holds[scheduler] = self._holds.get(scheduler, 0) + 1
        try:
            yield
        finally:
            self._holds[scheduler] -= 1
            if not self._holds[scheduler]:
                del self._holds[scheduler]
                idle = self._idle.pop(scheduler, None)
                if idle is not None:
                    idle.set()

    async def idle(self, scheduler: BatchScheduler) -> None:
        """Return once no request holds ``scheduler`` (at once if none does)."""
        if scheduler in self._holds:
            await self._idle.setdefault(scheduler, asyncio.Event()).wait()

    def requests_on(self, scheduler: BatchScheduler) -> int:
        return self._holds.get(scheduler, 0)

    def replace_model(
        self, name: str, versions: dict[str, ModelVersion],
        schedulers: dict[str, BatchScheduler], failure: str | None = None,
    ) -> list[tuple[ModelVersion, BatchScheduler]]:  # fmt: skip
        """Serve ``versions`` of ``name`` with their ``schedulers`` (none: stop serving it;
        ``failure``: say why it failed), in one step of the event loop: a request sees the old
        tables or the new ones, never a mix. Returns the versions and schedulers no longer
        served, for the caller to retire once their requests finish."""
        old = self.models.get(name, {})
        gone = [
            (model, self.schedulers[(name, version)])
            for version, model in old.items()
            if version not in versions or schedulers[version] is not self.schedulers[(name, version)]
        ]
        for version in old:
            self.schedulers.pop((name, version), None)
        for version, scheduler in schedulers.items():
            self.schedulers[(name, version)] = scheduler
        if versions:
            self.models[name] = dict(sorted(versions.items(), key=lambda v: int(v[0])))
        else:
            self.models.pop(name, None)
        if failure is None:
            self.failed.pop(name, None)
        else:
            self.failed[name] = failure
        return gone

    def statistics(self, name: str = "", version: str = "") -> list[tuple[str, str, ModelStats]]:
        """(name, version, statistics) of every served version, of a model's, or of one."""
        check_request_bounds(name, version)
        if not name:
            if version:
                raise InvalidArgument("a version needs a model name")
            keys = sorted(self.schedulers, key=lambda k: (k[0], int(k[1])))
        else:
            model = self.resolve(name, version)
            versions = [version] if version else sorted(self.models[model.name], key=int)
            keys = [(model.name, v) for v in versions]
        return [(n, v, self.schedulers[(n, v)].stats) for n, v in keys]

    def request_started(self) -> None:
        self.metrics.in_progress.inc()

    def request_finished(
        self, model: str, mode: str, outcome: str, seconds: float, radius: float | None = None
    ) -> None:
        """Count one Predict request; ``radius`` for a certificate that did not abstain."""
        self.metrics.in_progress.dec()
        self.metrics.requests.labels(model, mode, outcome).inc()
        self.metrics.request_latency.labels(model, mode).observe(seconds)
        if radius is not None:
            self.metrics.certified_radius.labels(model).observe(radius)

    async def predict(self, request: PredictInput) -> PredictResult:
        started = time.perf_counter()
        model = self.resolve(request.model_name, request.model_version)
        # The version and its scheduler are taken once, here: a request admitted before an
        # unload or a reload (model control) finishes on the version it started on, whose
        # scheduler is closed only once no request holds it (``holding``, ``idle``).
        scheduler = self.schedulers[(model.name, model.version)]
        sampling = [0.0]  # seconds spent waiting for samples
        with self.holding(scheduler):
            try:
                result = await self._predict(request, model, scheduler, started, sampling)
            except BaseException:
                scheduler.stats.request(False, time.perf_counter() - started, sampling[0])
                raise
        scheduler.stats.request(True, time.perf_counter() - started, sampling[0])
        return result

    async def _predict(
        self, request: PredictInput, model: ModelVersion, scheduler: BatchScheduler,
        started: float, sampling: list[float],
    ) -> PredictResult:  # fmt: skip
        mode, n0, n, alpha = self.sampling_plan(request)
        procedure, plan = self.procedure_plan(request, model, n, alpha)
        sound = self.sound_plan(request, model)
        self.check_seed_policy(request, model)
        cap_n0 = n0 if procedure.selects else 0
        # Admission first: a refusal costs the server nothing, whatever the input.
        with span("admission", samples=cap_n0 + n):
            ticket = self.admission.admit(cap_n0 + n, model.name)
        clock = self.clocks.setdefault(scheduler, DrawClock())
        timing = Timing(request.deadline, request.arrived, clock, self.overhead)
        try:
            x = decode_input(request, model)
            if sound:
                x = await sound_input(request, model, x)
            rng = noise_generator(request.seed)

            async def draw(num: int, tally: Tally | None = None) -> np.ndarray:
                began = time.perf_counter()
                try:
                    with span("sampling", samples=num):
                        counts = await scheduler.count(x, num, rng, ticket.release, sound, tally)
                finally:
                    sampling[0] += time.perf_counter() - began
                drawn = tally.samples if tally is not None and tally.stopped else num
                clock.add(drawn, time.perf_counter() - began)
                check_counts(counts, drawn, model)
                return counts

            chosen, early = None, looks.start_first_look(procedure, plan, draw, timing)
            try:
                if procedure.selects:
                    chosen = await looks.select(procedure, n0, draw, timing,
                                                model.config.num_classes)  # fmt: skip
                done = await looks.estimate(procedure, plan, draw, chosen, timing, model, early)
            finally:
                if early is not None and not early[1].done():
                    early[1].cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await early[1]
            ticket.finish()
        finally:
            ticket.close()
        outcome, counts = done.outcome, done.counts
        selected = 0 if chosen is None else int(chosen.sum())
        if not (math.isfinite(outcome.radius) and outcome.radius >= 0):
            raise BadState(f"{model.name}: radius {outcome.radius} is not a finite number >= 0")
        if mode == CERTIFY:
            self.metrics.samples_per_certificate.labels(model.name, request.procedure).observe(
                selected + done.drawn
            )
        result = PredictResult(
            prediction=outcome.prediction,
            label="" if outcome.abstain else model.config.labels[outcome.prediction],
            abstain=outcome.abstain,
            radius=outcome.radius,
            p_a_lower=outcome.p_a_lower,
            p_value=outcome.p_value,
            candidate=outcome.candidate,
            counts=tuple(int(c) for c in counts),
            selection_counts=() if chosen is None else tuple(int(c) for c in chosen),
            mode=mode,
            n0=selected,
            n=int(counts.sum()),
            alpha=alpha,
            sigma=plan.scale,
            model_name=model.name,
            model_version=model.version,
            model_sha256=model.sha256,
            server_time_seconds=time.perf_counter() - started,
            seed=request.seed,
            procedure=request.procedure if mode == CERTIFY else FIXED_N,
            target_radius=plan.target_radius,
            bound_alpha=outcome.bound_alpha,
            looks=done.look if procedure.sequential else 0,
            look_schedule=done.schedule if procedure.sequential else (),
            tolerance=plan.tolerance,
            sound_noise=sound,
            noise_family=plan.family.name,
            norm=plan.family.norm,
        )
        extra = None
        if procedure.sequential:
            extra = {"cap": plan.cap}
            if procedure.adaptive_selection:
                extra["selection"] = {"first": selection.SELECTION_FIRST, "cap": n0,
                                      "level": selection.SELECTION_LEVEL}  # fmt: skip
            if procedure.timed:
                extra.update(horizon=done.horizon, timed=done.timed)
        with span("sign"):
            signed = self.signed(result, request, model, scheduler, plan=extra)
        self.overhead.add(time.monotonic() - done.ended)
        return signed

    def signed(
        self, result: PredictResult, request: PredictInput, model: ModelVersion | None = None,
        scheduler: BatchScheduler | None = None, plan: dict | None = None,
    ) -> PredictResult:  # fmt: skip
        """The result with its certificate record and the record's signature (``records.py``):
        the record binds the served model's smoothing config and the look plan (the server's
        first look; ``plan``: the rest of a sequential procedure's, ``records.look_plan``).
        ``model`` and ``scheduler``: those the request ran on (default: the ones served now
        under its name and version)."""
        key = (result.model_name, result.model_version)
        scheduler = scheduler or self.schedulers[key]
        generator = "pcg64" if result.sound_noise else scheduler.generator
        model = model or self.models[key[0]][key[1]]
        record = certificate_record(
            result, hashlib.sha256(request.data).hexdigest(), tuple(request.shape),
            request.dtype, self.signer.key_id, noise_generator=generator,
            model_config=model.config, first_look=self.config.first_look, plan=plan,
        )  # fmt: skip
        return replace(result, record=record, record_signature=self.signer.sign(record))

    def sound_plan(self, request: PredictInput, model: ModelVersion) -> bool:
        """Whether the request's noise is floating-point-sound: the model's config turns it on
        for every request, a request may turn it on for itself, but not off where the config
        has it on; backends that draw noise on their device cannot draw it."""
        configured = model.config.sound_noise
        if configured and request.sound_noise is False:
            raise InvalidArgument(
                f"model {model.name!r} is configured for floating-point-sound noise; a request "
                "cannot turn it off"
            )
        sound = configured or bool(request.sound_noise)
        if sound and not model.config.family.supports_sound_noise:
            raise FailedPrecondition(
                f"model {model.name!r} uses {model.config.noise_family} noise; floating-point-"
                "sound noise exists for Gaussian noise only"
            )
        scheduler = self.schedulers[(model.name, model.version)]
        if sound and not scheduler.supports_sound_noise:
            raise FailedPrecondition(
                f"model {model.name!r} has its noise drawn outside this server (backend "
                f"{self.backend_name!r}: on its device, or by a Triton sampler), which has no "
                "floating-point-sound mode; sound noise needs host noise (onnxruntime, or triton "
                "without a sampler for the model)"
            )
        return sound

    def check_seed_policy(self, request: PredictInput, model: ModelVersion) -> None:
        """Client-chosen seeds only where the operator allows them (audits): a client that
        picks the seed can try seeds until a wrong answer certifies, then replay it."""
        if request.seed is None:
            return
        allowed = self.config.allow_client_seeds
        self.metrics.seeded_requests.labels(model.name, str(allowed).lower()).inc()
        if not allowed:
            raise FailedPrecondition(
                "this server chooses the noise itself: requests may not set a seed (an operator "
                "may allow seeds for audits with --allow-client-seeds)"
            )

    def procedure_plan(
        self, request: PredictInput, model: ModelVersion, n: int, alpha: float
    ) -> tuple[Procedure, Plan]:
        """The request's procedure (PREDICT for mode predict) and its plan, checked by the
        procedure before any sample is drawn."""
        name = request.procedure if request.mode == CERTIFY else PREDICT
        c = model.config
        plan = Plan(
            alpha=alpha, family=c.family, scale=c.sigma, cap=n, first_look=self.config.first_look,
            target_radius=request.target_radius or 0.0, tolerance=request.tolerance or 0.0,
        )  # fmt: skip
        try:
            procedure = procedures.get(name)
            procedure.check(plan)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        return procedure, plan

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
        if request.procedure not in PROCEDURES:
            raise InvalidArgument(f"unknown procedure {request.procedure!r}")
        if request.procedure != FIXED_N and request.mode != CERTIFY:
            raise InvalidArgument("sequential procedures certify: use mode CERTIFY")
        if alpha > c.max_alpha:
            raise InvalidArgument(f"this server certifies at alpha <= {c.max_alpha}, got {alpha}")
        if n < c.min_n:
            raise InvalidArgument(f"this server needs n >= {c.min_n}, got {n}")
        return request.mode, n0, n, alpha


async def sound_input(request: PredictInput, model: ModelVersion, x: np.ndarray) -> np.ndarray:
    """The input's lattice indices (int16, in [0, 255]) for sound noise, or InvalidArgument
    for a float32 input off the lattice. ``x`` is the decoded input."""
    c = model.config
    try:  # cached after the first call; building it takes a fraction of a second
        lattice = await asyncio.to_thread(sound_lattice, c.sigma, *c.value_range)
    except SoundNoiseError as exc:
        raise FailedPrecondition(f"model {c.name!r} cannot use sound noise: {exc}") from None
    if request.dtype == "uint8":
        return np.frombuffer(request.data, np.uint8).reshape(c.input_shape).astype(np.int16)
    indices = lattice_indices(x, lattice)
    if indices is None:
        low, high = c.value_range
        raise InvalidArgument(
            "sound noise needs the input on the model's 8-bit lattice: every float32 pixel must "
            f"be the float32 of {low} + k ({high} - {low}) / 255 for an integer k in [0, 255] "
            "(for [0, 1]: np.float32(k / 255)); send uint8 pixels to be sure"
        )
    return indices


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
