"""The server loads and serves every model committed to model_repo/."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoothcert.model_config import (
    ComponentConfig,
    SmoothModelConfig,
    ensemble_sha256,
    sha256_of,
)
from smoothserve_client import SmoothServeClient
from smoothserve_client.datasets import load_fashion_mnist
from smoothserve_dev.testing import ServerProcess

REPO = Path(__file__).resolve().parents[1] / "model_repo"
CONFIGS = {p.name: ComponentConfig.from_pbtxt((p / "config.pbtxt").read_text())
           for p in REPO.iterdir() if (p / "config.pbtxt").exists()}  # fmt: skip
# The smoothed models; the others are ensembles' components (no smoothing parameters).
COMMITTED = sorted(name for name, c in CONFIGS.items() if c.smoothed)
COMPONENTS = sorted(set(CONFIGS) - set(COMMITTED))


@pytest.fixture(scope="module")
def client():
    with ServerProcess(REPO) as server, SmoothServeClient(server.address, timeout=120) as c:
        yield c


def test_every_committed_model_is_listed(client) -> None:
    assert len(COMMITTED) >= 4
    assert sorted(m.name for m in client.list_models()) == COMMITTED


def test_every_component_is_a_step_of_a_committed_ensemble() -> None:
    steps = {s.model_name for c in CONFIGS.values() if c.is_ensemble for s in c.ensemble_steps}
    assert COMPONENTS and set(COMPONENTS) <= steps


def model_sha256(name: str, version: str) -> str:
    """What the server reports for a committed model: its file's hash, or an ensemble's
    composition hash (the latest version of each step)."""
    config = CONFIGS[name]
    if not config.is_ensemble:
        return sha256_of(REPO / name / version / "model.onnx")
    return ensemble_sha256([(s.model_name, sha256_of(REPO / s.model_name / "1" / "model.onnx"))
                            for s in config.ensemble_steps])  # fmt: skip


def test_the_default_model_is_the_one_named_in_the_repository(client) -> None:
    test_set = load_fashion_mnist()
    result = client.predict("", test_set.images[0], n=200)
    assert result.model_name == (REPO / "DEFAULT_MODEL").read_text().strip()


@pytest.mark.parametrize("name", COMMITTED)
def test_every_committed_model_certifies_real_images(client, name: str) -> None:
    config = SmoothModelConfig.from_pbtxt((REPO / name / "config.pbtxt").read_text())
    test_set = load_fashion_mnist()
    results = [client.predict(name, test_set.images[i], n=2_000, seed=i) for i in range(10)]
    for r in results:
        assert r.sigma == config.sigma and r.model_name == name
        assert r.model_sha256 == model_sha256(name, r.model_version)
    correct = sum(r.prediction == int(test_set.labels[i]) for i, r in enumerate(results))
    assert correct >= 6, f"{name}: {correct}/10 correct"
