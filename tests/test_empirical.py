"""The empirical robust accuracy: the SmoothAdv attack on a torch twin, then PREDICT through
the live server (the project's one sampling path), on the linear model of known radius."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LINEAR_SIGMA, linear_weights
from test_linear_radius import point_at

torch = pytest.importorskip("torch")

from smoothtrain.evaluate import empirical_robust_accuracy  # noqa: E402


def torch_twin() -> torch.nn.Module:
    """The served linear model in torch: logits [0, w.x + b]."""
    w, b = linear_weights()
    layer = torch.nn.Linear(w.size, 2)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[1] = torch.from_numpy(w.reshape(-1))
        layer.bias.copy_(torch.tensor([0.0, b]))
    return torch.nn.Sequential(torch.nn.Flatten(), layer)


def test_attack_then_server_predict(client):
    x = torch.from_numpy(np.stack([point_at(0.3, 1) for _ in range(4)]))
    y = torch.ones(4, dtype=torch.int64)
    accuracy = empirical_robust_accuracy(
        torch_twin(), x, y, LINEAR_SIGMA, [0.0, 1.0], client, "linear", steps=10, m=4, n=2000,
        alpha=0.001, progress=False,
    )  # fmt: skip
    # unattacked, every point lies 0.3 (1.2 sigma) on the class-1 side: PREDICT says 1;
    # an L2 attack of 1.0 pushes each across the boundary of this linear model
    assert accuracy == {0.0: 1.0, 1.0: 0.0}
    wrong = empirical_robust_accuracy(
        torch_twin(), x, 1 - y, LINEAR_SIGMA, [0.0], client, "linear", steps=1, m=1, n=2000,
        alpha=0.001, progress=False,
    )  # fmt: skip
    assert wrong == {0.0: 0.0}
