"""Triton's model folder layout: which sub-folders of a model are its version folders."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("smoothserve.repository")
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
