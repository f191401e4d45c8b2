"""Client library of SmoothServe: certified predictions over gRPC."""

from .client import ModelInfo, PredictResult, SmoothServeClient, SmoothServeError

__all__ = ["ModelInfo", "PredictResult", "SmoothServeClient", "SmoothServeError"]
