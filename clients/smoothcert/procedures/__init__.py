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


# Entries that differ in older record formats: their records still verify with them.
BY_FORMAT: dict[int, dict[str, Procedure]] = {
    4: PROCEDURES,
    3: {**PROCEDURES, "target_radius": target_radius.PROCEDURE_V3},
    2: {**PROCEDURES, "anytime": anytime.PROCEDURE_V2, "target_radius": target_radius.PROCEDURE_V2},
}


def get(name: str, version: int = 4) -> Procedure:
    """The procedure called ``name`` as records of format ``version`` (2 to 4, the current)
    used it; ValueError naming the known ones otherwise."""
    try:
        return BY_FORMAT[version][name]
    except KeyError:
        known = ", ".join(PROCEDURES)
        raise ValueError(f"unknown procedure {name!r}; known: {known}") from None


__all__ = ["ABSTAIN", "CERTIFY_PROCEDURES", "CONTINUE", "PROCEDURES", "Look", "Outcome", "Plan",
           "Procedure", "get", "look_schedule", "selection"]  # fmt: skip
