from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from smoothserve_client import SmoothServeClient
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess

LINEAR_SHAPE = (1, 8, 8)
LINEAR_SIGMA = 0.25


def linear_weights() -> tuple[np.ndarray, float]:
    w = np.random.default_rng(7).normal(size=LINEAR_SHAPE).astype(np.float32)
    return w, -float(w.sum()) * 0.5  # the boundary passes through the grey image


@pytest.fixture
def exact_spending(monkeypatch):
    """bench/exact_spending.py (it imports bench/target_grid.py as a sibling)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    return importlib.import_module("exact_spending")


@pytest.fixture(scope="session")
def linear_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("model_repo")
    w, b = linear_weights()
    write_linear_model(repo, "linear", w, b, LINEAR_SIGMA, LINEAR_SHAPE)
    return repo


@pytest.fixture(scope="session")
def server(linear_repo):
    with ServerProcess(linear_repo, args=["--batch-size", "1024", "--max-n", "400000"]) as srv:
        yield srv


@pytest.fixture(scope="session")
def client(server):
    with SmoothServeClient(server.address, timeout=120) as c:
        yield c
