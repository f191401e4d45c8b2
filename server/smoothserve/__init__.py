"""SmoothServe: a gRPC server for randomized-smoothing certified predictions."""

__version__ = "0.1.0"
