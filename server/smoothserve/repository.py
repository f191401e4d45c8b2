"""The model repository on disk, in Triton's layout: ``<repo>/<name>/config.pbtxt`` and
``<repo>/<name>/<version>/model.onnx``."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NotFound
from .model_config import ModelConfigError, SmoothModelConfig

log = logging.getLogger(__name__)
MODEL_FILE = "model.onnx"
DEFAULT_MODEL_FILE = "DEFAULT_MODEL"


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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelStates:
    """What loading a repository gave: the servable models and, by name, why others failed."""

    ready: dict[str, dict[str, ModelVersion]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def fail(self, name: str, reason: str) -> None:
        """Mark a whole model failed (all its versions): one log line names it and the reason."""
        log.error("model %s not served: %s", name, reason)
        self.ready.pop(name, None)
        self.failed[name] = reason


def is_version_name(name: str) -> bool:
    """Triton's version folders are decimal numbers; ``isdigit`` alone also accepts '²'."""
    return name.isascii() and name.isdigit()


def scan(repo: Path) -> ModelStates:
    """All models of a repository, each with a checked config, or the reason it cannot be served.

    Every failure names the file at fault, so an operator can fix it from one log line.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise NotFound(f"model repository {repo} does not exist")
    states = ModelStates()
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        config_path = model_dir / "config.pbtxt"
        try:
            config = SmoothModelConfig.from_pbtxt(config_path.read_text())
        except OSError as exc:
            states.fail(model_dir.name, f"{config_path}: {exc.strerror or exc}")
            continue
        except (ModelConfigError, UnicodeDecodeError) as exc:
            states.fail(model_dir.name, f"{config_path}: {exc}")
            continue
        if config.name != model_dir.name:
            states.fail(model_dir.name, f"{config_path}: names the model {config.name!r}")
            continue
        versions = {
            v.name: ModelVersion(config, v.name, sha256_of(v / MODEL_FILE), v / MODEL_FILE)
            for v in model_dir.iterdir()
            if v.is_dir() and is_version_name(v.name) and (v / MODEL_FILE).is_file()
        }
        if versions:
            states.ready[config.name] = versions
        else:
            states.fail(model_dir.name, f"{model_dir}: no <version>/{MODEL_FILE}")
    return states


def read_default_model(repo: Path) -> str:
    """The model named in ``<repo>/DEFAULT_MODEL``, if that file exists (Triton ignores files)."""
    marker = Path(repo) / DEFAULT_MODEL_FILE
    return marker.read_text().strip() if marker.is_file() else ""


def latest(versions: dict[str, ModelVersion]) -> ModelVersion:
    return versions[max(versions, key=int)]
