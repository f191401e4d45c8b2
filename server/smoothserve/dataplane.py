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
from dataclasses import dataclass, replace

import numpy as np

from smoothcert import procedures
from smoothcert.errors import NumericalError
from smoothcert.procedures import CONTINUE, Outcome, Plan, Procedure, anytime, selection
from smoothserve_client.types import FAILED, ModelInfo, PredictResult, SigningKey

from .admission import Admission
from .config import ServerConfig
from .errors import (
    BadState,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelFailed,
    NotFound,
)
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
# Anytime certificates stop sampling a margin before the deadline: the server's own answer
# overhead as measured (``AnswerOverhead``), at least this much (the transport's share, which
# the data plane does not see) and at most ANSWER_MARGIN_MAX_S.
ANSWER_MARGIN_FLOOR_S = 0.005
ANSWER_MARGIN_MAX_S = 0.1
# ... plus this share of the request's whole time budget: the answer's way back through gRPC's
# threads, which share the cores with the noise and the network, grows with the look cut at the
# margin (a 1 s anytime request lost about one answer in ten to it without).
ANSWER_MARGIN_SHARE = 0.02
# The last look is sized to all the time left, and the deadline cuts it if the measured time per
# sample was optimistic; the horizon, which sets the looks' levels, is this share of it, so that a
# look cut a little short still gets nearly all of alpha (a look past the horizon gets more).
LOOK_TIME_SHARE = 0.8


class DrawClock:
    """How long a draw of ``num`` samples takes on one scheduler, as measured: seconds = a + b
    num, with a (the cost of a draw of any size) the exponentially weighted mean time of small
    draws (at most SMALL samples) and b (per sample) that of large draws (at least LARGE)
    beyond a, over the latest draws of every request; a request's own draws count as soon as
    they are made, so a busy server shows at once. Until a large draw is seen, b is the time
    per sample of the largest draw so far, all of it (pessimistic). Anytime looks are sized
    with it; it sees the time only, never the votes."""

    SMALL, LARGE = 128, 512
    WEIGHT = 0.3  # of the latest draw in each mean

    def __init__(self) -> None:
        self.fixed: float | None = None  # a
        self.per_sample: float | None = None  # b, from large draws
        self.largest: tuple[int, float] = (0, 0.0)  # the largest draw: (num, seconds)

    @property
    def calibrated(self) -> bool:
        """Whether b comes from a large draw."""
        return self.per_sample is not None

    def add(self, num: int, seconds: float) -> None:
        if num <= self.SMALL:
            self.fixed = seconds if self.fixed is None else (
                self.fixed + self.WEIGHT * (seconds - self.fixed))  # fmt: skip
        if num >= self.largest[0]:
            self.largest = (num, seconds)
        if num >= self.LARGE:
            rate = max(seconds - (self.fixed or 0.0), 0.0) / num
            self.per_sample = rate if self.per_sample is None else (
                self.per_sample + self.WEIGHT * (rate - self.per_sample))  # fmt: skip

    def fits(self, seconds: float) -> int:
        """How many samples one draw can take in ``seconds`` (0 if none, or nothing measured)."""
        if self.per_sample is not None and self.per_sample > 0:
            a, b = self.fixed or 0.0, self.per_sample
        elif self.largest[0] > 0:
            a, b = 0.0, self.largest[1] / self.largest[0]
        else:
            return 0
        return max(0, int((seconds - a) / b)) if b > 0 and seconds > 0 else 0


