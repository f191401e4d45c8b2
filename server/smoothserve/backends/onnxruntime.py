"""The embedded backend: ONNX Runtime in the server process, no other process needed."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from smoothcert.model_config import ModelConfigError

from ..repository import ModelStates, ModelVersion
from .base import (
    DEFAULT_LOAD_TIMEOUT_S,
    Backend,
    LoadTimeout,
    check_logits,
    first_line,
    probe_batch,
    within,
)

log = logging.getLogger(__name__)


def default_providers() -> list[str]:
    """CUDA when the GPU build of onnxruntime is installed, else CPU; always explicit."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    model_control = True

    def __init__(
        self,
        model_repo: Path,
        providers: tuple[str, ...] | list[str] = (),
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        max_concurrent_batches: int = 2,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    ) -> None:
        self.model_repo = Path(model_repo)
        self.load_timeout_s = load_timeout_s
        self.providers = list(providers) or default_providers()
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        # ONNX Runtime releases the GIL in run(): on a GPU, threads let batches overlap. On the
        # CPU one run already takes every core, and two at once only fight over them and the
        # caches (a ResNet-20 lost about 15 % of its throughput with 3 runs in flight); the
        # pipeline's other batches still fill their noise meanwhile.
        cpu_only = self.providers == ["CPUExecutionProvider"]
        self.uses_host_cpu = cpu_only
        runs = 1 if cpu_only else max_concurrent_batches
        self._executor = ThreadPoolExecutor(runs, thread_name_prefix="ort")
        self._sessions: dict[tuple[str, str, str], ort.InferenceSession] = {}

    async def load_model(self, states: ModelStates, name: str) -> None:
        """Each version is loaded (session built, probe batch run) in a thread of its own, for
        at most ``load_timeout_s``: a network that never finishes (an ONNX Loop of 10**12
        turns) fails its model instead of hanging start-up. Past the limit the probe's run is
        terminated (ONNX Runtime's ``RunOptions.terminate``, checked between operators); a
        session still being built cannot be stopped and is abandoned to finish on its own."""
        loaded = []
        for model in states.ready[name].values():
            log.info("loading model %s version %s", name, model.version)
            probe = ort.RunOptions()
            probe.log_severity_level = 4  # a terminated run is reported below, not by ORT

            def stop(run: ort.RunOptions = probe) -> None:
                run.terminate = True

            try:
                self._sessions[model.key] = await within(
                    self.load_timeout_s, lambda m=model, r=probe: self._load(m, r), stop
                )
                loaded.append(model)
            except LoadTimeout as exc:
                states.fail(name, f"model {name} version {model.version}: loading {exc} "
                                  "(--model-load-timeout-s)")  # fmt: skip
                break
            except Exception as exc:  # a corrupt file raises whatever ONNX Runtime raises
                states.fail(name, f"{model.path}: {first_line(exc)}")
                break
        if name in states.failed:
            for model in loaded:
                self.unload_model(model)

    def unload_model(self, model: ModelVersion) -> None:
        self._sessions.pop(model.key, None)

    def set_intra_op_threads(self, model: ModelVersion, threads: int) -> None:
        """Rebuild the model's session with ``threads`` intra-op threads (0: one per core),
        for a network that shares the CPU with host noise (``batch_tuning.core_split``)."""
        self._sessions[model.key] = self._load(model, intra_op_threads=threads)

    def _load(
        self, model: ModelVersion, run_options: ort.RunOptions | None = None,
        intra_op_threads: int | None = None,
    ) -> ort.InferenceSession:  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = (
            self.intra_op_threads if intra_op_threads is None else intra_op_threads
        )
        # Idle ONNX Runtime workers would otherwise spin and take the cores the noise thread
        # needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(model.path), options, providers=self.providers)
        config = model.config
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if [i.name for i in inputs] != [config.input_name]:
            raise ModelConfigError(
                f"the network's inputs are {[i.name for i in inputs]}, the config says "
                f"{config.input_name!r}"
            )
        if config.output_name not in [o.name for o in outputs]:
            raise ModelConfigError(
                f"the network has no output {config.output_name!r} (it has "
                f"{[o.name for o in outputs]})"
            )
        declared = inputs[0].shape[1:]
        if len(declared) != len(config.input_shape) or any(
            isinstance(d, int) and d != want for d, want in zip(declared, config.input_shape, strict=True)
        ):
            raise ModelConfigError(
                f"the network takes inputs of shape {declared}, the config says "
                f"{list(config.input_shape)}"
            )
        probe = probe_batch(config)
        (logits,) = session.run([config.output_name], {config.input_name: probe}, run_options)
        check_logits(config, logits, len(probe))
        log.info("loaded %s version %s on %s", model.name, model.version, session.get_providers())
        return session

    async def classify(self, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        session = self._sessions[model.key]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._argmax, session, model, batch)

    @staticmethod
    def _argmax(session: ort.InferenceSession, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        (logits,) = session.run([model.config.output_name], {model.config.input_name: batch})
        return logits.argmax(axis=1)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
