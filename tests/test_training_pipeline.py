"""The offline half on a tiny budget: train -> export -> serve -> certify through gRPC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from smoothcert.model_config import SmoothModelConfig  # noqa: E402
from smoothserve_client.datasets import load_fashion_mnist  # noqa: E402
from smoothtrain.attacks import ddn_l2, draw_noise, pgd_l2  # noqa: E402
from smoothtrain.checkpoint import load_model  # noqa: E402
from smoothtrain.cli import main  # noqa: E402
from smoothtrain.models import build_model  # noqa: E402
from smoothtrain.onnx_export import export_onnx, verify_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SLICE = ROOT / "data" / "fashion-mnist-slice"
TINY = [
    "--data-root", str(SLICE), "--train-limit", "256", "--batch-size", "64",
    "--max-batches", "2", "--eval-limit", "64", "--threads", "1", "--no-progress",
]  # fmt: skip


def _train(tmp_path: Path, name: str, *extra: str) -> dict:
    return main(
        ["--name", name, *TINY, "--model-repo", str(tmp_path / "repo"),
         "--checkpoint-dir", str(tmp_path / "ckpt"), "--run-dir", str(tmp_path / "runs" / name),
         *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    tmp_path = tmp_path_factory.mktemp("pipeline")
    summary = _train(
        tmp_path, "tiny_smoothadv", "--method", "smoothadv", "--sigma", "0.25",
        "--epsilon", "0.5", "--num-steps", "2", "--num-noise-vec", "2", "--warmup", "2",
        "--epochs", "2",
    )  # fmt: skip
    return tmp_path, summary


def test_export_writes_a_servable_model_dir(trained) -> None:
    tmp_path, summary = trained
    model_dir = tmp_path / "repo" / "tiny_smoothadv"
    assert (model_dir / "1" / "model.onnx").is_file()
    assert (model_dir / "README.md").read_text().startswith("# tiny_smoothadv")
    config = SmoothModelConfig.from_pbtxt((model_dir / "config.pbtxt").read_text())
    assert config.sigma == 0.25 and config.input_shape == (1, 28, 28)
    assert config.platform == "onnxruntime_onnx" and len(config.labels) == 10
    assert summary["ort_max_abs_diff"] <= 1e-4


def test_onnx_matches_torch_to_1e4(tmp_path) -> None:
    torch.manual_seed(0)
    for arch, shape in (("cnn", (1, 28, 28)), ("resnet20", (3, 32, 32))):
        model = build_model(arch, "cifar10" if shape[0] == 3 else "fashion-mnist", shape, 10)
        path = export_onnx(model.eval(), shape, tmp_path / f"{arch}.onnx")
        assert verify_onnx(path, model, shape, sigma=0.5, batch=8) <= 1e-4


def test_checkpoint_round_trip_and_resume(trained) -> None:
    tmp_path, _ = trained
    _, cfg, state = load_model(tmp_path / "ckpt" / "tiny_smoothadv.pt")
    assert cfg.method == "smoothadv" and len(state["history"]) == 2
    resumed = _train(
        tmp_path, "tiny_smoothadv", "--method", "smoothadv", "--sigma", "0.25",
        "--epsilon", "0.5", "--num-steps", "2", "--num-noise-vec", "2", "--warmup", "2",
        "--epochs", "3", "--resume",
    )  # fmt: skip
    _, _, state = load_model(Path(resumed["checkpoint"]))
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]


def test_attacks_stay_in_the_ball_and_the_box() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", "fashion-mnist", (1, 28, 28), 10).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    noise = draw_noise(x, 3, 0.25)
    for adv in (pgd_l2(model, x, y, 0.5, 3, noise=noise), ddn_l2(model, x, y, 0.5, 3, noise)):
        assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
        assert float((adv - x).flatten(1).norm(dim=1).max()) <= 0.5 + 2e-2  # DDN quantises


def test_certify_through_the_server(trained) -> None:
    testing = pytest.importorskip("smoothserve_dev.testing")
    client_module = pytest.importorskip("smoothserve_client")
    dataset_module = pytest.importorskip("smoothserve_client.dataset")
    tmp_path, _ = trained
    test_set = load_fashion_mnist(SLICE, "test")
    with testing.ServerProcess(model_repo=tmp_path / "repo", args=[]) as server:
        client = client_module.SmoothServeClient(server.address)
        result = client.predict(
            "tiny_smoothadv", test_set.images[0], mode="certify", n0=10, n=200, alpha=0.001, seed=0
        )
        assert result.prediction in range(-1, 10)
        assert result.radius >= 0 and (result.prediction == -1) == bool(result.abstain)
        rows = dataset_module.certify_dataset(
            client, "tiny_smoothadv", test_set, [0, 1, 2], n0=10, n=200, alpha=0.001,
            concurrency=2, progress=False,
        )  # fmt: skip
        assert [r.idx for r in rows] == [0, 1, 2]
        assert all(r.correct == int(r.predict == r.label) for r in rows)
        assert np.isfinite([r.radius for r in rows]).all()
        close = getattr(client, "close", None)
        if close is not None:
            close()
