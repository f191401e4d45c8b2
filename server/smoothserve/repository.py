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
    ModelConfigError,
    NotSmoothed,
    SmoothModelConfig,
    ensemble_sha256,
    sha256_of,
)

from .ensembles import (
    ComponentVersion,
    IsComponent,
    component_description,
    ensemble_components,
    ensembles_naming,
    resolve_ensemble,
)
from .errors import NotFound
from .layout import MAX_VERSION, is_version_name, version_folders
from .sound_noise import check_sound_config

__all__ = [
    "MAX_VERSION", "ComponentVersion", "IsComponent", "ModelStates", "ModelVersion",
    "is_version_name", "latest", "scan", "version_folders",
]  # fmt: skip

log = logging.getLogger(__name__)
DEFAULT_MODEL_FILE = "DEFAULT_MODEL"
NOT_IN_REPOSITORY = "not found in the repository"
# An absolute path left in a reason once the repository's own prefix is gone: its last part
# stays, so the reason still says which file, and the host's layout does not leak.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"]+/)+(?=[^\s/'\"])")


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


def fingerprint(model_dir: Path) -> tuple:
    """What poll mode compares between two polls: every file of a model folder (path, size and
    modification time), so a changed config, network or version folder reloads the model; for
    an ensemble, its components' folders too, so a changed component reloads it."""
    entries = list(_folder_fingerprint(model_dir))
    for component in ensemble_components(model_dir):
        entries.append((component, _folder_fingerprint(Path(model_dir).parent / component)))
    return tuple(entries)


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


def read_default_model(repo: Path) -> str:
    """The model named in ``<repo>/DEFAULT_MODEL``, if that file exists (Triton ignores files)."""
    marker = Path(repo) / DEFAULT_MODEL_FILE
    return marker.read_text().strip() if marker.is_file() else ""


def latest(versions: dict[str, ModelVersion]) -> ModelVersion:
    return versions[max(versions, key=int)]
