"""Backends run the base network on batches of noisy inputs and return class indices.

A backend knows models and arrays, nothing of gRPC or of the statistics.
"""

from .base import Backend


def create_backend(config) -> Backend:
    """The backend ``config.backend`` names, imported lazily so optional ones cost nothing."""
    if config.backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            config.model_repo,
            providers=config.providers,
            intra_op_threads=config.intra_op_threads,
            inter_op_threads=config.inter_op_threads,
            max_concurrent_batches=config.pipeline_depth,
        )
    if config.backend == "triton":
        from .triton import TritonBackend

        return TritonBackend.from_config(config)
    if config.backend == "torch":
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
            max_concurrent_batches=config.pipeline_depth,
        )
    raise ValueError(f"unknown backend {config.backend!r}")


__all__ = ["Backend", "create_backend"]
