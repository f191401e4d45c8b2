"""The model repository on disk, in Triton's layout: ``<repo>/<name>/config.pbtxt`` and
``<repo>/<name>/<version>/model.onnx``.

A smoothed model may be a Triton ensemble (``platform: "ensemble"``, its version folders empty
but for a placeholder): its ``ensemble_scheduling`` steps name *components*, other models of
the same repository whose configs have no smoothing parameters (denoised smoothing: a denoiser,
then a classifier). The ensemble is ready when its steps form a linear chain over components
that are in the repository with ``<version>/model.onnx`` and whose tensor dims and types agree
(``resolve_ensemble``); its ``ModelVersion`` then carries the component files (``steps``) and
a ``sha256`` that binds them all (``smoothcert.model_config.ensemble_sha256``). A component is
neither ready nor failed: ``ModelStates.components`` says which ensembles use it. A step may
also name a smoothed model (a classifier served on its own as well): its smoothing parameters
play no part in the ensemble's. A step naming an ensemble (nesting) is refused.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from smoothcert.model_config import (
    MODEL_FILE,
    ComponentConfig,
    ModelConfigError,
    NotSmoothed,
    SmoothModelConfig,
    TensorSpec,
    ensemble_sha256,
    sha256_of,
)

from .errors import InvalidArgument, NotFound
from .sound_noise import check_sound_config

log = logging.getLogger(__name__)
DEFAULT_MODEL_FILE = "DEFAULT_MODEL"
NOT_IN_REPOSITORY = "not found in the repository"
MAX_VERSION = 2**63 - 1  # versions travel as int64 (Triton) and as strings of <= 19 digits
# An absolute path left in a reason once the repository's own prefix is gone: its last part
# stays, so the reason still says which file, and the host's layout does not leak.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"]+/)+(?=[^\s/'\"])")


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


@dataclass(frozen=True)
class ModelVersion:
    """One servable network: its smoothing config, version and the hash of its file. For an
    ensemble, ``steps`` are its components in order and ``sha256`` binds all their files."""

    config: SmoothModelConfig
    version: str
    sha256: str
    path: Path | None = None  # the ONNX file, when it is on this host (None for an ensemble)
    steps: tuple[ComponentVersion, ...] = ()

    @property
    def is_ensemble(self) -> bool:
        return bool(self.steps)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def key(self) -> tuple[str, str, str]:
        """What a backend keys the loaded network by: a reloaded version folder with another
        file is another network, and requests admitted before the reload finish on the old."""
        return self.config.name, self.version, self.sha256


@dataclass
class ModelStates:
    """What loading a repository gave: the servable models and, by name, why others failed."""

    ready: dict[str, dict[str, ModelVersion]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    root: Path | None = None  # the repository: reasons name files relative to it
    # ensembles' components (no smoothing parameters): not served alone, never failed; by name,
    # what they are ("a component of ensemble ...")
    components: dict[str, str] = field(default_factory=dict)

    def fail(self, name: str, reason: str) -> None:
        """Mark a whole model failed (all its versions): one log line names it and the reason.

        Clients read the reason (ListModels, GetModelInfo, the Open Inference Protocol), so it
        names files relative to the repository, never by the host's absolute paths."""
        reason = self.relative(reason)
        log.error("model %s not served: %s", name, reason)
        self.ready.pop(name, None)
        self.failed[name] = reason

    def relative(self, text: str) -> str:
        """``text`` with the repository's prefix removed from the paths it names, and any other
        absolute path cut to ``.../<file name>``."""
        if self.root is not None:
            prefixes = {str(self.root), os.path.abspath(self.root), str(Path(self.root).resolve())}
            for prefix in sorted(prefixes, key=len, reverse=True):
                text = text.replace(prefix.rstrip(os.sep) + os.sep, "")
        return ABSOLUTE_PATH.sub(".../", text)


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


def scan(repo: Path, names: Iterable[str] | None = None) -> ModelStates:
    """The models of a repository (all, or those in ``names``), each with a checked config and
    the versions its version policy serves, or the reason it cannot be served.

    Every failure names the file at fault, so an operator can fix it from one log line. A name
    with no folder fails with "not found in the repository".
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise NotFound(f"model repository {repo} does not exist")
    states = ModelStates(root=repo)
    present = model_names(repo)
    for name in sorted(present if names is None else set(names)):
        if name in present:
            read_model(repo / name, states)
        else:
            states.fail(name, f"model {name!r} {NOT_IN_REPOSITORY}")
    return states


def model_names(repo: Path) -> set[str]:
    """The model folders of a repository (any other file, DEFAULT_MODEL included, is ignored)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise NotFound(f"model repository {repo} does not exist")
    return {p.name for p in repo.iterdir() if p.is_dir()}


