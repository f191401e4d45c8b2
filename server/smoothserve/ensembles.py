"""Ensembles in Triton's convention: a smoothed model whose ``ensemble_scheduling`` steps run
*components*, other models of the same repository (denoised smoothing: a denoiser, then a
classifier). ``resolve_ensemble`` checks the chain at load; the repository (``repository.py``)
decides what is ready, failed or a component, and backends run ``ComponentVersion`` files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smoothcert.model_config import (
    MODEL_FILE,
    ComponentConfig,
    ModelConfigError,
    SmoothModelConfig,
    TensorSpec,
    is_model_name,
    sha256_of,
    step_version,
)

from .errors import InvalidArgument
from .layout import version_folders


class IsComponent(InvalidArgument):
    """A model that is an ensemble's component: it has no smoothing parameters and is served
    only through the ensembles that name it."""


@dataclass(frozen=True)
class ComponentVersion:
    """One step of an ensemble as loaded: the component model, its version folder and file,
    and the tensor it reads and the one it gives (the component's names)."""

    name: str
    version: str
    path: Path  # <repo>/<name>/<version>/model.onnx
    sha256: str
    input: TensorSpec
    output: TensorSpec
    max_batch_size: int


def component_description(ensembles: list[str]) -> str:
    names = ", ".join(repr(e) for e in ensembles)
    plural = "s" if len(ensembles) > 1 else ""
    return (f"a component of ensemble{plural} {names}: it has no smoothing parameters and is "
            f"served only through the ensemble{plural}")  # fmt: skip


def ensembles_naming(repo: Path, name: str) -> list[str]:
    """The ensembles of ``repo`` with a step that runs ``name`` (configs that do not parse are
    passed over: they fail on their own)."""
    users = []
    for model_dir in sorted(Path(repo).iterdir()):
        config_path = model_dir / "config.pbtxt"
        try:
            text = config_path.read_text()
            if name not in text:  # most configs: no need to parse them
                continue
            config = ComponentConfig.from_pbtxt(text)
        except (OSError, UnicodeDecodeError, ModelConfigError):
            continue
        if config.is_ensemble and any(s.model_name == name for s in config.ensemble_steps):
            users.append(model_dir.name)
    return users


def _dims_agree(given: tuple[int, ...], taken: tuple[int, ...]) -> bool:
    """Dims a tensor has and dims a model takes agree (-1: any size)."""
    return len(given) == len(taken) and all(
        a == b or a == -1 or b == -1 for a, b in zip(given, taken, strict=True)
    )


def resolve_ensemble(repo: Path, config: SmoothModelConfig) -> tuple[ComponentVersion, ...]:
    """The components an ensemble's steps run, in order, once the chain is checked: step 1 reads
    the ensemble's input, each step's output is the next one's input, the last step gives the
    ensemble's output; each component is a model of the repository (not an ensemble, not the
    ensemble itself) with one input and the output the step maps, with the version the step
    names (-1: the latest its version policy serves) holding ``model.onnx``; dims and data types
    agree from tensor to tensor; the ensemble's max_batch_size fits each component's.
    ModelConfigError names the file at fault."""
    shown = f"{config.name}/config.pbtxt"
    tensor = TensorSpec(config.input_name, config.input_data_type, tuple(config.input_shape))
    source = f"the ensemble's input {tensor.name!r}"
    seen: set[str] = set()
    produced = {config.input_name}  # tensor names given so far: each is given once
    resolved = []
    for number, step in enumerate(config.ensemble_steps, 1):
        where = f"{shown}: step {number} ({step.model_name!r})"
        if not is_model_name(step.model_name):
            raise ModelConfigError(f"{where}: a step names a model folder of the same "
                                   "repository (no '/', not '.' or '..')")  # fmt: skip
        if step.model_name == config.name or step.model_name in seen:
            raise ModelConfigError(f"{where}: the steps run {step.model_name!r} twice (a cycle); "
                                   "an ensemble is a chain of distinct models")  # fmt: skip
        seen.add(step.model_name)
        if len(step.input_map) != 1 or len(step.output_map) != 1:
            raise ModelConfigError(f"{where}: a step maps exactly one input and one output (a "
                                   "linear chain), got input_map "
                                   f"{dict(step.input_map)}, output_map {dict(step.output_map)}")  # fmt: skip
        ((model_input, fed),) = step.input_map
        ((model_output, given),) = step.output_map
        if fed != tensor.name:
            raise ModelConfigError(f"{where}: reads {fed!r}, but {source} is {tensor.name!r} (the "
                                   "steps must form a linear chain)")  # fmt: skip
        component_dir = Path(repo) / step.model_name
        component_shown = f"{step.model_name}/config.pbtxt"
        try:
            component = ComponentConfig.from_pbtxt((component_dir / "config.pbtxt").read_text())
        except OSError:
            raise ModelConfigError(f"{where}: no model {step.model_name!r} in the repository "
                                   f"({component_shown} missing)") from None  # fmt: skip
        except (ModelConfigError, UnicodeDecodeError) as exc:
            raise ModelConfigError(f"{component_shown}: {exc}") from None
        if component.is_ensemble:
            raise ModelConfigError(f"{where}: {step.model_name!r} is itself an ensemble; nested "
                                   "ensembles are not supported")  # fmt: skip
        if component.name != step.model_name:
            raise ModelConfigError(f"{component_shown}: names the model {component.name!r}")
        inputs = {i.name: i for i in component.inputs}
        outputs = {o.name: o for o in component.outputs}
        if len(component.inputs) != 1 or model_input not in inputs:
            raise ModelConfigError(f"{component_shown}: a component takes one input, the one "
                                   f"{shown} step {number} feeds ({model_input!r}); its inputs "
                                   f"are {sorted(inputs)}")  # fmt: skip
        if model_output not in outputs:
            raise ModelConfigError(f"{component_shown}: no output {model_output!r}, which {shown} "
                                   f"step {number} maps; its outputs are {sorted(outputs)}")  # fmt: skip
        taken = inputs[model_input]
        if not _dims_agree(tensor.dims, taken.dims) or tensor.data_type != taken.data_type:
            raise ModelConfigError(
                f"{component_shown}: input {model_input!r} takes {taken.data_type} "
                f"{list(taken.dims)}, but {source} is {tensor.data_type} {list(tensor.dims)} "
                f"({shown} step {number})"
            )
        if config.max_batch_size > 0 and not (
            0 < config.max_batch_size <= component.max_batch_size
        ):
            raise ModelConfigError(f"{shown}: max_batch_size {config.max_batch_size} is more than "
                                   f"{component_shown} allows ({component.max_batch_size})")  # fmt: skip
        version = _component_version(component_dir, component, step.model_version, where)
        path = component_dir / version / MODEL_FILE
        output = outputs[model_output]
        resolved.append(ComponentVersion(
            step.model_name, version, path, sha256_of(path), taken, output,
            component.max_batch_size,
        ))  # fmt: skip
        tensor = TensorSpec(given, output.data_type, output.dims)
        source = f"step {number}'s output {given!r} ({component_shown} {model_output!r})"
        if given in produced or (given == config.output_name) != (
            number == len(config.ensemble_steps)
        ):
            raise ModelConfigError(f"{where}: gives {given!r}; in a linear chain each tensor is "
                                   "given once, and only the last step gives the ensemble's "
                                   f"output {config.output_name!r}")  # fmt: skip
        produced.add(given)
    want = (config.num_classes,)
    if not _dims_agree(tensor.dims, want) or tensor.data_type != "TYPE_FP32":
        raise ModelConfigError(f"{shown}: the last step gives {tensor.data_type} "
                               f"{list(tensor.dims)}, the ensemble's output is TYPE_FP32 "
                               f"{list(want)} (one logit per label)")  # fmt: skip
    return tuple(resolved)


def _component_version(component_dir: Path, component: ComponentConfig, wanted: int,
                       where: str) -> str:  # fmt: skip
    """The version folder a step runs (``smoothcert.model_config.step_version``)."""
    try:
        found = {int(v.name) for v in version_folders(component_dir) if (v / MODEL_FILE).is_file()}
    except OSError:
        found = set()
    try:
        return str(step_version(component_dir.name, found, component.version_policy, wanted))
    except ModelConfigError as exc:
        raise ModelConfigError(f"{where}: {exc}") from None


def ensemble_components(model_dir: Path) -> list[str]:
    """The models an ensemble's steps name ([] for a model that is not an ensemble, or whose
    config does not parse)."""
    try:
        config = ComponentConfig.from_pbtxt((Path(model_dir) / "config.pbtxt").read_text())
    except (OSError, UnicodeDecodeError, ModelConfigError):
        return []
    names = [s.model_name for s in config.ensemble_steps] if config.is_ensemble else []
    return [n for n in names if is_model_name(n) and n != Path(model_dir).name]
