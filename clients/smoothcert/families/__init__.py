"""The registry of noise families: a new family is one module here with a ``FAMILY`` entry
(see ``base.NoiseFamily``), plus its training transform (``smoothtrain``)."""

from __future__ import annotations

from . import gaussian, uniform
from .base import NoiseFamily

FAMILIES: dict[str, NoiseFamily] = {m.FAMILY.name: m.FAMILY for m in (gaussian, uniform)}
DEFAULT = gaussian.FAMILY.name


def family(name: str) -> NoiseFamily:
    """The family called ``name``; ValueError naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown noise family {name!r}; known: {', '.join(FAMILIES)}") from None


__all__ = ["DEFAULT", "FAMILIES", "NoiseFamily", "family"]
