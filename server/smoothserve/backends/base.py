from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..repository import ModelVersion


class Backend(ABC):
    """Runs base networks. ``classify`` is called concurrently from the event loop."""

    name: str

    @abstractmethod
    async def start(self) -> dict[str, dict[str, ModelVersion]]:
        """Load or discover models; return name -> version -> ModelVersion."""

    @abstractmethod
    async def classify(self, model: ModelVersion, batch: np.ndarray) -> np.ndarray:
        """Class index (int64) of the base network f for each row of ``batch`` (N, C, H, W)."""

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None
