"""The model repository on disk, in Triton's layout: ``<repo>/<name>/config.pbtxt`` and
``<repo>/<name>/<version>/model.onnx``."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from smoothcert.model_config import MODEL_FILE, ModelConfigError, SmoothModelConfig, sha256_of

from .errors import NotFound
from .sound_noise import check_sound_config

log = logging.getLogger(__name__)
DEFAULT_MODEL_FILE = "DEFAULT_MODEL"
NOT_IN_REPOSITORY = "not found in the repository"
MAX_VERSION = 2**63 - 1  # versions travel as int64 (Triton) and as strings of <= 19 digits
# An absolute path left in a reason once the repository's own prefix is gone: its last part
# stays, so the reason still says which file, and the host's layout does not leak.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"]+/)+(?=[^\s/'\"])")


@dataclass(frozen=True)
class ModelVersion:
    """One servable network: its smoothing config, version and the hash of its file."""

    config: SmoothModelConfig
    version: str
    sha256: str
    path: Path | None = None  # the ONNX file, when it is on this host

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
    """One model folder into ``states``: ready with the versions its policy serves, or failed."""
    config_path = model_dir / "config.pbtxt"
    shown = f"{model_dir.name}/config.pbtxt"  # relative to the repository
    try:
        config = check_sound_config(SmoothModelConfig.from_pbtxt(config_path.read_text()))
    except OSError as exc:
        return states.fail(model_dir.name, f"{shown}: {exc.strerror or exc}")
    except (ModelConfigError, UnicodeDecodeError) as exc:
        return states.fail(model_dir.name, f"{shown}: {exc}")
    if config.name != model_dir.name:
        return states.fail(model_dir.name, f"{shown}: names the model {config.name!r}")
    found = {int(v.name): v for v in version_folders(model_dir) if (v / MODEL_FILE).is_file()}
    if not found:
        return states.fail(model_dir.name, f"{model_dir.name}: no <version>/{MODEL_FILE}")
    policy = config.version_policy
    chosen = policy.select(set(found))
    if not chosen:
        return states.fail(model_dir.name, f"{shown}: version_policy {policy.describe()} selects "
                           f"none of the versions {sorted(found)}")  # fmt: skip
    states.ready[config.name] = {
        str(v): ModelVersion(config, str(v), sha256_of(found[v] / MODEL_FILE), found[v] / MODEL_FILE)
        for v in sorted(chosen)
    }


def fingerprint(model_dir: Path) -> tuple:
    """What poll mode compares between two polls: every file of a model folder (path, size and
    modification time), so a changed config, network or version folder reloads the model."""
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
