"""CUDA graphs for the PyTorch backend: one captured network (and argmax) per model, for one
fixed batch size. Shorter batches are padded: their rows are written into the front of the
static input, the rest keeps the previous batch's rows, and only the front's classes are read.
"""

from __future__ import annotations

import threading

import torch


class CudaGraphRunner:
    """``with runner.lock``: write ``runner.input[:n]``, then ``runner.run()[:n]``."""

    def __init__(
        self,
        module: torch.nn.Module,
        shape: tuple[int, ...],
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        with torch.cuda.device(device):
            self._capture(module, shape, batch_size, dtype, device)

    def _capture(
        self,
        module: torch.nn.Module,
        shape: tuple[int, ...],
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.batch_size = batch_size
        self.lock = threading.Lock()
        self.input = torch.zeros((batch_size, *shape), dtype=dtype, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(3):  # the TorchScript profiling executor optimises on early calls
                module(self.input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.output = module(self.input).argmax(1)

    def run(self) -> torch.Tensor:
        self.graph.replay()
        return self.output