def read_model(model_dir: Path, states: ModelStates) -> None:
    """One model folder into ``states``: ready with the versions its policy serves, failed, or
    (no smoothing parameters, named by an ensemble's step) a component."""
    config_path = model_dir / "config.pbtxt"
    shown = f"{model_dir.name}/config.pbtxt"  # relative to the repository
    try:
        config = check_sound_config(SmoothModelConfig.from_pbtxt(config_path.read_text()))
    except OSError as exc:
        return states.fail(model_dir.name, f"{shown}: {exc.strerror or exc}")
    except NotSmoothed as exc:
        users = ensembles_naming(model_dir.parent, model_dir.name)
        if not users:
            return states.fail(model_dir.name, f"{shown}: {exc} (and no ensemble names it)")
        states.components[model_dir.name] = component_description(users)
        log.info("model %s: %s", model_dir.name, states.components[model_dir.name])
        return None
    except (ModelConfigError, UnicodeDecodeError) as exc:
        return states.fail(model_dir.name, f"{shown}: {exc}")
    if config.name != model_dir.name:
        return states.fail(model_dir.name, f"{shown}: names the model {config.name!r}")
    if config.is_ensemble:
        try:
            steps = resolve_ensemble(model_dir.parent, config)
        except ModelConfigError as exc:
            return states.fail(model_dir.name, str(exc))
        # an ensemble's version folders hold no network (Triton needs them; a placeholder file
        # keeps an empty one in git)
        found = {int(v.name): v for v in version_folders(model_dir)}
    else:
        steps = ()
        found = {int(v.name): v for v in version_folders(model_dir) if (v / MODEL_FILE).is_file()}
    if not found:
        wanted = "<version>/ folder" if config.is_ensemble else f"<version>/{MODEL_FILE}"
        return states.fail(model_dir.name, f"{model_dir.name}: no {wanted}")
    policy = config.version_policy
    chosen = policy.select(set(found))
    if not chosen:
        return states.fail(model_dir.name, f"{shown}: version_policy {policy.describe()} selects "
                           f"none of the versions {sorted(found)}")  # fmt: skip
    if steps:
        digest = ensemble_sha256([(s.name, s.sha256) for s in steps])
        states.ready[config.name] = {
            str(v): ModelVersion(config, str(v), digest, None, steps) for v in sorted(chosen)
        }
        return None
    states.ready[config.name] = {
        str(v): ModelVersion(config, str(v), sha256_of(found[v] / MODEL_FILE), found[v] / MODEL_FILE)
        for v in sorted(chosen)
    }


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
    """The version folder a step runs: ``wanted``, or the latest its version policy serves
    (-1); it must hold model.onnx and be served by the component's version policy (as Triton
    loads it)."""
    name = component_dir.name
    try:
        found = {int(v.name) for v in version_folders(component_dir) if (v / MODEL_FILE).is_file()}
    except OSError:
        found = set()
    served = component.version_policy.select(found)
    if wanted == -1:
        if not served:
            raise ModelConfigError(f"{where}: {name}: no <version>/{MODEL_FILE}")
        return str(max(served))
    if wanted not in found:
        raise ModelConfigError(f"{where}: version {wanted} of {name!r} has no {name}/{wanted}/"
                               f"{MODEL_FILE}")  # fmt: skip
    if wanted not in served:
        raise ModelConfigError(f"{where}: version {wanted} of {name!r} is not among those its "
                               f"version_policy serves ({sorted(served)})")  # fmt: skip
    return str(wanted)


def fingerprint(model_dir: Path) -> tuple:
    """What poll mode compares between two polls: every file of a model folder (path, size and
    modification time), so a changed config, network or version folder reloads the model; for
    an ensemble, its components' folders too, so a changed component reloads it."""
    entries = list(_folder_fingerprint(model_dir))
    for component in ensemble_components(model_dir):
        entries.append((component, _folder_fingerprint(Path(model_dir).parent / component)))
    return tuple(entries)


def ensemble_components(model_dir: Path) -> list[str]:
    """The models an ensemble's steps name ([] for a model that is not an ensemble, or whose
    config does not parse)."""
    try:
        config = ComponentConfig.from_pbtxt((Path(model_dir) / "config.pbtxt").read_text())
    except (OSError, UnicodeDecodeError, ModelConfigError):
        return []
    names = [s.model_name for s in config.ensemble_steps] if config.is_ensemble else []
    return [n for n in names if n and "/" not in n and n not in (".", "..", Path(model_dir).name)]


def _folder_fingerprint(model_dir: Path) -> tuple:
    entries = []
    for path in sorted(Path(model_dir).rglob("*")):
        try:
            stat = path.stat()
        except OSError:  # removed while listed: the next poll sees the rest
            continue
        if path.is_file():
            entries.append((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def version_folders(model_dir: Path) -> list[Path]:
    """The model's version folders; any other folder is ignored (as Triton does), with a log
    line, so a "007" or a 23-digit folder does not silently go unserved."""
    folders = []
    for folder in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        if is_version_name(folder.name):
            folders.append(folder)
        else:
            log.warning(
                "model %s: folder %r ignored: a version folder is a decimal number without "
                "leading zeros, at most %d", model_dir.name, folder.name, MAX_VERSION,
            )  # fmt: skip
    return folders


def read_default_model(repo: Path) -> str:
    """The model named in ``<repo>/DEFAULT_MODEL``, if that file exists (Triton ignores files)."""
    marker = Path(repo) / DEFAULT_MODEL_FILE
    return marker.read_text().strip() if marker.is_file() else ""


def latest(versions: dict[str, ModelVersion]) -> ModelVersion:
    return versions[max(versions, key=int)]
