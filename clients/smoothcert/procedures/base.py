"""What a certification procedure is: it validates its options, plans its looks at the
counts, and decides each look. Every procedure is a sequence of looks (fixed-n CERTIFY and
PREDICT have one), so the server's sampling loop and the verifier's recomputation are the
same for all of them."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..families import NoiseFamily

ABSTAIN = -1
CONTINUE, CERTIFIED, ABSTAINED, PREDICTED = "continue", "certified", "abstain", "predicted"


@dataclass(frozen=True)
class Plan:
    """Everything a procedure's answer depends on besides the counts, fixed before any sample
    is drawn: alpha, the noise family and its scale, the cap on estimation samples (n), the
    first look of a sequential procedure, and its options (0: unset). ``horizon``: the
    samples an anytime certificate spreads alpha over (0: the cap), which a deadline may set
    before its second look, from the time left (never from the votes)."""

    alpha: float
    family: NoiseFamily
    scale: float
    cap: int
    first_look: int = 0
    target_radius: float = 0.0
    tolerance: float = 0.0
    horizon: int = 0


@dataclass(frozen=True)
class Look:
    """What one look of a sequential test decided, before it becomes an answer."""

    decision: str  # CERTIFIED, ABSTAINED or CONTINUE
    p_a_lower: float
    radius: float  # the family's radius of p_a_lower (0 below 1/2)
    look_alpha: float  # the level of this look's bound: recompute with it


@dataclass(frozen=True)
class Outcome:
    """One look decided: ``decision`` is CONTINUE (sample on) or the final one, and the other
    fields are the answer if sampling stops at this look (a deadline may stop an anytime
    certificate at any look)."""

    decision: str
    prediction: int  # the class, or ABSTAIN
    candidate: int  # the class the selection counts (or, for PREDICT, the counts) pick
    radius: float  # 0 when abstaining and for PREDICT
    p_a_lower: float
    p_value: float  # PREDICT's binomial test; 0 otherwise
    bound_alpha: float  # the level of the bound behind this answer

    @property
    def abstain(self) -> bool:
        return self.prediction == ABSTAIN


class Procedure(ABC):
    """An entry of the registry (``procedures/__init__.py``); instances are stateless."""

    name: str
    mode = "certify"  # the request mode it answers: "certify", or "predict" for PREDICT
    selects = True  # picks c_A from n0 selection samples drawn apart from the estimation ones
    sequential = False  # looks at the counts more than once
    anytime = False  # may be stopped at any look (by the request's deadline)
    timed = False  # under a deadline, sizes its looks to the time left (``schedule_problems``)
    adaptive_selection = False  # draws selection samples only until they are clear (selection.py)
    options: tuple[str, ...] = ()  # the Plan options it reads: "target_radius", "tolerance"

    def check(self, plan: Plan) -> None:
        """ValueError for options the procedure cannot use: its own out of range, another
        procedure's set (0 means unset), so nothing ignored reaches a signed record."""
        for option in ("target_radius", "tolerance"):
            value = getattr(plan, option)
            if option not in self.options and value != 0:
                raise ValueError(f"{option} applies to procedure {_user(option)} only; leave it "
                                 f"unset for {self.name}")  # fmt: skip
        if not (0 < plan.alpha < 0.5):
            raise ValueError(f"alpha must lie in (0, 0.5), got {plan.alpha}")
        if not (math.isfinite(plan.scale) and plan.scale > 0):
            raise ValueError(f"the noise scale must be positive, got {plan.scale}")
        if plan.cap < 1:
            raise ValueError(f"n must be positive, got {plan.cap}")

    def schedule(self, plan: Plan) -> tuple[int, ...]:
        """The look sizes, fixed before sampling: one look at n unless sequential."""
        return (plan.cap,)

    def schedule_problems(self, plan: Plan, schedule: tuple[int, ...], timed: bool) -> list[str]:
        """Why ``schedule`` (the looks a record names) cannot be this procedure's under
        ``plan`` (none: it can). Untimed: it must be ``schedule(plan)``."""
        expected = self.schedule(plan)
        if tuple(schedule) != expected:
            return [f"look_schedule {list(schedule)} does not follow from the plan (first_look "
                    f"{plan.first_look}, cap {plan.cap}): {self.name} gives {list(expected)}"]  # fmt: skip
        return []

    def prepare(self, plan: Plan, schedule: tuple[int, ...]) -> None:
        """Compute and cache the tables its looks will read for ``plan`` and ``schedule``, so
        that a server can do it off its event loop before the first look (none by default)."""
        return None

    @abstractmethod
    def look(
        self, plan: Plan, schedule: tuple[int, ...], k: int, selection: np.ndarray,
        counts: np.ndarray,
    ) -> Outcome:  # fmt: skip
        """Look k (1-based) of ``schedule`` at the estimation ``counts`` drawn so far
        (``schedule[k - 1]`` of them), with the candidate from ``selection``."""


def _user(option: str) -> str:
    return {"target_radius": "target_radius", "tolerance": "anytime"}[option]


def look_schedule(first: int, cap: int) -> tuple[int, ...]:
    """Sample sizes at which the counts are looked at: first, 2 first, 4 first, ..., cap."""
    if first < 1 or cap < 1:
        raise ValueError("first look and cap must be positive")
    looks, size = [], min(first, cap)
    while size < cap:
        looks.append(size)
        size *= 2
    looks.append(cap)
    return tuple(looks)


def check_look(schedule: tuple[int, ...], k: int, counts: np.ndarray) -> int:
    """The number of samples look k holds; ValueError if the counts do not hold them."""
    if not 1 <= k <= len(schedule):
        raise ValueError(f"look {k} is not in a schedule of {len(schedule)} looks")
    n = int(np.sum(counts))
    if n != schedule[k - 1]:
        raise ValueError(f"look {k} needs {schedule[k - 1]} samples, the counts hold {n}")
    return n
