"""The Triton backend: noisy batches go to one or several Triton servers over gRPC.

Triton's model repository is the single source of truth: models, versions, input spec and
the smoothing parameters (sigma, labels, ...) come from each model's config as Triton serves
it. ``model_sha256`` comes from a ``sha256`` config parameter when the export wrote one;
otherwise from ``--model-repo`` when that directory holds the same model and version with an
identical smoothing config (the usual case: Triton mounts the same repository); otherwise
it is empty, because nothing proves which file Triton loaded.

Triton returns logits; SmoothServe takes the argmax (N x classes floats, small next to the
inputs). With ``--triton-fp16`` the batches travel as FP16, which the model's config must
declare (an fp16-input export); the rounding is then part of the base classifier f, so the
certificate holds for exactly the network that runs. With ``--triton-shm`` the batches
travel through POSIX shared memory registered with Triton (same host only).

When Triton also serves a sampler for a model (``<model>_sampler``, written by
``python -m smoothserve.triton_sampler``; found by its ``smoothserve_sampler_for`` parameter),
that model takes the sampler path instead: per segment only the clean input, the job's noise
key and the sample range go out, and K vote counts come back (``count_noisy``); the noise is
drawn and the network run inside Triton. Endpoint choice, failover and timeouts are the same
calls as the batch path's. Votes that do not sum to the samples asked for are ``BadState``.

An ensemble (``platform: "ensemble"``, a denoiser then a classifier: ``repository.py``) is a
smoothed model like any other here: it has the smoothing parameters, Triton runs its steps,
and its sampler calls it by BLS. Its components, without smoothing parameters, are skipped with
an info line naming them as components. Its ``model_sha256`` is the local repository's hash of
the composition (``smoothcert.model_config.ensemble_sha256``) when ``--model-repo`` holds the
same ensemble.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import uuid
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from smoothcert.model_config import ModelConfigError, NotSmoothed, SmoothModelConfig

from .. import repository
from ..errors import BadState, DeadlineExceeded, NotFound, Unavailable
from ..repository import ModelStates, ModelVersion
from ..sound_noise import check_sound_config
from ..triton_sampler import SAMPLER_PARAMETER
from .base import Backend, CountSegment, RemoteSampling
from .triton_pool import MAX_MESSAGE_BYTES, Endpoint, EndpointPool, describe

log = logging.getLogger(__name__)
WIRE_TYPES = {
    "TYPE_FP32": ("FP32", np.dtype(np.float32)),
    "TYPE_FP16": ("FP16", np.dtype(np.float16)),
}
ENDPOINT_FAILURES = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL", ""}
MODEL_MISSING = "Request for unknown model"  # Triton's words for a model not loaded (any status)


@dataclass(frozen=True)
class Wire:
    """How one model's batches travel: Triton datatype, NumPy dtype, rows per call."""

    datatype: str
    dtype: np.dtype
    rows: int


@dataclass(frozen=True)
class Sampler:
    """A model's sampler in Triton: its name and version, and how its work is cut."""

    name: str
    version: str
    segments_per_call: int  # the sampler's max_batch_size
    remote: RemoteSampling


@dataclass
class ShmSlot:
    """A POSIX shared-memory region, registered with Triton as ``name`` (key ``/name``)."""

    name: str
    memory: shared_memory.SharedMemory
    byte_size: int


