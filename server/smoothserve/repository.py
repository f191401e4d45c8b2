"""The model repository on disk, in Triton's layout: ``<repo>/<name>/config.pbtxt`` and
``<repo>/<name>/<version>/model.onnx``."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import NotFound
from .model_config import SmoothModelConfig

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


def scan(repo: Path) -> dict[str, dict[str, ModelVersion]]:
    """All models of a repository: name -> version -> ModelVersion.

    A directory without a readable config or without any version is skipped with a warning,
    so one broken model does not take the others down.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise NotFound(f"model repository {repo} does not exist")
    models: dict[str, dict[str, ModelVersion]] = {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        try:
            config = SmoothModelConfig.from_pbtxt((model_dir / "config.pbtxt").read_text())
        except (OSError, ValueError, KeyError) as exc:
            log.warning("skipping %s: %s", model_dir, exc)
            continue
        if config.name != model_dir.name:
            log.warning("skipping %s: config names it %r", model_dir, config.name)
            continue
        versions = {
            v.name: ModelVersion(config, v.name, sha256_of(v / MODEL_FILE), v / MODEL_FILE)
            for v in model_dir.iterdir()
            if v.is_dir() and v.name.isdigit() and (v / MODEL_FILE).is_file()
        }
        if versions:
            models[config.name] = versions
        else:
            log.warning("skipping %s: no <version>/%s", model_dir, MODEL_FILE)
    return models


def read_default_model(repo: Path) -> str:
    """The model named in ``<repo>/DEFAULT_MODEL``, if that file exists (Triton ignores files)."""
    marker = Path(repo) / DEFAULT_MODEL_FILE
    return marker.read_text().strip() if marker.is_file() else ""


def latest(versions: dict[str, ModelVersion]) -> ModelVersion:
    return versions[max(versions, key=int)]
