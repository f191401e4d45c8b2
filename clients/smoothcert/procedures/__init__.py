"""The registry of certification procedures: a new procedure is one module here with a
``PROCEDURE`` entry (see ``base.Procedure``). The server's sampling loop and
``smoothserve-verify`` both dispatch through ``get(name)``."""

from __future__ import annotations

from . import anytime, fixed_n, predict, selection, target_radius
from .base import ABSTAIN, CONTINUE, Look, Outcome, Plan, Procedure, look_schedule

PROCEDURES: dict[str, Procedure] = {
    m.PROCEDURE.name: m.PROCEDURE for m in (predict, fixed_n, target_radius, anytime)
}
# The procedures a CERTIFY request may name (PREDICT is the mode, not a procedure option).
CERTIFY_PROCEDURES = tuple(name for name, p in PROCEDURES.items() if p.mode == "certify")


# Entries that differ in record format v2: its records still verify with them.
PROCEDURES_V2: dict[str, Procedure] = {
    **PROCEDURES,
    "anytime": anytime.PROCEDURE_V2,
    "target_radius": target_radius.PROCEDURE_V2,
}


def get(name: str, v2: bool = False) -> Procedure:
    """The procedure called ``name`` (``v2``: as format v2 records used it); ValueError naming
    the known ones otherwise."""
    try:
        return (PROCEDURES_V2 if v2 else PROCEDURES)[name]
    except KeyError:
        known = ", ".join(PROCEDURES)
        raise ValueError(f"unknown procedure {name!r}; known: {known}") from None


__all__ = ["ABSTAIN", "CERTIFY_PROCEDURES", "CONTINUE", "PROCEDURES", "Look", "Outcome", "Plan",
           "Procedure", "get", "look_schedule", "selection"]  # fmt: skip
