"""Triton ``config.pbtxt`` for smoothed models: the model repository's single source of truth.

A SmoothServe model directory is a Triton model directory::

    model_repo/<name>/config.pbtxt
    model_repo/<name>/<version>/model.onnx

Smoothing metadata lives in the config's ``parameters`` (string values, as Triton requires):
``noise_family`` (``gaussian``, the default, or ``uniform``: ``smoothcert.families``), the
family's scale (``sigma`` for Gaussian noise, ``lambda`` for uniform), ``labels`` (a JSON list), ``input_shape`` (JSON, without the batch axis) and
``value_range`` (JSON ``[low, high]`` of the pixel space the noise is added in), and
optionally ``smoothserve_sound_noise`` (``"true"`` or ``"false"``, default false): every
request on the model uses floating-point-sound noise (the server's ``sound_noise.py``, which
also checks at load that the noise can be built for the config), and
``smoothserve_batch_size`` (a positive integer, written by ``smoothserve-tune-batch``): the
noisy samples per backend batch unless ``--batch-size`` overrides it (``batch_tuning.py``).
Which version folders are served is Triton's ``version_policy`` (``VersionPolicy``): the latest
one unless the config says ``latest { num_versions: N }``, ``all {}`` or ``specific { versions:
[...] }``.

A smoothed model may also be a Triton *ensemble* (``platform: "ensemble"``): its
``ensemble_scheduling`` steps (``EnsembleStep``) name other models of the repository, its
*components* (a denoiser, then a classifier: denoised smoothing), whose configs carry no
smoothing parameters (``ComponentConfig``); the smoothing parameters belong to the ensemble.
The repository checks the chain (``smoothserve.repository``); ``ensemble_sha256`` is the hash
that binds the composition.

The file is parsed by protobuf's ``text_format`` against ``schema/model_config.proto`` (the
fields of Triton's ModelConfig that SmoothServe reads), so any config Triton accepts parses
the same here, and a broken one fails with its line and column. Every value a certificate
depends on is then checked (``SmoothModelConfig.problems``): a config that fails is an error,
never a model served with a wrong sigma or too few labels.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format

from .families import DEFAULT as DEFAULT_FAMILY
from .families import FAMILIES, NoiseFamily, family
from .schema.model_config_pb2 import (
    DataType,
    InstanceGroup,
    ModelConfig,
    ModelEnsembling,
    ModelVersionPolicy,
)

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}
SOUND_NOISE_PARAMETER = "smoothserve_sound_noise"
BATCH_SIZE_PARAMETER = "smoothserve_batch_size"
FAMILY_PARAMETER = "noise_family"
SMOOTHING_PARAMETERS = (
    FAMILY_PARAMETER, *(f.scale_parameter for f in FAMILIES.values()), "labels", "input_shape",
    "value_range", SOUND_NOISE_PARAMETER, BATCH_SIZE_PARAMETER,
)  # fmt: skip
BOOLEANS = {"true": True, "false": False}
# Noise of up to this many standard deviations must stay finite in float32.
MAX_SIGMA = float(np.finfo(np.float32).max) / 1e3
# Sane maxima, checked before anything is allocated: a typo of 10**9 in a config must fail
# the model with a line naming the field, not the server with numpy's "Unable to allocate".
MAX_BATCH = 65_536  # max_batch_size and smoothserve_batch_size
MAX_INPUT_ELEMENTS = 1 << 26  # per sample: 64 Mi floats (256 MiB), e.g. 3 x 4,096 x 4,096
MAX_BATCH_BYTES = 4 << 30  # one float32 batch of smoothserve_batch_size samples (the
# scheduler keeps --pipeline-depth of them per model)
MAX_LABELS = 100_000


MODEL_FILE = "model.onnx"  # <name>/<version>/model.onnx
MAX_POLICY_VERSIONS = 1_000  # versions a policy may name or keep
ENSEMBLE_PLATFORM = "ensemble"
MAX_ENSEMBLE_STEPS = 16
ENSEMBLE_HASH_FORMAT = "smoothserve.ensemble.v1"


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's ``version_policy``: which of a model's version folders are served. ``latest``
    (the default, with ``num_versions`` 1): the highest ``num_versions`` versions; ``all``:
    every one; ``specific``: those listed in ``versions`` that exist."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int] | set[int] | tuple[int, ...]) -> set[int]:
        """The versions served out of those ``available``."""
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return set(available) & set(self.versions)
        return set(sorted(available)[-self.num_versions:])

    def problems(self) -> list[str]:
        if self.kind == "latest" and not 1 <= self.num_versions <= MAX_POLICY_VERSIONS:
            return [f"version_policy latest num_versions must lie in [1, {MAX_POLICY_VERSIONS}], "
                    f"got {self.num_versions}"]  # fmt: skip
        if self.kind == "specific" and not (
            1 <= len(self.versions) <= MAX_POLICY_VERSIONS and min(self.versions) >= 0
        ):
            return [f"version_policy specific must list 1 to {MAX_POLICY_VERSIONS} versions, "
                    "each at least 0"]  # fmt: skip
        return []

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return "specific " + ", ".join(map(str, self.versions))
        return "all"

    def to_proto(self) -> ModelVersionPolicy:
        policy = ModelVersionPolicy()
        if self.kind == "latest":
            policy.latest.num_versions = self.num_versions
        elif self.kind == "all":
            policy.all.SetInParent()
        else:
            policy.specific.versions.extend(self.versions)
        return policy

    @classmethod
    def from_proto(cls, policy: ModelVersionPolicy) -> VersionPolicy:
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return cls("all")
        if kind == "specific":
            return cls("specific", versions=tuple(sorted(set(policy.specific.versions))))
        if kind == "latest":
            return cls("latest", num_versions=policy.latest.num_versions)
        return cls()


@dataclass(frozen=True)
class EnsembleStep:
    """One step of an ensemble (Triton's ``ModelEnsembling.Step``): the model it runs, at which
    version (-1: the latest served) and how its tensors map to the ensemble's: ``input_map``
    and ``output_map`` hold (the step model's tensor, the ensemble's tensor) pairs, sorted."""

    model_name: str
    model_version: int = -1
    input_map: tuple[tuple[str, str], ...] = ()
    output_map: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_proto(cls, step: ModelEnsembling.Step) -> EnsembleStep:
        return cls(
            model_name=step.model_name,
            model_version=int(step.model_version),
            input_map=tuple(sorted(step.input_map.items())),
            output_map=tuple(sorted(step.output_map.items())),
        )

    def fill(self, step: ModelEnsembling.Step) -> None:
        step.model_name = self.model_name
        step.model_version = self.model_version
        step.input_map.update(dict(self.input_map))
        step.output_map.update(dict(self.output_map))


def steps_of(config: ModelConfig) -> tuple[EnsembleStep, ...]:
    return tuple(EnsembleStep.from_proto(s) for s in config.ensemble_scheduling.step)


MAX_VERSION = 2**63 - 1  # versions travel as int64 (Triton) and as strings of <= 19 digits


def is_version_name(name: str) -> bool:
    """A version folder is a canonical decimal number that fits in int64: "0", "12", never
    "007" (Triton ignores a leading zero), "00" (it would be a second version 0) or 23 digits
    (a version no request can name). ``isdigit`` alone also accepts '²'."""
    return (
        name.isascii()
        and name.isdigit()
        and (name == "0" or not name.startswith("0"))
        and int(name) <= MAX_VERSION
    )


def is_model_name(name: str) -> bool:
    """A step's model is a folder of the same repository: never a path out of it."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def step_version(name: str, found: set[int], policy: VersionPolicy, wanted: int) -> int:
    """The version an ensemble step runs, as Triton loads it: ``wanted``, or the latest that
    the component's version policy serves (-1), out of the versions ``found`` with model.onnx.
    ModelConfigError says why none (the server and ``smoothserve-verify`` both resolve here)."""
    served = policy.select(found)
    if wanted == -1:
        if not served:
            raise ModelConfigError(f"{name}: no <version>/{MODEL_FILE}")
        return max(served)
    if wanted not in found:
        raise ModelConfigError(f"version {wanted} of {name!r} has no {name}/{wanted}/{MODEL_FILE}")
    if wanted not in served:
        raise ModelConfigError(f"version {wanted} of {name!r} is not among those its "
                               f"version_policy serves ({sorted(served)})")  # fmt: skip
    return wanted


def component_config_text(
    name: str, inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]],
    max_batch_size: int, parameters: dict[str, str] | None = None, batching: bool = True,
) -> str:  # fmt: skip
    """The ``config.pbtxt`` of an ensemble's component (Triton's, without smoothing
    parameters): an ONNX Runtime model with FP32 tensors of these names and dims (no batch
    axis), dynamic batching and one instance unless ``batching`` is false, and ``parameters``
    that describe it (never sigma or labels: those belong to the ensemble)."""
    config = ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    for tensor, dims in inputs.items():
        config.input.add(name=tensor, data_type=DataType.TYPE_FP32, dims=list(dims))
    for tensor, dims in outputs.items():
        config.output.add(name=tensor, data_type=DataType.TYPE_FP32, dims=list(dims))
    if batching:
        config.dynamic_batching.max_queue_delay_microseconds = 200
        config.instance_group.add(count=1, kind=InstanceGroup.KIND_AUTO)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    smoothing = set(config.parameters) & {"sigma", "labels"}
    if smoothing:
        raise ModelConfigError(f"a component has no smoothing parameters; got {sorted(smoothing)}")
    return text_format.MessageToString(config)


