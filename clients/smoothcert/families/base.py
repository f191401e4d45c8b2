"""What a noise family is: the norm it certifies, its scale, the two maps the statistics need,
and how its noise is drawn (on the host from PCG64 or ARS-5, and in a torch tensor)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class NoiseFamily(ABC):
    """A distribution of smoothing noise, added in [0, 1] pixel space: x + scale * eps, with
    eps drawn from the family's standard form. Instances are stateless singletons."""

    name: str  # the registry key, and the value of a model config's ``noise_family``
    norm: str  # the norm of the radii it certifies: "l2", "l1"
    scale_parameter: str  # the config parameter holding the scale: "sigma", "lambda"
    supports_sound_noise = False  # floating-point-sound noise (smoothserve.sound_noise)

    def radius(self, p_a_lower: float, scale: float) -> float:
        """The certified radius when p_A >= ``p_a_lower``: 0 below 1/2, else the family's map
        (``_radius``), inf when the map diverges at 1."""
        if p_a_lower < 0.5:
            return 0.0
        if p_a_lower >= 1.0 and self.unbounded:
            return math.inf
        return float(self._radius(p_a_lower, scale))

    unbounded = True  # the radius grows without bound as p_A -> 1

    @abstractmethod
    def _radius(self, p_a_lower: float, scale: float) -> float:
        """The radius for a lower bound p_a_lower in [1/2, 1]."""

    @abstractmethod
    def threshold(self, radius: float, scale: float) -> float:
        """The p_A a certificate of ``radius`` needs: ``radius(p) >= radius`` iff
        p >= threshold (1.0 or more: no p certifies it)."""

    # -- drawing --------------------------------------------------------------------------

    @abstractmethod
    def fill_host(
        self, generator_name: str, out: np.ndarray, x: np.ndarray, scale: float, generator: Any
    ) -> None:
        """Overwrite each row of ``out`` with x + scale * eps, eps from ``generator`` (a NumPy
        PCG64 ``Generator`` or an MKL ARS-5 ``MKLRandomState``, as ``generator_name`` says);
        drawing k rows at a time gives the same noise as drawing them at once."""

    @abstractmethod
    def skip_host(self, generator: np.random.Generator, values: int) -> None:
        """Advance a PCG64 ``generator`` past the draws of ``values`` noise values."""

    @abstractmethod
    def fill_torch(self, rows: Any, generator: Any) -> None:
        """Overwrite the torch tensor ``rows`` with standard noise eps, from a torch generator
        on the tensor's device."""

    @abstractmethod
    def fill_standard(self, out: np.ndarray, generator: np.random.Generator) -> None:
        """Overwrite ``out`` (float32) with standard noise eps from a NumPy generator."""
