"""Denoised smoothing's training side (smoothtrain.denoise): a tiny end-to-end run of both
objectives into a Triton ensemble layout, the frozen classifier, and the MSE objective."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from smoothcert.model_config import NotSmoothed, SmoothModelConfig  # noqa: E402
from smoothtrain import denoise  # noqa: E402
from smoothtrain.dncnn import DnCNN  # noqa: E402
from smoothtrain.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("denoised")
    denoise.main([
        "--sigmas", "0.25", "--classifier-epochs", "1", "--mse-epochs", "1",
        "--stab-epochs", "1", "--max-batches", "2", "--batch-size", "32", "--train-limit", "256",
        "--eval-limit", "64", "--n-channels", "8", "--depth", "4",
        "--model-repo", str(root / "repo"), "--checkpoint-dir", str(root / "ckpt"),
        "--runs-dir", str(root / "runs"), "--no-progress",
    ])  # fmt: skip
    return root


def _ort(path: Path, x: np.ndarray, output: str) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([output], {"input": x})[0]


def test_tiny_run_writes_components_and_ensembles(tiny_run: Path) -> None:
    repo = tiny_run / "repo"
    for name in ("fmnist_cnn_plain", "fmnist_dncnn_mse_s025", "fmnist_dncnn_stab_s025"):
        assert (repo / name / "1" / "model.onnx").is_file()
        assert (repo / name / "README.md").is_file()
        with pytest.raises(NotSmoothed):  # a component: no sigma, no labels
            SmoothModelConfig.from_pbtxt((repo / name / "config.pbtxt").read_text())
    for objective in ("mse", "stab"):
        name = f"fmnist_denoised_{objective}_s025"
        assert (repo / name / "1" / ".keep").is_file()
        assert not (repo / name / "1" / "model.onnx").exists()
        text = (repo / name / "config.pbtxt").read_text()
        config = SmoothModelConfig.from_pbtxt(text)
        assert config.platform == "ensemble" and config.max_batch_size == 256
        (first, second) = config.ensemble_steps
        assert first.model_name == f"fmnist_dncnn_{objective}_s025"
        assert dict(first.input_map) == {"input": "input"}
        assert dict(first.output_map) == {"denoised": "denoised"}
        assert second.model_name == "fmnist_cnn_plain"
        assert dict(second.input_map) == {"input": "denoised"}
        assert config.extra_parameters["training"] == "denoised_smoothing"
        assert config.sigma == 0.25 and config.num_classes == 10
        assert config.input_shape == (1, 28, 28) and config.value_range == (0.0, 1.0)
        assert "Command line" in (repo / name / "README.md").read_text()
    summary = json.loads((tiny_run / "runs" / "denoised" / "summary.json").read_text())
    assert summary["models"]["fmnist_denoised_stab_s025"]["chain_max_abs_diff"] < 1e-4
    stab = torch.load(tiny_run / "ckpt" / "fmnist_dncnn_stab_s025.pt", weights_only=False)
    assert stab["config"]["init"] == "fmnist_dncnn_mse_s025"  # Stab+MSE, as the paper


def test_exported_onnx_equals_torch(tiny_run: Path) -> None:
    repo, ckpt = tiny_run / "repo", tiny_run / "ckpt"
    x = (torch.rand(5, 1, 28, 28) + 0.25 * torch.randn(5, 1, 28, 28)).numpy()
    for objective in ("mse", "stab"):
        model, _, _ = denoise.load_denoiser(ckpt / f"fmnist_dncnn_{objective}_s025.pt")
        got = _ort(repo / f"fmnist_dncnn_{objective}_s025" / "1" / "model.onnx", x, "denoised")
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert got.shape == (5, 1, 28, 28)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    from smoothtrain.checkpoint import load_model

    classifier, _, _ = load_model(ckpt / "fmnist_cnn_plain.pt")
    got = _ort(repo / "fmnist_cnn_plain" / "1" / "model.onnx", x, "logits")
    with torch.no_grad():
        np.testing.assert_allclose(got, classifier(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_stability_loss_leaves_the_classifier_frozen() -> None:
    torch.manual_seed(0)
    classifier = denoise.freeze(build_model("cnn", "fashion-mnist", (1, 28, 28), 10))
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    cfg = denoise.DenoiserConfig(name="t", objective="stab", sigma=0.5, n_channels=4, depth=3,
                                 epochs=1, batch_size=8, eval_limit=8, lr=1e-2)  # fmt: skip
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    denoiser = cfg.build()
    loss = denoise.stability_loss(denoiser, classifier, x, 0.5 * torch.randn_like(x))
    loss.backward()
    assert all(p.grad is None for p in classifier.parameters())
    assert all(p.grad is not None for p in denoiser.parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in denoiser.parameters())
    result = denoise.train_denoiser(cfg, classifier, (x, y), (x, y), progress=False)
    after = classifier.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # not even BN statistics
    assert not classifier.training
    assert result.history[0]["train_loss"] > 0


def test_stability_targets_are_the_classifiers_clean_prediction() -> None:
    classifier = denoise.freeze(build_model("cnn", "fashion-mnist", (1, 28, 28), 10))
    identity = DnCNN(1, 4, 3)
    torch.nn.init.zeros_(identity.dncnn[-1].weight)  # D(z) = z
    x = torch.rand(6, 1, 28, 28)
    loss = denoise.stability_loss(identity, classifier, x, torch.zeros_like(x))
    logits = classifier(x)
    expected = torch.nn.functional.cross_entropy(logits, logits.argmax(1))
    assert torch.allclose(loss, expected)


def test_mse_loss_on_an_identity_denoiser_is_the_mean_squared_noise() -> None:
    denoiser = DnCNN(image_channels=1, n_channels=4, depth=3)
    torch.nn.init.zeros_(denoiser.dncnn[-1].weight)  # predicts no noise: D(z) = z
    x = torch.full((2, 1, 4, 4), 0.5)
    noise = torch.empty_like(x)
    noise[0], noise[1] = 0.1, -0.3  # ||D(x + d) - x||^2 / numel = (0.1^2 + 0.3^2) / 2 = 0.05
    assert float(denoise.mse_loss(denoiser, x, noise).detach()) == pytest.approx(0.05, abs=1e-6)
    denoiser.eval()
    assert float(denoise.mse_loss(denoiser, x, noise).detach()) == pytest.approx(0.05, abs=1e-6)
    assert float(denoise.mse_loss(denoiser, x, torch.zeros_like(x)).detach()) == 0.0