class AnswerOverhead:
    """The time from the end of a request's sampling (or the moment a deadline was due to cut
    its last look) to its signed answer, as measured on this server: statistics, record,
    signature, and the event loop's lag on a loaded machine. The margin is the larger of the
    exponentially weighted mean plus four mean absolute deviations and 1.5 times the recent
    peak (the largest overhead seen, decaying by PEAK_DECAY with each request: a spike raises
    the margin at once), plus ANSWER_MARGIN_FLOOR_S, at most ANSWER_MARGIN_MAX_S."""

    WEIGHT = 0.1
    PEAK_DECAY = 0.95

    def __init__(self, mean: float = 0.003, deviation: float = 0.002) -> None:
        self.mean, self.deviation, self.peak = mean, deviation, mean

    def add(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.deviation += self.WEIGHT * (abs(seconds - self.mean) - self.deviation)
        self.mean += self.WEIGHT * (seconds - self.mean)
        self.peak = max(seconds, self.peak * self.PEAK_DECAY)

    def margin(self) -> float:
        spread = max(self.mean + 4 * self.deviation, 1.5 * self.peak)
        return min(ANSWER_MARGIN_MAX_S, spread + ANSWER_MARGIN_FLOOR_S)


@dataclass
class Looks:
    """What the estimation looks gave: the answer's outcome, the counts and index of the look
    it comes from, the schedule a record names (planned; a deadline's: the looks made), all
    the estimation samples drawn, anytime's horizon and whether a deadline timed the looks,
    and when sampling ended (or was due to end)."""

    outcome: Outcome
    counts: np.ndarray
    look: int
    schedule: tuple[int, ...]
    drawn: int
    horizon: int = 0
    timed: bool = False
    ended: float = 0.0


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
                return "(unknown)"
        return name if name in self.models or name in self.failed else "(unknown)"

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
                clock.add(num, time.perf_counter() - began)
                check_counts(counts, num, model)
                return counts

            chosen, early = None, None
            if procedure.timed and request.deadline is not None:
                # Under a deadline the first look is drawn beside the selection (one round
                # trip less): its samples are a separate draw, independent of the selection's,
                # and its size comes from the clock.
                left = self._seconds_left(request)
                fits = clock.fits(left) if clock.calibrated else plan.first_look
                size = anytime.timed_look_size(0, plan.cap, plan.first_look, fits, plan.tolerance)
                early = (size, asyncio.ensure_future(draw(size)))
            try:
                if procedure.selects:
                    chosen = await self._selection(request, procedure, n0, draw, clock,
                                                   model.config.num_classes)  # fmt: skip
                done = await self._looks(request, procedure, plan, draw, chosen, clock, model,
                                         early)  # fmt: skip
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

    def _seconds_left(self, request: PredictInput) -> float | None:
        """Seconds to the request's deadline less the answer margin (the measured answer
        overhead and ANSWER_MARGIN_SHARE of the request's budget); None without a deadline."""
        if request.deadline is None:
            return None
        share = ANSWER_MARGIN_SHARE * max(0.0, request.deadline - request.arrived)
        return request.deadline - self.overhead.margin() - share - time.monotonic()

    async def _selection(
        self, request: PredictInput, procedure: Procedure, n0: int, draw, clock: DrawClock,
        classes: int,
    ) -> np.ndarray:  # fmt: skip
        """The selection counts: n0 samples, or, for a procedure with adaptive selection,
        looks of ``selection.selection_schedule(n0)`` until ``selection.selection_stops`` (the
        top class clear) or the time left before a deadline would not hold the next one twice
        over. Any rule is valid here: the estimation samples are drawn afterwards, afresh."""
        if not procedure.adaptive_selection:
            return await draw(n0)
        counts, drawn = np.zeros(classes, np.int64), 0
        for size in selection.selection_schedule(n0):
            if drawn:
                left = self._seconds_left(request)
                if left is not None and clock.fits(left / 2) < size - drawn:
                    break  # the deadline: keep the time for the estimation looks
            counts += await draw(size - drawn)
            drawn = size
            if selection.selection_stops(counts):
                break
        return counts

    async def _looks(
        self, request: PredictInput, procedure: Procedure, plan: Plan, draw,
        selection_counts: np.ndarray | None, clock: DrawClock, model: ModelVersion, early=None,
    ) -> Looks:  # fmt: skip
        """The estimation samples, drawn look by look on the procedure's schedule (one look
        at n unless it is sequential), each look decided by the procedure
        (``smoothcert.procedures``): stops as soon as it decides, or at the cap. An anytime
        certificate under a deadline sizes its looks to the time left (``_timed_looks``), and
        answers with its best look."""
        if procedure.timed and request.deadline is not None:
            return await self._timed_looks(request, procedure, plan, draw, selection_counts,
                                           clock, model, early)  # fmt: skip
        schedule = procedure.schedule(plan)
        counts = np.zeros(model.config.num_classes, np.int64)
        outcomes: list[Outcome] = []
        snapshots: list[np.ndarray] = []
        drawn = 0
        for k, size in enumerate(schedule, 1):
            counts += await draw(size - drawn)
            drawn = size
            outcome = self._decide(procedure, plan, schedule, k, selection_counts, counts)
            outcomes.append(outcome)
            snapshots.append(counts.copy())
            if outcome.decision != CONTINUE:
                break
        answer = anytime.best(outcomes) if procedure.anytime else len(outcomes) - 1
        return Looks(outcomes[answer], snapshots[answer], answer + 1, schedule, drawn,
                     ended=time.monotonic())  # fmt: skip

    async def _timed_looks(
        self, request: PredictInput, procedure: Procedure, plan: Plan, draw,
        selection_counts: np.ndarray | None, clock: DrawClock, model: ModelVersion, early=None,
    ) -> Looks:  # fmt: skip
        """Anytime looks under a deadline: each sized by ``anytime.timed_look_size`` to what
        the time left (less the answer margin) holds at the measured time per sample
        (``DrawClock``), the horizon fixed before the second look as ``LOOK_TIME_SHARE`` of the
        samples the time left holds. A look still running at the margin is cut there and keeps
        the batches classified by then, a look of that many samples if it adds at least a
        tenth to the samples before it (else the looks before it stand). Sizes, cuts and
        horizon come from the clock, never from the votes. Answers with the best look;
        DeadlineExceeded only when the first look is not back in time. ``early``: the first
        look's size and its draw, started beside the selection."""
        classes = model.config.num_classes
        counts = np.zeros(classes, np.int64)
        made: list[int] = []
        outcomes: list[Outcome] = []
        snapshots: list[np.ndarray] = []
        drawn, ended, decided = 0, None, False
        while True:
            left = self._seconds_left(request)
            # the first look shrinks only for a clock measured on a large draw
            fits = clock.fits(left) if made or clock.calibrated else plan.first_look
            size = anytime.timed_look_size(drawn, plan.cap, plan.first_look, fits,
                                           plan.tolerance, plan.horizon, len(made),
                                           clock.calibrated)  # fmt: skip
            if not made and early is not None:
                size = early[0]
            if size == 0:
                break
            if len(made) == 1:  # the horizon, fixed before the second look, from the clock
                horizon = drawn + int(LOOK_TIME_SHARE * fits)
                plan = replace(plan, horizon=max(made[0], min(plan.cap, horizon)))
            stop_at = request.deadline if not made else time.monotonic() + left
            tally, began = Tally(np.zeros(classes, np.int64)), time.perf_counter()
            try:
                async with asyncio.timeout_at(self._loop_time(stop_at)):
                    if not made and early is not None:
                        counts += await early[1]
                    else:
                        counts += await draw(size - drawn, tally)
                drawn = size
            except TimeoutError:
                if not made:
                    raise DeadlineExceeded("the deadline passed before the first look was "
                                           "complete") from None  # fmt: skip
                ended = stop_at
                if tally.samples:  # what the cut look drew in its time teaches the clock
                    clock.add(tally.samples, time.perf_counter() - began)
                if tally.samples < max(1, math.ceil(drawn / 10)):
                    break  # the looks before it stand
                check_counts(tally.counts, tally.samples, model)
                counts += tally.counts  # the look cut at the margin: what was classified by then
                drawn += tally.samples
            made.append(drawn)
            outcome = self._decide(procedure, plan, tuple(made), len(made), selection_counts,
                                   counts)  # fmt: skip
            outcomes.append(outcome)
            snapshots.append(counts.copy())
            if ended is not None:
                break
            if outcome.decision != CONTINUE:
                decided = True
                break
        if not outcomes:
            raise DeadlineExceeded("the deadline passed before the first look was complete")
        answer = anytime.best(outcomes)
        ended = time.monotonic() if ended is None else ended
        planned = procedure.schedule(replace(plan, horizon=0))
        if decided and plan.horizon in (0, plan.cap) and tuple(made) == planned[: len(made)]:
            # a deadline that never bound: the planned looks at the planned levels, as without
            return Looks(outcomes[answer], snapshots[answer], answer + 1, planned, drawn,
                         ended=ended)  # fmt: skip
        return Looks(outcomes[answer], snapshots[answer], answer + 1, tuple(made), drawn,
                     horizon=plan.horizon, timed=True, ended=ended)  # fmt: skip

    @staticmethod
    def _decide(procedure, plan, schedule, k, selection_counts, counts) -> Outcome:
        with span("statistics", procedure=procedure.name, look=k):
            try:
                return procedure.look(plan, schedule, k, selection_counts, counts)
            except NumericalError as exc:
                raise BadState(str(exc)) from None

    @staticmethod
    def _loop_time(monotonic: float) -> float:
        """A time.monotonic() instant in event-loop time."""
        return asyncio.get_running_loop().time() + (monotonic - time.monotonic())

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
