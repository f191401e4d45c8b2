"""The engine: backend -> one batch scheduler per model version -> data plane, assembled from the
config, with no transport. ``app.Server`` puts the doors (gRPC, OIP, metrics), TLS and health
around it; benchmarks and tools build it alone (``build_engine``).

Models are loaded and unloaded one at a time by ``ModelControl`` (Triton's model control:
``--model-control-mode none|poll|explicit``), at start-up as at runtime: ``ModelControl.load``
is the one loading path (repository scan and config checks, the backend's load with its time
limit, the batch size, a started scheduler per version, then the data plane's tables swapped
in one step of the event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field, replace

from . import noise, repository
from .admission import Admission
from .backends import create_backend
from .backends.base import Backend
from .batch_tuning import CoreSplit, choose_batch_size, measure_core_split
from .config import ServerConfig
from .dataplane import DataPlane
from .errors import ModelFailed, NotFound, SmoothServeError, Unavailable
from .metrics import Metrics
from .records import Signer
from .repository import NOT_IN_REPOSITORY, IsComponent, ModelStates, ModelVersion
from .request import check_request_bounds
from .scheduler import BatchScheduler

log = logging.getLogger("smoothserve")
NONE, POLL, EXPLICIT = "none", "poll", "explicit"
ALL_MODELS = "*"  # --load-model: every model of the repository, as Triton
# Repository index states (Triton's ModelReadyState names)
READY, UNAVAILABLE, UNLOADING = "READY", "UNAVAILABLE", "UNLOADING"


class EngineError(Exception):
    """The engine cannot start; the message is one line for the operator."""


@dataclass
class IndexEntry:
    """One line of the repository index: a model version's state, or a model's."""

    name: str
    version: str
    state: str
    reason: str = ""


@dataclass
class ModelControl:
    """Loads, reloads and unloads models while the server runs, and lists the repository.

    A version no longer served (unloaded, removed by the repository's version policy or
    replaced by a reload) is *retired*: it leaves the data plane's tables at once, so new
    requests no longer reach it, while the requests already running on it keep its
    ``ModelVersion`` and scheduler (``DataPlane.predict`` took both when it started) and finish
    there; once the last one ends (``DataPlane.idle``) the scheduler is closed and the backend
    drops the network."""

    config: ServerConfig
    backend: Backend
    metrics: Metrics
    plane: DataPlane
    generator: str
    retiring: dict[BatchScheduler, ModelVersion] = field(default_factory=dict)
    unloaded: set[str] = field(default_factory=set)  # names unloaded since start-up
    # ensembles' components met by a load: not served alone; by name, what they are
    components: dict[str, str] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _fingerprints: dict[str, tuple] = field(default_factory=dict)
    _poller: asyncio.Task | None = None

    @property
    def mode(self) -> str:
        return self.config.model_control_mode

    # -- loading -------------------------------------------------------------------------------

    async def load(self, name: str) -> None:
        """Load (or reload) every version of ``name`` its version policy serves. On success the
        new versions are served and the others retired; on failure a model that was served
        stays served as it was (as Triton), and one that was not is marked failed with the
        reason. Raises NotFound (no such model folder) or ModelFailed (the reason)."""
        async with self._lock:
            await self._load(name)

    async def _load(self, name: str) -> None:
        repo = self.config.model_repo
        if self.mode == POLL:  # what this load saw; a change after it reloads the model
            self._fingerprints[name] = await asyncio.to_thread(
                repository.fingerprint, repo / name
            )
        try:
            states = await asyncio.to_thread(repository.scan, repo, [name])
        except NotFound as exc:  # the repository itself is gone
            states = ModelStates(root=repo)
            states.fail(name, str(exc))
        current = self.plane.models.get(name, {})
        if name in states.components:  # served only through the ensembles that name it
            self.components[name] = states.components[name]
            if current or name in self.plane.failed:  # it was a model of its own until now
                for model, scheduler in self.plane.replace_model(name, {}, {}):
                    self._retire(model, scheduler)
                self._count_models()
            raise IsComponent(f"model {name!r} is {states.components[name]}")
        self.components.pop(name, None)
        ready = states.ready.get(name, {})
        kept = {v: m for v, m in ready.items() if current.get(v) == m}  # loaded and unchanged
        fresh = ModelStates(failed=states.failed, root=states.root)  # the versions to load
        if name in states.ready:
            fresh.ready[name] = {v: m for v, m in ready.items() if v not in kept}
        batch_problem(self.config, fresh, name)
        if fresh.ready.get(name):
            await self.backend.load_model(fresh, name)
        schedulers: dict[str, BatchScheduler] = {}
        if name in fresh.ready:
            try:
                for version, model in fresh.ready[name].items():
                    schedulers[version] = await self._scheduler(model)
            except Exception as exc:  # batch tuning failed: the model is not served
                log.exception("model %s: no scheduler", name)
                fresh.fail(name, f"model {name}: {exc}")
                for scheduler in schedulers.values():
                    await scheduler.close()
                for model in fresh.ready.get(name, {}).values():
                    self.backend.unload_model(model)
                schedulers = {}
        if name not in fresh.ready:
            reason = fresh.failed[name]
            if reason.endswith(NOT_IN_REPOSITORY):  # nothing to list under that name
                raise NotFound(f"failed to load {name!r}: {reason}")
            if current:
                log.error("model %s: reload failed, versions %s still served: %s", name,
                          ", ".join(current), reason)  # fmt: skip
            else:
                self.plane.replace_model(name, {}, {}, failure=reason)
                self._count_models()
            raise ModelFailed(f"failed to load {name!r}: {reason}")
        served = {**kept, **fresh.ready[name]}
        schedulers |= {v: self.plane.schedulers[(name, v)] for v in kept}
        gone = self.plane.replace_model(name, served, schedulers)  # one step: no await
        self.unloaded.discard(name)
        for model, scheduler in gone:
            self._retire(model, scheduler)
        self._count_models()
        log.info("model %s: serving versions %s (%s)", name, ", ".join(served),
                 served[max(served, key=int)].config.version_policy.describe())  # fmt: skip

    async def install(self, name: str, versions: dict[str, ModelVersion]) -> None:
        """Serve ``versions`` that a backend discovered loaded (Triton) with their schedulers."""
        schedulers = {v: await self._scheduler(m) for v, m in versions.items()}
        self.plane.replace_model(name, versions, schedulers)
        self._count_models()

    async def _scheduler(self, model: ModelVersion) -> BatchScheduler:
        c = self.config
        batch = await choose_batch_size(self.backend, model, c.batch_size)
        noise_threads = c.noise_threads_for(self.backend.uses_host_cpu)
        split = await self._split_cores(model, batch.size, noise_threads)
        scheduler = BatchScheduler(
            model, self.backend, self.metrics, batch.size, c.effective_pipeline_depth,
            noise_threads, self.generator, batch.source,
        )  # fmt: skip
        log.info("model %s version %s: %s; noise: %s%s", model.name, model.version,
                 batch.describe(), scheduler.generator,
                 f"; {split.describe()}" if split else "")  # fmt: skip
        scheduler.start()
        return scheduler

    async def _split_cores(
        self, model: ModelVersion, batch_size: int, noise_threads: int
    ) -> CoreSplit | None:
        """When the model's noise is drawn on the cores its network runs on and the operator
        left ONNX Runtime's threads to the server (``--intra-op-threads 0``), give the noise
        cores of its own if that is measured faster (``batch_tuning.core_split``)."""
        backend = self.backend
        shares_cores = (
            backend.uses_host_cpu and not backend.generates_noise
            and backend.remote_sampling(model) is None
        )  # fmt: skip
        if not shares_cores or self.config.intra_op_threads or not hasattr(
            backend, "set_intra_op_threads"
        ):
            return None
        cores = len(os.sched_getaffinity(0))
        return await measure_core_split(
            backend, model, batch_size, self.generator, noise_threads, cores
        )

    # -- unloading -----------------------------------------------------------------------------

    async def unload(self, name: str) -> None:
        """Stop serving every version of ``name``; requests running on them finish first."""
        async with self._lock:
            self._unload(name)

    def _unload(self, name: str) -> None:
        known = name in self.plane.models or name in self.plane.failed
        if not known and name not in self._repository_names():
            raise NotFound(f"failed to unload {name!r}: no such model")
        for model, scheduler in self.plane.replace_model(name, {}, {}):
            self._retire(model, scheduler)
        self.unloaded.add(name)
        self._fingerprints.pop(name, None)
        self._count_models()
        log.info("model %s unloaded", name)

    def _retire(self, model: ModelVersion, scheduler: BatchScheduler) -> None:
        self.retiring[scheduler] = model
        held = self.plane.requests_on(scheduler)
        if held:
            log.info("model %s version %s: %d request(s) finish before it closes", model.name,
                     model.version, held)  # fmt: skip
        task = asyncio.create_task(self._close_when_idle(model, scheduler))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_when_idle(self, model: ModelVersion, scheduler: BatchScheduler) -> None:
        try:
            await self.plane.idle(scheduler)
            await scheduler.close()
        finally:
            del self.retiring[scheduler]
            served = [*self.plane.models.get(model.name, {}).values(), *self.retiring.values()]
            if all(m.key != model.key for m in served):  # a reload may share its network
                self.backend.unload_model(model)

    def _count_models(self) -> None:
        self.metrics.models.labels("ready").set(sum(len(v) for v in self.plane.models.values()))
        self.metrics.models.labels("failed").set(len(self.plane.failed))

    # -- the repository ------------------------------------------------------------------------

    def _repository_names(self) -> set[str]:
        if not self.backend.model_control:
            return set()
        with contextlib.suppress(NotFound, OSError):
            return repository.model_names(self.config.model_repo)
        return set()

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository and every version served or finishing its requests:
        READY (served), UNLOADING (retired, requests still running) or UNAVAILABLE (failed,
        unloaded or not loaded, with the reason)."""
        entries = [
            IndexEntry(name, version, READY)
            for name, versions in self.plane.models.items()
            for version in versions
        ]
        if not ready_only:
            entries += [IndexEntry(m.name, m.version, UNLOADING, "unloading: requests in flight")
                        for m in self.retiring.values()]  # fmt: skip
            entries += [IndexEntry(name, "", UNAVAILABLE, why)
                        for name, why in self.plane.failed.items()]  # fmt: skip
            listed = {*self.plane.models, *self.plane.failed}
            entries += [
                IndexEntry(name, "", UNAVAILABLE, "unloaded" if name in self.unloaded else
                           self.components.get(name, "not loaded"))
                for name in self._repository_names() - listed
            ]  # fmt: skip
        return sorted(entries, key=lambda e: (e.name, int(e.version or -1), e.state))

    def check_explicit(self, action: str) -> None:
        """Load and unload requests are for explicit mode only, as in Triton."""
        if self.mode != EXPLICIT:
            raise Unavailable(
                f"explicit model {action} is not allowed in model control mode {self.mode} "
                "(start the server with --model-control-mode explicit)"
            )

    async def request_load(self, name: str) -> None:
        """A client's load (the repository extension): explicit mode only."""
        check_request_bounds(name, "")
        self.check_explicit("load")
        await self.load(name)

    async def request_unload(self, name: str) -> None:
        check_request_bounds(name, "")
        self.check_explicit("unload")
        await self.unload(name)

    # -- polling -------------------------------------------------------------------------------

    def start_polling(self) -> None:
        if self.mode == POLL:
            self._poller = asyncio.create_task(self._poll(), name="repository-poll")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.repository_poll_secs)
            try:
                await self.poll_once()
            except Exception:  # one bad poll must not end polling
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Apply the repository's changes: load new model folders, reload changed ones (a file
        added, removed or modified), unload removed ones."""
        repo = self.config.model_repo
        async with self._lock:
            try:
                names = await asyncio.to_thread(repository.model_names, repo)
            except NotFound:
                log.warning("repository poll: %s is gone; models stay as they are", repo)
                return
            for name in sorted({*self.plane.models, *self.plane.failed} - names):
                self._unload(name)
                self.unloaded.discard(name)  # gone from the repository, not unloaded by hand
            for name in sorted(names):
                seen = await asyncio.to_thread(repository.fingerprint, repo / name)
                if seen == self._fingerprints.get(name):
                    continue
                try:
                    await self._load(name)
                except IsComponent as exc:  # not an error: served through its ensembles
                    log.info("repository poll: %s", exc)
                except SmoothServeError as exc:
                    log.error("repository poll: %s", exc)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in list(self._tasks):
            task.cancel()
        for scheduler in list(self.retiring):
            await scheduler.close()


def batch_problem(config: ServerConfig, states: ModelStates, name: str) -> None:
    """Fail ``name`` in ``states`` when --batch-size cannot be allocated for it (checked per
    model before any batch is allocated)."""
    versions = states.ready.get(name)
    if config.batch_size and versions:
        problem = next(iter(versions.values())).config.batch_problem(
            config.batch_size, "--batch-size"
        )
        if problem:
            states.fail(name, f"model {name}: {problem}")


@dataclass
class Engine:
    config: ServerConfig  # with the repository's default model filled in
    backend: Backend
    metrics: Metrics
    schedulers: dict[tuple[str, str], BatchScheduler]
    plane: DataPlane
    control: ModelControl

    def all_schedulers(self) -> list[BatchScheduler]:
        """The schedulers served and those retired that still finish requests."""
        return [*self.schedulers.values(), *self.control.retiring]

    async def close(self) -> None:
        await self.control.close()
        for scheduler in self.schedulers.values():
            await scheduler.close()
        await self.backend.close()


def startup_models(config: ServerConfig) -> list[str]:
    """The models loaded at start-up: all of the repository's (modes none and poll), or those
    named by --load-model (explicit; ``*`` for all)."""
    names = repository.model_names(config.model_repo)  # NotFound without a repository
    if config.model_control_mode == EXPLICIT and ALL_MODELS not in config.load_model:
        return sorted(set(config.load_model))
    return sorted(names)


async def build_engine(
    config: ServerConfig,
    metrics: Metrics | None = None,
    backend: Backend | None = None,
    admission: Admission | None = None,
) -> Engine:
    """Load the repository's models on ``backend`` (default: the config's), give each version
    a started scheduler with its batch size (``batch_tuning``) and build the data plane; in
    poll mode, start polling the repository. EngineError says why it cannot: no repository or
    Triton, failed models with ``--exit-on-error``, no model at all (mode none), a bad default
    model, generator or signing key."""
    metrics = metrics or Metrics()
    backend = backend or create_backend(config)
    if config.model_control_mode != NONE and not backend.model_control:
        raise EngineError(f"cannot start: backend {backend.name} has no model control "
                          f"(--model-control-mode {config.model_control_mode}); its server "
                          "loads the models")  # fmt: skip
    try:
        generator = noise.resolve_generator(config.noise_generator)
        signer = Signer.from_settings(config.signing_key, config.signing_key_pem)
    except ValueError as exc:
        raise EngineError(f"cannot start: {exc}") from None
    marker = repository.read_default_model(config.model_repo)
    if not config.default_model and marker:
        config = replace(config, default_model=marker)
    admission = admission or Admission(
        config.max_samples_in_flight, config.max_concurrent_requests, metrics
    )
    plane = DataPlane({}, {}, config, metrics, admission, {}, backend.name, signer)
    control = ModelControl(config, backend, metrics, plane, generator)
    plane.control = control
    try:
        discovered = await backend.connect()
        names = startup_models(config) if discovered is None else []
    except SmoothServeError as exc:  # no repository, no Triton: one line, no traceback
        raise EngineError(f"cannot start: {exc}") from None
    if discovered is not None:  # Triton loaded them: each gets its schedulers
        for name in list(discovered.ready):
            batch_problem(config, discovered, name)
        plane.failed.update(discovered.failed)
        for name, versions in discovered.ready.items():
            await control.install(name, versions)
    for name in names:  # the same path as a load at runtime
        try:
            await control.load(name)
        except NotFound as exc:  # --load-model names no model folder
            plane.failed[name] = str(exc)
        except SmoothServeError:  # logged; listed in plane.failed
            pass
    models, failed = plane.models, plane.failed
    control._count_models()
    if failed and config.exit_on_error:
        await control.close()
        for scheduler in plane.schedulers.values():
            await scheduler.close()
        raise EngineError(
            f"{len(failed)} model(s) failed to load: "
            + "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
            + " (fix them, or start with --exit-on-error false to serve the others)"
        )
    if not models and config.model_control_mode == NONE:
        raise EngineError(f"no model could be loaded from {config.model_repo}")
    known = {*models, *failed, *control._repository_names()}
    if config.default_model and config.default_model not in known:
        raise EngineError(f"default model {config.default_model!r} not in {sorted(models)}")
    control.start_polling()
    return Engine(config, backend, metrics, plane.schedulers, plane, control)