def ensemble_sha256(components: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """The hash that binds an ensemble's composition: SHA-256 of the canonical JSON
    ``{"format": "smoothserve.ensemble.v1", "steps": [{"model": name, "sha256": digest}, ...]}``,
    with the steps in order, ``digest`` the SHA-256 of that step's ``model.onnx``. Records carry
    it as the model's ``sha256``; a changed component file changes it."""
    document = {
        "format": ENSEMBLE_HASH_FORMAT,
        "steps": [{"model": name, "sha256": digest} for name, digest in components],
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_of(path: Path) -> str:
    """SHA-256 (hex) of a file, read in blocks: a model's hash, as records carry it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelConfigError(ValueError):
    """A config that cannot be served; the message names the problem (not the file)."""


class NotSmoothed(ModelConfigError):
    """A config without the smoothing parameters: another model, which Triton may also serve
    (an ensemble's component, for instance)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's name: "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch axis; -1: any size


@dataclass(frozen=True)
class ComponentConfig:
    """Any model's ``config.pbtxt`` read as Triton reads it, smoothing parameters or not: what an
    ensemble step runs (its tensors, batch size and served versions)."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    version_policy: VersionPolicy = VersionPolicy()
    ensemble_steps: tuple[EnsembleStep, ...] = ()
    smoothed: bool = False  # it has the smoothing parameters (a model served on its own too)

    @property
    def is_ensemble(self) -> bool:
        return self.platform == ENSEMBLE_PLATFORM or bool(self.ensemble_steps)

    @classmethod
    def from_proto(cls, config: ModelConfig) -> ComponentConfig:
        def specs(tensors) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(t.name, DataType.Name(t.data_type), tuple(int(d) for d in t.dims))
                for t in tensors
            )

        return cls(
            name=config.name,
            platform=config.platform or config.backend,
            max_batch_size=config.max_batch_size,
            inputs=specs(config.input),
            outputs=specs(config.output),
            version_policy=VersionPolicy.from_proto(config.version_policy),
            ensemble_steps=steps_of(config),
            smoothed="labels" in config.parameters,
        )

    @classmethod
    def from_pbtxt(cls, text: str) -> ComponentConfig:
        return cls.from_proto(parse_pbtxt(text))


@dataclass(frozen=True)
class SmoothModelConfig:
    name: str
    sigma: float  # the noise family's scale: Gaussian sigma, uniform lambda
    labels: tuple[str, ...]
    input_shape: tuple[int, ...]  # without the batch axis, e.g. (1, 28, 28)
    value_range: tuple[float, float] = (0.0, 1.0)
    input_name: str = "input"
    output_name: str = "logits"
    max_batch_size: int = 1024
    platform: str = "onnxruntime_onnx"
    instance_count: int = 1
    preferred_batch_sizes: tuple[int, ...] = (256, 512, 1024)
    extra_parameters: dict[str, str] = field(default_factory=dict)
    input_data_type: str = "TYPE_FP32"
    output_dims: tuple[int, ...] = ()  # as declared; () when the config declares none
    sound_noise: bool = False  # floating-point-sound noise for every request (sound_noise.py)
    batch_size: int = 0  # noisy samples per backend batch; 0: measured at load (batch_tuning.py)
    noise_family: str = DEFAULT_FAMILY  # smoothcert.families
    version_policy: VersionPolicy = VersionPolicy()  # the version folders served
    # An ensemble's steps (platform "ensemble"): the components run in turn; () for a network
    ensemble_steps: tuple[EnsembleStep, ...] = ()

    @property
    def is_ensemble(self) -> bool:
        return self.platform == ENSEMBLE_PLATFORM or bool(self.ensemble_steps)

    @property
    def family(self) -> NoiseFamily:
        return family(self.noise_family)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_elements(self) -> int:
        """Values per sample (exact: Python integers, no overflow for absurd dims)."""
        return math.prod(self.input_shape)

    def batch_problem(self, size: int, source: str) -> str:
        """Why a batch of ``size`` samples cannot be allocated for this model ("" when it can);
        ``source`` names where the size comes from (a flag, a field)."""
        if not 1 <= size <= MAX_BATCH:
            return f"{source} must lie in [1, {MAX_BATCH:,}], got {size:,}"
        if size * self.input_elements * 4 > MAX_BATCH_BYTES:
            return (
                f"{source} {size:,} of inputs {list(self.input_shape)} needs "
                f"{size * self.input_elements * 4 / 2**30:,.1f} GiB per batch, more than the "
                f"{MAX_BATCH_BYTES / 2**30:.0f} GiB allowed"
            )
        return ""

    def problems(self) -> list[str]:
        """Why this config cannot be served (empty when it can)."""
        found = []
        if self.noise_family not in FAMILIES:
            found.append(f"{FAMILY_PARAMETER} must be one of {', '.join(FAMILIES)}, got "
                         f"{self.noise_family[:32]!r}")  # fmt: skip
        elif not (math.isfinite(self.sigma) and 0 < self.sigma <= MAX_SIGMA):
            found.append(f"{self.family.scale_parameter} must be a finite positive number, got "
                         f"{self.sigma!r}")  # fmt: skip
        elif self.sound_noise and not self.family.supports_sound_noise:
            found.append(f"{SOUND_NOISE_PARAMETER} needs Gaussian noise, not {self.noise_family}")
        if not all(isinstance(label, str) for label in self.labels):
            found.append("labels must be strings")
        elif len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            found.append("labels must list at least two distinct class names")
        low, high = self.value_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            found.append(f"value_range must be finite with low < high, got {list(self.value_range)}")
        if not self.input_shape or any(d < 1 for d in self.input_shape):
            found.append(f"input_shape must have positive dims, got {list(self.input_shape)}")
        elif self.input_elements > MAX_INPUT_ELEMENTS:
            found.append(
                f"input_shape {list(self.input_shape)} has {self.input_elements:,} elements per "
                f"sample, more than the {MAX_INPUT_ELEMENTS:,} allowed"
            )
        elif self.batch_size and self.batch_problem(self.batch_size, BATCH_SIZE_PARAMETER):
            found.append(self.batch_problem(self.batch_size, BATCH_SIZE_PARAMETER))
        if len(self.labels) > MAX_LABELS:
            found.append(
                f"labels must list at most {MAX_LABELS:,} classes, got {len(self.labels):,}"
            )
        declared = [d for d in self.output_dims if d != -1]
        if declared and declared != [self.num_classes]:
            found.append(
                f"output dims {list(self.output_dims)} disagree with the {self.num_classes} labels"
            )
        if not 0 <= self.max_batch_size <= MAX_BATCH:
            found.append(
                f"max_batch_size must lie in [0, {MAX_BATCH:,}], got {self.max_batch_size:,}"
            )
        if self.batch_size < 0 or (self.max_batch_size and self.batch_size > self.max_batch_size):
            found.append(
                f"{BATCH_SIZE_PARAMETER} must lie in [1, max_batch_size], got {self.batch_size}"
            )
        found.extend(self.version_policy.problems())
        if self.platform == ENSEMBLE_PLATFORM and not self.ensemble_steps:
            found.append('an ensemble (platform "ensemble") needs ensemble_scheduling steps')
        elif self.ensemble_steps and self.platform != ENSEMBLE_PLATFORM:
            found.append(f'ensemble_scheduling needs platform "ensemble", got {self.platform!r}')
        elif len(self.ensemble_steps) > MAX_ENSEMBLE_STEPS:
            found.append(f"an ensemble has at most {MAX_ENSEMBLE_STEPS} steps, got "
                         f"{len(self.ensemble_steps)}")  # fmt: skip
        return found

    def check(self) -> SmoothModelConfig:
        problems = self.problems()
        if problems:
            raise ModelConfigError("; ".join(problems))
        return self

    def to_proto(self) -> ModelConfig:
        params = {
            **({} if self.noise_family == DEFAULT_FAMILY else {FAMILY_PARAMETER: self.noise_family}),
            self.family.scale_parameter: repr(float(self.sigma)),
            "labels": json.dumps(list(self.labels)),
            "input_shape": json.dumps(list(self.input_shape)),
            "value_range": json.dumps(list(self.value_range)),
            **({SOUND_NOISE_PARAMETER: "true"} if self.sound_noise else {}),
            **({BATCH_SIZE_PARAMETER: str(self.batch_size)} if self.batch_size else {}),
            **self.extra_parameters,
        }
        config = ModelConfig(
            name=self.name, platform=self.platform, max_batch_size=self.max_batch_size
        )
        config.input.add(
            name=self.input_name,
            data_type=DataType.Value(self.input_data_type),
            dims=self.input_shape,
        )
        config.output.add(
            name=self.output_name, data_type=DataType.TYPE_FP32, dims=[self.num_classes]
        )
        if self.is_ensemble:  # Triton's ensemble scheduler: no dynamic batching, no instances
            for step in self.ensemble_steps:
                step.fill(config.ensemble_scheduling.step.add())
        else:
            config.dynamic_batching.preferred_batch_size.extend(self.preferred_batch_sizes)
            config.dynamic_batching.max_queue_delay_microseconds = 200
            config.instance_group.add(count=self.instance_count, kind=InstanceGroup.KIND_AUTO)
        if self.version_policy != VersionPolicy():  # the default is left out, as Triton writes
            config.version_policy.CopyFrom(self.version_policy.to_proto())
        for key, value in params.items():
            config.parameters[key].string_value = value
        return config

    def to_pbtxt(self) -> str:
        return text_format.MessageToString(self.to_proto())

    @classmethod
    def from_pbtxt(cls, text: str) -> SmoothModelConfig:
        """Parse and check a ``config.pbtxt``; ModelConfigError says what and, for syntax, where."""
        return cls.from_proto(parse_pbtxt(text))

    @classmethod
    def from_dict(cls, raw: dict) -> SmoothModelConfig:
        """Parse and check Triton's JSON model config (``get_model_config(as_json=True)``)."""
        parse = lambda: json_format.ParseDict(raw, ModelConfig(), ignore_unknown_fields=True)  # noqa: E731
        return cls.from_proto(_parsed(parse, json_format.ParseError, "model config"))

    @classmethod
    def from_proto(cls, config: ModelConfig) -> SmoothModelConfig:
        params = {key: value.string_value for key, value in config.parameters.items()}
        noise_family = params.get(FAMILY_PARAMETER, DEFAULT_FAMILY).strip()
        try:
            scale_parameter = family(noise_family).scale_parameter
        except ValueError as exc:
            raise ModelConfigError(f"{FAMILY_PARAMETER}: {exc}") from None
        missing = {scale_parameter, "labels"} - params.keys()
        if missing:
            raise NotSmoothed(f"config lacks parameters {sorted(missing)}")
        if len(config.input) != 1 or len(config.output) != 1:
            raise ModelConfigError("a smoothed model has exactly one input and one output")
        model_input, output = config.input[0], config.output[0]
        dims = tuple(int(d) for d in model_input.dims)
        shape = tuple(_json(params, "input_shape", list(dims)))
        if dims and dims != shape:
            raise ModelConfigError(f"input dims {list(dims)} disagree with input_shape {list(shape)}")
        labels = _json(params, "labels", None)
        value_range = _json(params, "value_range", [0, 1])
        if not isinstance(labels, list) or not isinstance(value_range, list) or len(value_range) != 2:
            raise ModelConfigError("labels must be a JSON list, value_range a JSON [low, high]")
        sound = params.get(SOUND_NOISE_PARAMETER, "false").strip().lower()
        if sound not in BOOLEANS:
            raise ModelConfigError(f"{SOUND_NOISE_PARAMETER} must be \"true\" or \"false\"")
        try:
            sigma = float(params[scale_parameter])
            numbers = [float(v) for v in value_range], [int(d) for d in shape]
            batch_size = int(params.get(BATCH_SIZE_PARAMETER, "0"))
        except (TypeError, ValueError):
            raise ModelConfigError(
                f"{scale_parameter}, value_range, input_shape and {BATCH_SIZE_PARAMETER} must be "
                "numbers"
            ) from None
        return cls(
            name=config.name,
            sigma=sigma,
            labels=tuple(labels),
            input_shape=tuple(numbers[1]),
            value_range=(numbers[0][0], numbers[0][1]),
            input_name=model_input.name,
            output_name=output.name,
            max_batch_size=config.max_batch_size,
            platform=config.platform or config.backend,
            instance_count=(config.instance_group[0].count if config.instance_group else 0) or 1,
            preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
            extra_parameters={k: v for k, v in params.items() if k not in SMOOTHING_PARAMETERS},
            input_data_type=DataType.Name(model_input.data_type),
            output_dims=tuple(int(d) for d in output.dims),
            sound_noise=BOOLEANS[sound],
            batch_size=batch_size,
            noise_family=noise_family,
            version_policy=VersionPolicy.from_proto(config.version_policy),
            ensemble_steps=steps_of(config),
        ).check()

    def write(self, model_dir: Path) -> Path:
        model_dir.mkdir(parents=True, exist_ok=True)
        path = model_dir / "config.pbtxt"
        path.write_text(self.to_pbtxt())
        return path


def parse_pbtxt(text: str) -> ModelConfig:
    """A ``config.pbtxt`` as protobuf (fields SmoothServe does not read are skipped);
    ModelConfigError gives the line and column of a syntax error."""
    parse = lambda: text_format.Parse(text, ModelConfig(), allow_unknown_field=True)  # noqa: E731
    return _parsed(parse, text_format.ParseError, "config.pbtxt")


def _parsed(parse, error: type[Exception], what: str) -> ModelConfig:
    try:
        return parse()
    except error as exc:
        raise ModelConfigError(f"not a valid {what}: {_short(str(exc))}") from None


def _json(params: dict[str, str], key: str, default):
    if key not in params:
        return default
    try:
        return json.loads(params[key])
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"parameter {key} is not valid JSON: {exc}") from None


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
