"""Small inference checkpoints (``checkpoints/<name>.pt``): weights plus what rebuilds them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import TrainConfig
from .models import build_model


def save_model(
    path: Path, model: nn.Module, cfg: TrainConfig, classes, input_shape, extra: dict | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": cfg.to_dict(),
            "classes": list(classes),
            "input_shape": list(input_shape),
            "state_dict": model.state_dict(),
            **(extra or {}),
        },
        path,
    )


def load_model(path: Path) -> tuple[nn.Module, TrainConfig, dict]:
    """The model in eval mode, its training configuration and the whole checkpoint dict."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = TrainConfig.from_dict(state["config"])
    model = build_model(cfg.arch, cfg.dataset, state["input_shape"], len(state["classes"]))
    model.load_state_dict(state["state_dict"])
    return model.eval(), cfg, state