class TritonBackend(Backend):
    name = "triton"

    def __init__(
        self,
        urls: tuple[str, ...] | list[str],
        timeout_s: float = 30.0,
        fp16: bool = False,
        use_shm: bool = False,
        model_repo: Path | None = None,
        batch_size: int = 256,
        max_concurrent_batches: int = 2,
    ) -> None:
        self.timeout_s = timeout_s
        self.fp16 = fp16
        self.use_shm = use_shm
        self.model_repo = model_repo
        self.batch_size = batch_size
        self.max_concurrent_batches = max_concurrent_batches
        self.pool = EndpointPool(
            urls, probe_timeout_s=min(2.0, timeout_s), on_connect=self._on_connect
        )
        self._wire: dict[tuple[str, str], Wire] = {}
        self._samplers: dict[tuple[str, str], Sampler] = {}
        self._slots: list[ShmSlot] = []
        self._free_slots: asyncio.Queue[ShmSlot] = asyncio.Queue()

    # --- start-up: discovery ---------------------------------------------------------------

    async def connect(self) -> ModelStates:
        """The smoothed models Triton serves: Triton loads and unloads them (its own model
        control), so this server's --model-control-mode stays none with this backend."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        up = await self.pool.connect_all()
        while loop.time() < deadline and not await self._any_settled(up):
            await asyncio.sleep(0.5)
            up = [e for e in self.pool.endpoints if e.up]
        if not up:
            raise Unavailable(
                f"Triton did not become ready in {self.timeout_s} s: {self.pool.summary()}"
            )
        states = await self._discover(up[0])
        for endpoint in up[1:]:
            await self._check_same_models(endpoint, states.ready)
        if self.use_shm:
            await self._create_slots(states.ready)
        return states

    async def _any_settled(self, endpoints: list[Endpoint]) -> bool:
        """An endpoint that is ready, or at least loading nothing any more (with strict
        readiness, one model that failed or was unloaded keeps the server unready)."""
        for endpoint in endpoints:
            client = endpoint.client
            try:
                if client is None:
                    continue
                if await client.is_server_ready(client_timeout=2.0):
                    return True
                index = await client.get_model_repository_index(as_json=True, client_timeout=2.0)
                if all(m.get("state") != "LOADING" for m in index.get("models", [])):
                    return True
            except InferenceServerException:
                continue
        return False

    async def _discover(self, endpoint: Endpoint) -> ModelStates:
        """Triton's ready smoothed models; one whose config fails its checks is failed, and
        models without smoothing parameters are skipped (Triton may serve others too)."""
        client = endpoint.client
        assert client is not None
        index = await client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
        states = ModelStates()
        models = states.ready
        skipped = []
        samplers: dict[tuple[str, str], tuple[str, dict]] = {}  # (network, version) -> sampler
        others: dict[str, str] = {}  # ready models without smoothing parameters: why
        for entry in index.get("models", []):
            name, version = entry.get("name", ""), entry.get("version", "")
            if entry.get("state") != "READY" or not version:
                skipped.append(f"{name} ({entry.get('state', 'no state')})")
                continue
            raw = await client.get_model_config(
                name, version, as_json=True, client_timeout=self.timeout_s
            )
            raw = raw.get("config", raw)
            parameters = raw.get("parameters", {})
            if SAMPLER_PARAMETER in parameters:
                samplers[(parameters[SAMPLER_PARAMETER]["string_value"], version)] = (name, raw)
                continue
            try:
                config = check_sound_config(SmoothModelConfig.from_dict(raw))
            except NotSmoothed as exc:
                others[name] = str(exc)
                skipped.append(f"{name} ({exc})")
                continue
            except ModelConfigError as exc:
                states.fail(name, f"Triton's config of {name} version {version}: {exc}")
                continue
            try:
                wire = self._wire_for(config)
            except ValueError as exc:
                states.fail(name, f"{name} version {version}: {exc}")
                continue
            self._wire[(name, version)] = wire
            sha = self._sha256(config, version)
            models.setdefault(name, {})[version] = ModelVersion(config, version, sha)
            log.info(
                "Triton %s: %s version %s, %s batches of up to %d rows",
                endpoint.url,
                name,
                version,
                wire.datatype,
                wire.rows,
            )
        self._attach_samplers(endpoint, states, samplers)
        self._log_unsmoothed(endpoint, models, others)
        if not models and not states.failed:
            raise NotFound(
                f"Triton {endpoint.url} serves no smoothed model (a ready model whose config has "
                f"sigma and labels parameters); found: {', '.join(skipped) or 'no model'}"
            )
        return states

    @staticmethod
    def _log_unsmoothed(endpoint: Endpoint, models: dict, others: dict[str, str]) -> None:
        """One info line per ready model without smoothing parameters: an ensemble's component
        (served through the ensemble), or another model Triton serves."""
        users: dict[str, set[str]] = {}
        for name, versions in models.items():
            for model in versions.values():
                for step in model.config.ensemble_steps:
                    users.setdefault(step.model_name, set()).add(name)
        for name, why in sorted(others.items()):
            if name in users:
                log.info("Triton %s: %s is a component of ensemble %s (served through it)",
                         endpoint.url, name, ", ".join(sorted(users[name])))  # fmt: skip
            else:
                log.info("Triton %s: not serving %s: %s", endpoint.url, name, why)

    def _attach_samplers(
        self, endpoint: Endpoint, states: ModelStates, samplers: dict[tuple[str, str], tuple]
    ) -> None:
        """Each ready model with a sampler of the same version takes the sampler path; a sampler
        that does not fit its network fails the model (a wrong sampler must not certify)."""
        for (network, version), (name, raw) in samplers.items():
            model = states.ready.get(network, {}).get(version)
            if model is None:
                log.warning("Triton %s: sampler %s has no ready network %s version %s",
                            endpoint.url, name, network, version)  # fmt: skip
                continue
            try:
                sampler = self._sampler_of(model.config, name, version, raw)
            except (KeyError, ValueError, TypeError) as exc:
                del states.ready[network][version]
                if not states.ready[network]:
                    del states.ready[network]
                states.fail(network, f"Triton's sampler {name} of {network}: {exc}")
                continue
            if model.config.sound_noise:
                log.warning("%s asks for floating-point-sound noise, which the sampler has not: "
                            "its batches go to Triton as noisy copies", network)  # fmt: skip
                continue
            if model.config.noise_family != "gaussian":  # the sampler draws Gaussian noise only
                log.warning("%s uses %s noise; Triton's sampler draws Gaussian noise only: its "
                            "batches go to Triton as noisy copies drawn here", network,
                            model.config.noise_family)  # fmt: skip
                continue
            self._samplers[(network, version)] = sampler
            log.info("Triton %s: %s version %s sampled by %s (noise drawn in Triton, %d samples "
                     "per call)", endpoint.url, network, version, name,
                     sampler.remote.samples_per_call)  # fmt: skip

    @staticmethod
    def _sampler_of(config: SmoothModelConfig, name: str, version: str, raw: dict) -> Sampler:
        parameters = {k: v["string_value"] for k, v in raw.get("parameters", {}).items()}
        inputs = {i["name"]: [int(d) for d in i.get("dims", [])] for i in raw.get("input", [])}
        outputs = {o["name"]: [int(d) for d in o.get("dims", [])] for o in raw.get("output", [])}
        expected = {"INPUT": list(config.input_shape), "KEY": [4], "RANGE": [2], "SIGMA": [1]}
        if inputs != expected:
            raise ValueError(f"inputs {inputs}, expected {expected}")
        if outputs != {"COUNTS": [config.num_classes]}:
            raise ValueError(f"outputs {outputs}, expected COUNTS of {config.num_classes} votes")
        remote = RemoteSampling(
            samples_per_call=int(parameters["samples_per_call"]),
            block=int(parameters["block_samples"]),
        )
        if remote.samples_per_call < 1 or remote.block < 1:
            raise ValueError("samples_per_call and block_samples must be positive")
        return Sampler(name, version, max(1, int(raw.get("max_batch_size", 1))), remote)

    def remote_sampling(self, model: ModelVersion) -> RemoteSampling | None:
        sampler = self._samplers.get((model.name, model.version))
        return None if sampler is None else sampler.remote

    def _wire_for(self, config: SmoothModelConfig) -> Wire:
        data_type = config.input_data_type
        if data_type not in WIRE_TYPES:
            raise ValueError(f"input type {data_type} is not supported (FP32 or FP16)")
        if self.fp16 and data_type != "TYPE_FP16":
            raise ValueError(f"input is {data_type}; --triton-fp16 needs an FP16-input model")
        if not self.fp16 and data_type == "TYPE_FP16":
            raise ValueError("input is TYPE_FP16; start SmoothServe with --triton-fp16")
        datatype, dtype = WIRE_TYPES[data_type]
        sample_bytes = math.prod(config.input_shape) * dtype.itemsize
        rows = (MAX_MESSAGE_BYTES - (1 << 20)) // sample_bytes  # room for the request header
        if config.max_batch_size > 0:
            rows = min(rows, config.max_batch_size)
        if rows < 1:
            raise ValueError("one sample does not fit in a gRPC message")
        return Wire(datatype, dtype, rows)

    def _sha256(self, config: SmoothModelConfig, version: str) -> str:
        """The ``sha256`` parameter, else the hash of an identical local copy, else "". For an
        ensemble, the local copy is the ensemble with its components, checked as the embedded
        backend checks them (``repository.resolve_ensemble``), and the hash binds them all."""
        if config.extra_parameters.get("sha256"):
            return config.extra_parameters["sha256"]
        if self.model_repo is None:
            return ""
        if config.is_ensemble:
            return self._ensemble_sha256(config, version)
        local = Path(self.model_repo) / config.name / version / repository.MODEL_FILE
        try:
            mine = SmoothModelConfig.from_pbtxt((local.parent.parent / "config.pbtxt").read_text())
        except (OSError, ModelConfigError):
            mine = None
        if mine is None or not local.is_file():
            log.info("%s version %s: no local copy, model_sha256 left empty", config.name, version)
            return ""
        fields = ("sigma", "labels", "input_shape", "value_range", "input_name", "output_name")
        if any(getattr(mine, f) != getattr(config, f) for f in fields):
            log.warning(
                "%s: the copy in %s has another config than Triton's; model_sha256 left empty",
                config.name,
                self.model_repo,
            )
            return ""
        return repository.sha256_of(local)

    def _ensemble_sha256(self, config: SmoothModelConfig, version: str) -> str:
        assert self.model_repo is not None
        try:
            states = repository.scan(Path(self.model_repo), [config.name])
        except NotFound:
            states = ModelStates()
        mine = states.ready.get(config.name, {}).get(version)
        if mine is None:
            why = states.failed.get(config.name, "no local copy")
            log.info("%s version %s: %s; model_sha256 left empty", config.name, version, why)
            return ""
        fields = ("sigma", "labels", "input_shape", "value_range", "input_name", "output_name",
                  "ensemble_steps")  # fmt: skip
        if any(getattr(mine.config, f) != getattr(config, f) for f in fields):
            log.warning("%s: the copy in %s has another config than Triton's; model_sha256 left "
                        "empty", config.name, self.model_repo)  # fmt: skip
            return ""
        return mine.sha256

    async def _check_same_models(self, endpoint: Endpoint, models: dict) -> None:
        for name, versions in models.items():
            for version in versions:
                client = endpoint.client
                try:
                    ready = client is not None and await client.is_model_ready(
                        name, version, client_timeout=self.timeout_s
                    )
                except InferenceServerException as exc:
                    self.pool.mark_down(endpoint, describe(exc))
                    return
                if not ready:
                    log.warning(
                        "Triton %s does not serve %s version %s", endpoint.url, name, version
                    )

    # --- shared memory -----------------------------------------------------------------------

    def _largest_batch(self, model: ModelVersion) -> int:
        """The most rows one call of ``model`` may send: --batch-size, else its config's batch
        size or the largest size measured at load (``batch_tuning.CANDIDATES``)."""
        return self.batch_size or max(model.config.batch_size, 1024)

    async def _create_slots(self, models: dict[str, dict[str, ModelVersion]]) -> None:
        """One region per batch that can be in flight, each as large as the largest call."""
        versions = [m for vs in models.values() for m in vs.values()]
        byte_size = max(
            min(self._largest_batch(m), self._wire[(m.name, m.version)].rows)
            * math.prod(m.config.input_shape)
            * self._wire[(m.name, m.version)].dtype.itemsize
            for m in versions
        )
        prefix = f"smoothserve-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        for i in range(self.max_concurrent_batches * len(versions)):
            name = f"{prefix}-{i}"
            memory = shared_memory.SharedMemory(name, create=True, size=byte_size)
            slot = ShmSlot(name, memory, byte_size)
            self._slots.append(slot)
            self._free_slots.put_nowait(slot)
        for endpoint in self.pool.endpoints:
            if endpoint.up and endpoint.client is not None:
                try:
                    await self._on_connect(endpoint.client)
                except InferenceServerException as exc:
                    await self.close()
                    raise Unavailable(
                        f"Triton {endpoint.url} cannot map shared memory ({describe(exc)}); "
                        "--triton-shm needs Triton on this host, sharing /dev/shm"
                    ) from None

    async def _on_connect(self, client: triton_aio.InferenceServerClient) -> None:
        """Register every region with a (re)connected server; a restarted one has none."""
        for slot in self._slots:
            with contextlib.suppress(InferenceServerException):
                await client.unregister_system_shared_memory(
                    slot.name, client_timeout=self.timeout_s
                )
            await client.register_system_shared_memory(
                slot.name, "/" + slot.name, slot.byte_size, client_timeout=self.timeout_s
            )

    # --- inference ---------------------------------------------------------------------------

    async def classify(self, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        wire = self._wire[(model.name, model.version)]
        if len(batch) <= wire.rows:
            return await self._classify_rows(model, wire, batch)
        parts = [batch[i : i + wire.rows] for i in range(0, len(batch), wire.rows)]
        results = await asyncio.gather(*(self._classify_rows(model, wire, p) for p in parts))
        return np.concatenate(results)

    async def _classify_rows(self, model: ModelVersion, wire: Wire, rows: np.ndarray) -> np.ndarray:
        slot = await self._free_slots.get() if self._slots else None
        try:
            infer_input = triton_grpc.InferInput(
                model.config.input_name, list(rows.shape), wire.datatype
            )
            nbytes = rows.size * wire.dtype.itemsize
            if slot is not None and nbytes <= slot.byte_size:
                # one pass: copy (and cast, for FP16) straight into the region
                view = np.ndarray(rows.shape, wire.dtype, buffer=slot.memory.buf)
                np.copyto(view, rows, casting="same_kind")
                del view  # no export of the buffer may outlive the call (close() needs none)
                infer_input.set_shared_memory(slot.name, nbytes)
            else:
                infer_input.set_data_from_numpy(rows.astype(wire.dtype, copy=False))
            logits = (await self._infer(model, [infer_input], len(rows))).as_numpy(
                model.config.output_name
            )
        finally:
            if slot is not None:
                self._free_slots.put_nowait(slot)
        if logits.shape != (len(rows), model.config.num_classes):
            raise Unavailable(f"Triton returned logits of shape {logits.shape} for {model.name}")
        return logits.argmax(axis=1)

    async def count_noisy(
        self, model: ModelVersion, segments: list[CountSegment]
    ) -> list[np.ndarray]:
        sampler = self._samplers[(model.name, model.version)]
        step = sampler.segments_per_call
        parts = [segments[i : i + step] for i in range(0, len(segments), step)]
        results = await asyncio.gather(*(self._count_rows(model, sampler, p) for p in parts))
        return [votes for part in results for votes in part]

    async def _count_rows(
        self, model: ModelVersion, sampler: Sampler, segments: list[CountSegment]
    ) -> list[np.ndarray]:
        """One sampler call: a row per segment (clean input, key, range, sigma), votes back."""
        rows = len(segments)
        arrays = {
            "INPUT": ("FP32", np.stack([x for x, _, _, _ in segments]).astype(np.float32)),
            "KEY": ("UINT64", np.array([key for _, key, _, _ in segments], np.uint64)),
            "RANGE": ("INT64", np.array([[s, c] for _, _, s, c in segments], np.int64)),
            "SIGMA": ("FP32", np.full((rows, 1), model.config.sigma, np.float32)),
        }
        inputs = []
        for name, (datatype, array) in arrays.items():
            infer_input = triton_grpc.InferInput(name, list(array.shape), datatype)
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        size = sum(count for _, _, _, count in segments)
        result = await self._infer(
            model, inputs, size, target=(sampler.name, sampler.version), output="COUNTS"
        )
        counts = result.as_numpy("COUNTS")
        expected = [count for _, _, _, count in segments]
        if (
            counts is None
            or counts.shape != (rows, model.config.num_classes)
            or counts.dtype != np.int64
            or counts.min(initial=0) < 0
            or counts.sum(axis=1).tolist() != expected
        ):
            got = None if counts is None else counts.tolist()
            raise BadState(
                f"Triton's sampler {sampler.name} returned votes {got} for segments of "
                f"{expected} samples; no certificate is made from them"
            )
        return list(counts)

    async def _infer(
        self,
        model: ModelVersion,
        inputs: list,
        size: int,
        target: tuple[str, str] | None = None,
        output: str | None = None,
    ):
        """Send to the least busy endpoint; on an endpoint failure, take it out and try the
        next one. Each endpoint is tried at most once per batch, so nothing waits forever.
        ``target``: the Triton model (name, version) to call, the network's by default."""
        name, version = target or (model.name, model.version)
        output_name = output or model.config.output_name
        tried: set[Endpoint] = set()
        errors: list[tuple[str, str]] = []  # (status, message)
        requested = triton_grpc.InferRequestedOutput(output_name)
        while True:
            try:
                endpoint = await self.pool.pick(tried)
            except Unavailable:
                raise self._failure(model, errors) from None
            tried.add(endpoint)
            endpoint.outstanding += size
            client = endpoint.client
            try:
                assert client is not None
                return await client.infer(
                    name,
                    inputs,
                    model_version=version,
                    outputs=[requested],
                    client_timeout=self.timeout_s,
                )
            except InferenceServerException as exc:
                status = (exc.status() or "").replace("StatusCode.", "")
                if MODEL_MISSING in str(exc.message()):
                    status = "NOT_FOUND"  # this model is not loaded there; the server is fine
                errors.append((status, f"{endpoint.url}: {describe(exc)}"))
                # a call on a channel that a reconnect has since replaced says nothing new
                if status in ENDPOINT_FAILURES and endpoint.client is client:
                    self.pool.mark_down(endpoint, describe(exc))
            finally:
                endpoint.outstanding -= size

    def _failure(self, model: ModelVersion, errors: list[tuple[str, str]]) -> Exception:
        """The error for the client: what failed, never Triton's addresses or raw errors,
        which go to the log."""
        detail = "; ".join(message for _, message in errors) or self.pool.summary()
        log.warning("Triton could not run %s version %s: %s", model.name, model.version, detail)
        statuses = {status for status, _ in errors}
        if statuses == {"NOT_FOUND"}:
            return NotFound(f"model {model.name!r} version {model.version} is not loaded on Triton")
        if "DEADLINE_EXCEEDED" in statuses and statuses <= {"DEADLINE_EXCEEDED", "NOT_FOUND"}:
            return DeadlineExceeded(f"Triton did not answer within {self.timeout_s} s")
        return Unavailable(f"no Triton endpoint can run {model.name!r} now; retry later")

    async def ready(self) -> bool:
        return any(e.up for e in self.pool.endpoints)

    async def close(self) -> None:
        for endpoint in self.pool.endpoints:
            if endpoint.up and endpoint.client is not None and self._slots:
                for slot in self._slots:
                    try:
                        await endpoint.client.unregister_system_shared_memory(
                            slot.name, client_timeout=2.0
                        )
                    except InferenceServerException:
                        break
        await self.pool.close()
        for slot in self._slots:
            slot.memory.close()
            slot.memory.unlink()
        self._slots.clear()
