"""The engine: backend -> one batch scheduler per model version -> data plane, assembled from the
config, with no transport. ``app.Server`` puts the doors (gRPC, OIP, metrics), TLS and health
around it; benchmarks and tools build it alone (``build_engine``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from . import noise, repository
from .admission import Admission
from .backends import create_backend
from .backends.base import Backend
from .batch_tuning import choose_batch_size
from .config import ServerConfig
from .dataplane import DataPlane
from .errors import SmoothServeError
from .metrics import Metrics
from .records import Signer
from .scheduler import BatchScheduler

log = logging.getLogger("smoothserve")


class EngineError(Exception):
    """The engine cannot start; the message is one line for the operator."""


@dataclass
class Engine:
    config: ServerConfig  # with the repository's default model filled in
    backend: Backend
    metrics: Metrics
    schedulers: dict[tuple[str, str], BatchScheduler]
    plane: DataPlane

    async def close(self) -> None:
        for scheduler in self.schedulers.values():
            await scheduler.close()
        await self.backend.close()


async def build_engine(
    config: ServerConfig,
    metrics: Metrics | None = None,
    backend: Backend | None = None,
    admission: Admission | None = None,
) -> Engine:
    """Load the repository's models on ``backend`` (default: the config's), give each version
    a started scheduler with its batch size (``batch_tuning``) and build the data plane.
    EngineError says why it cannot: no repository or Triton, failed models with
    ``--exit-on-error``, no model at all, a bad default model, generator or signing key."""
    metrics = metrics or Metrics()
    backend = backend or create_backend(config)
    try:
        states = await backend.start()
    except SmoothServeError as exc:  # no repository, no Triton: one line, no traceback
        raise EngineError(f"cannot start: {exc}") from None
    if config.batch_size:  # checked per model before any batch is allocated
        for name, versions in list(states.ready.items()):
            model_config = next(iter(versions.values())).config
            problem = model_config.batch_problem(config.batch_size, "--batch-size")
            if problem:
                states.fail(name, f"model {name}: {problem}")
    models = states.ready
    metrics.models.labels("ready").set(sum(len(v) for v in models.values()))
    metrics.models.labels("failed").set(len(states.failed))
    if states.failed and config.exit_on_error:
        raise EngineError(
            f"{len(states.failed)} model(s) failed to load: "
            + "; ".join(f"{name}: {why}" for name, why in sorted(states.failed.items()))
            + " (fix them, or start with --exit-on-error false to serve the others)"
        )
    if not models:
        raise EngineError(f"no model could be loaded from {config.model_repo}")
    marker = repository.read_default_model(config.model_repo)
    if not config.default_model and marker:
        config = replace(config, default_model=marker)
    if config.default_model and config.default_model not in {**models, **states.failed}:
        raise EngineError(f"default model {config.default_model!r} not in {sorted(models)}")
    try:
        generator = noise.resolve_generator(config.noise_generator)
        signer = Signer.from_settings(config.signing_key, config.signing_key_pem)
    except ValueError as exc:
        raise EngineError(f"cannot start: {exc}") from None
    schedulers = {}
    for versions in models.values():
        for model in versions.values():
            batch = await choose_batch_size(backend, model, config.batch_size)
            scheduler = BatchScheduler(
                model, backend, metrics, batch.size, config.effective_pipeline_depth,
                config.noise_threads_for(backend.uses_host_cpu), generator, batch.source,
            )  # fmt: skip
            log.info("model %s version %s: %s; noise: %s", model.name, model.version,
                     batch.describe(), scheduler.noise.generator)  # fmt: skip
            scheduler.start()
            schedulers[(model.name, model.version)] = scheduler
    admission = admission or Admission(
        config.max_samples_in_flight, config.max_concurrent_requests, metrics
    )
    plane = DataPlane(
        models, schedulers, config, metrics, admission, states.failed, backend.name, signer
    )
    return Engine(config, backend, metrics, schedulers, plane)
