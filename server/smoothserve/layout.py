"""Triton's model folder layout: which sub-folders of a model are its version folders."""

from __future__ import annotations

import logging
from pathlib import Path

from smoothcert.model_config import MAX_VERSION, is_version_name

__all__ = ["MAX_VERSION", "is_version_name", "version_folders"]

log = logging.getLogger("smoothserve.repository")
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
