"""DnCNN (Zhang et al., 2017), the denoiser of denoised smoothing (Salman et al., NeurIPS 2020).

The key names are those of microsoft/denoised-smoothing's ``archs/dncnn.py`` (``dncnn.0.weight``,
``dncnn.2.weight``, ``dncnn.3.running_mean``, ...), so its published checkpoints load strictly:
a first convolution with bias and a ReLU, ``depth - 2`` blocks of convolution without bias,
batch norm (eps 1e-4, momentum 0.95) and ReLU, a last convolution without bias; the network
predicts the noise and returns ``x - noise``. It works in [0, 1] pixel space: it takes the
noisy pixels ``x + delta`` and gives the classifier denoised pixels, which the classifier then
normalises inside its own graph.
"""

from __future__ import annotations

import torch
from torch import nn


class DnCNN(nn.Module):
    def __init__(self, image_channels: int = 3, n_channels: int = 64, depth: int = 17) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("DnCNN depth must be at least 2")
        layers: list[nn.Module] = [
            nn.Conv2d(image_channels, n_channels, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
        ]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(n_channels, n_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(n_channels, eps=0.0001, momentum=0.95),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(n_channels, image_channels, 3, padding=1, bias=False))
        self.dncnn = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.dncnn(x)
