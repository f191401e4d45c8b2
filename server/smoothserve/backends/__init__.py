"""Backends run the base network on batches of noisy inputs and return class indices.

A backend knows models and arrays, nothing of gRPC or of the statistics. ``BACKENDS`` says how
each is built from the server's config: its module (imported lazily, so optional ones cost
nothing), its class, and which config option feeds which constructor argument. Every backend
gets the same number of batches in flight as the scheduler keeps
(``ServerConfig.effective_pipeline_depth``).
"""

from __future__ import annotations

import importlib

from .base import Backend

# name -> (module, class, {constructor argument: config option})
BACKENDS: dict[str, tuple[str, str, dict[str, str]]] = {
    "onnxruntime": (".onnxruntime", "OnnxRuntimeBackend", {
        "model_repo": "model_repo", "providers": "providers",
        "intra_op_threads": "intra_op_threads", "inter_op_threads": "inter_op_threads",
        "load_timeout_s": "model_load_timeout_s",
    }),
    "triton": (".triton", "TritonBackend", {
        "urls": "triton_urls", "timeout_s": "triton_timeout_s", "fp16": "triton_fp16",
        "use_shm": "triton_shm", "model_repo": "model_repo", "batch_size": "batch_size",
    }),
    "torch": (".torch_backend", "TorchBackend", {
        "model_repo": "model_repo", "device": "torch_device", "half": "torch_half",
        "cuda_graphs": "torch_cuda_graphs", "batch_size": "batch_size",
    }),
}  # fmt: skip
EXTRAS = {"triton": "smoothserve[triton]", "torch": "smoothserve[torch]"}


def create_backend(config) -> Backend:
    """The backend ``config.backend`` names, built from the config."""
    if config.backend not in BACKENDS:
        raise ValueError(f"unknown backend {config.backend!r}")
    module, name, options = BACKENDS[config.backend]
    try:
        backend_class = getattr(importlib.import_module(module, __package__), name)
    except ImportError as exc:
        extra = EXTRAS.get(config.backend, "smoothserve")
        raise SystemExit(f"--backend {config.backend} needs {extra!r}: {exc}") from None
    arguments = {argument: getattr(config, option) for argument, option in options.items()}
    return backend_class(**arguments, max_concurrent_batches=config.effective_pipeline_depth)


__all__ = ["BACKENDS", "Backend", "create_backend"]
