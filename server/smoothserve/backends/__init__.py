"""Backends run the base network on batches of noisy inputs and return class indices.

A backend knows models and arrays, nothing of gRPC or of the statistics. Each is built from
the server's config by one entry of ``BACKENDS``, imported lazily so optional ones cost
nothing, and each gets the same number of batches in flight as the scheduler keeps
(``ServerConfig.effective_pipeline_depth``).
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Backend


def _onnxruntime(config) -> Backend:
    from .onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        config.model_repo,
        providers=config.providers,
        intra_op_threads=config.intra_op_threads,
        inter_op_threads=config.inter_op_threads,
        max_concurrent_batches=config.effective_pipeline_depth,
    )


def _triton(config) -> Backend:
    from .triton import TritonBackend

    return TritonBackend(
        config.triton_urls,
        timeout_s=config.triton_timeout_s,
        fp16=config.triton_fp16,
        use_shm=config.triton_shm,
        model_repo=config.model_repo,
        batch_size=config.batch_size,
        batches_in_flight=config.effective_pipeline_depth,
    )


def _torch(config) -> Backend:
    try:
        from .torch_backend import TorchBackend
    except ImportError as exc:
        raise SystemExit(f"--backend torch needs torch ('smoothserve[torch]'): {exc}") from None
    return TorchBackend(
        config.model_repo,
        device=config.torch_device,
        half=config.torch_half,
        cuda_graphs=config.torch_cuda_graphs,
        batch_size=config.batch_size,
        max_concurrent_batches=config.effective_pipeline_depth,
    )


BACKENDS: dict[str, Callable[..., Backend]] = {
    "onnxruntime": _onnxruntime,
    "triton": _triton,
    "torch": _torch,
}


def create_backend(config) -> Backend:
    """The backend ``config.backend`` names."""
    if config.backend not in BACKENDS:
        raise ValueError(f"unknown backend {config.backend!r}")
    return BACKENDS[config.backend](config)


__all__ = ["BACKENDS", "Backend", "create_backend"]
