from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..repository import ModelVersion

NoisySegment = tuple[np.ndarray, int, int]  # (clean input (C, H, W), count, seed)


class Backend(ABC):
    """Runs base networks. ``classify`` is called concurrently from the event loop.

    A backend whose ``generates_noise`` is True draws the noise itself, on its device: the
    scheduler then calls ``classify_noisy`` instead of ``classify`` and fills no host buffers.
    """

    name: str
    generates_noise: bool = False

    @abstractmethod
    async def start(self) -> dict[str, dict[str, ModelVersion]]:
        """Load or discover models; return name -> version -> ModelVersion."""

    @abstractmethod
    async def classify(self, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        """Class index (int64) of the base network f for each row of ``batch`` (N, C, H, W)."""

    async def classify_noisy(
        self, model: ModelVersion, segments: list[NoisySegment], sigma: float
    ) -> np.ndarray:
        """Class indices of f on ``count`` draws of x + N(0, sigma^2 I) per segment, the noise
        drawn on the device from ``seed``; concatenated in segment order."""
        raise NotImplementedError(f"backend {self.name!r} does not generate noise")

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None
