"""The embedded backend: ONNX Runtime in the server process, no other process needed.

An ensemble (denoised smoothing: a denoiser, then a classifier; ``repository.py``) is composed
at load: its components' graphs are merged into one (``onnx.compose``: each component's names
prefixed, the output of a step wired to the input of the next, Identity nodes giving the
ensemble's input and output names), so ONNX Runtime runs and optimizes the chain as one
network with no host round trip between the steps. When the ``onnx`` package is not installed
(it is not a dependency of the serving install) or the graphs cannot be merged (different IR
versions or opsets that cannot be converted, a model over protobuf's 2 GB), the components run
as sessions in turn (``_Chain``). Either way each component's graph is checked against its
config and the next step (input and output names, dims), and the composition against the
ensemble's config with the probe batch, as any network.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from smoothcert.model_config import ModelConfigError

from ..repository import ComponentVersion, ModelStates, ModelVersion
from .base import (
    DEFAULT_LOAD_TIMEOUT_S,
    Backend,
    LoadTimeout,
    check_logits,
    first_line,
    probe_batch,
    within,
)
from .onnx_compose import check_chain, merge_ensemble, static_mismatch

log = logging.getLogger(__name__)


class _Network:
    """One ONNX Runtime session from the ensemble's (or the network's) input to its logits."""

    def __init__(self, session: ort.InferenceSession, input_name: str, output_name: str) -> None:
        self.session, self.input_name, self.output_name = session, input_name, output_name

    def logits(self, batch: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        (logits,) = self.session.run([self.output_name], {self.input_name: batch}, run_options)
        return logits

    def providers(self) -> list[str]:
        return self.session.get_providers()


class _Chain:
    """An ensemble's components as sessions run in turn (when merging their graphs failed)."""

    def __init__(self, sessions: list[ort.InferenceSession], steps: tuple[ComponentVersion, ...]):
        self.sessions, self.steps = sessions, steps

    def logits(self, batch: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        for session, step in zip(self.sessions, self.steps, strict=True):
            (batch,) = session.run([step.output.name], {step.input.name: batch}, run_options)
        return batch

    def providers(self) -> list[str]:
        return self.sessions[-1].get_providers()


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
        self._sessions: dict[tuple[str, str, str], _Network | _Chain] = {}

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
                text = first_line(exc)
                if not model.steps:
                    states.fail(name, f"{model.path}: {text}")
                elif text.startswith(tuple(str(step.path) for step in model.steps)):
                    states.fail(name, text)  # names the component's file already
                else:
                    states.fail(name, f"ensemble {name}: {text}")
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

    def _options(self, intra_op_threads: int | None = None) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = (
            self.intra_op_threads if intra_op_threads is None else intra_op_threads
        )
        # Idle ONNX Runtime workers would otherwise spin and take the cores the noise thread
        # needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return options

    def _compose(self, model: ModelVersion, options: ort.SessionOptions) -> _Network | _Chain:
        """An ensemble as one merged session, or its components' sessions in turn."""
        config = model.config
        try:
            merged = merge_ensemble(model)
        except ModelConfigError:
            raise
        except Exception as exc:  # no onnx package, or graphs that cannot be merged
            log.info("%s version %s: components run as sessions in turn (not merged: %s)",
                     model.name, model.version, first_line(exc))  # fmt: skip
        else:
            session = ort.InferenceSession(merged, options, providers=self.providers)
            return self._checked(model, session)
        sessions = [
            ort.InferenceSession(str(step.path), options, providers=self.providers)
            for step in model.steps
        ]
        graphs = [
            ([(i.name, i.shape) for i in s.get_inputs()], [(o.name, o.shape) for o in s.get_outputs()])
            for s in sessions
        ]  # fmt: skip
        check_chain(model.steps, graphs)
        first = sessions[0].get_inputs()[0].shape[1:]
        if static_mismatch(["batch", *first], tuple(config.input_shape)):
            raise ModelConfigError(f"{model.steps[0].path}: the network takes inputs of shape "
                                   f"{first}, the config says {list(config.input_shape)}")  # fmt: skip
        return _Chain(sessions, model.steps)

    def _load(
        self, model: ModelVersion, run_options: ort.RunOptions | None = None,
        intra_op_threads: int | None = None,
    ) -> _Network | _Chain:  # fmt: skip
        options = self._options(intra_op_threads)
        if model.steps:
            runner = self._compose(model, options)
        else:
            session = ort.InferenceSession(str(model.path), options, providers=self.providers)
            runner = self._checked(model, session)
        config = model.config
        probe = probe_batch(config)
        check_logits(config, runner.logits(probe, run_options), len(probe))
        how = "one merged graph" if isinstance(runner, _Network) else "sessions in turn"
        log.info("loaded %s version %s on %s%s", model.name, model.version, runner.providers(),
                 f" (ensemble of {len(model.steps)} steps, {how})" if model.steps else "")  # fmt: skip
        return runner

    @staticmethod
    def _checked(model: ModelVersion, session: ort.InferenceSession) -> _Network:
        """``session`` once its input and output names and input shape match the config."""
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
        return _Network(session, config.input_name, config.output_name)

    async def classify(self, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        runner = self._sessions[model.key]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._argmax, runner, batch)

    @staticmethod
    def _argmax(runner: _Network | _Chain, batch: np.ndarray) -> np.ndarray:
        return runner.logits(batch).argmax(axis=1)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
