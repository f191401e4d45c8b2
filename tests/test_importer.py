"""``smoothtrain import``: published-format checkpoints -> model repository -> a real server."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from google.protobuf import text_format  # noqa: E402
from torch import nn  # noqa: E402

from smoothcert import model_config  # noqa: E402
from smoothcert.model_config import NotSmoothed, SmoothModelConfig, sha256_of  # noqa: E402
from smoothcert.schema.model_config_pb2 import ModelConfig  # noqa: E402
from smoothtrain import importer, published  # noqa: E402
from smoothtrain.importer import ImportRefused, import_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


class PublishedNormalize(nn.Module):
    """locuslab's NormalizeLayer as published: plain tensors (no keys), repeat + permute."""

    def __init__(self, means, sds) -> None:
        super().__init__()
        self.means, self.sds = torch.tensor(means), torch.tensor(sds)

    def forward(self, x):
        b, _, h, w = x.shape
        means = self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        return (x - means) / self.sds.repeat((b, h, w, 1)).permute(0, 3, 1, 2)


class PublishedCenter(nn.Module):
    """SmoothAdv's InputCenterLayer as published."""

    def __init__(self, means) -> None:
        super().__init__()
        self.means = torch.tensor(means)

    def forward(self, x):
        b, _, h, w = x.shape
        return x - self.means.repeat((b, h, w, 1)).permute(0, 3, 1, 2)


def published_model(arch: str, dataset: str, center: bool = False, seed: int = 0) -> nn.Module:
    """The model the published code builds, with random weights and batch-norm statistics."""
    torch.manual_seed(seed)
    data = published.DATASETS[dataset]
    net = published.build_net(arch, data)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.0)
            module.bias.data.normal_(0, 0.1)
    if published.ARCHS[arch].is_denoiser:
        return net.eval()
    layer = PublishedCenter(data.mean) if center else PublishedNormalize(data.mean, data.std)
    return nn.Sequential(layer, net).eval()


def save_published(path: Path, model: nn.Module, arch: str, data_parallel: bool = False,
                   **extra) -> Path:  # fmt: skip
    """``torch.save`` exactly as the published training scripts do."""
    saved = model
    if data_parallel:  # ImageNet's nets were DataParallel: keys 1.module.* (bare: module.*)
        if isinstance(model, nn.Sequential):
            saved = nn.Sequential(model[0], nn.DataParallel(model[1]))
        else:
            saved = nn.DataParallel(model)
    optimizer = torch.optim.SGD(saved.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"epoch": 90, "arch": arch, "state_dict": saved.state_dict(),
         "optimizer": optimizer.state_dict(), **extra},
        path,
    )  # fmt: skip
    return path


def ort_outputs(model_dir: Path, x: torch.Tensor, output: str = "logits") -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == [output]
    return session.run([output], {"input": x.numpy()})[0]


def reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return float(np.abs(got - want).max()) <= 1e-3 * max(1.0, float(np.abs(want).max()))


SERVED = (
    # arch, dataset, DataParallel keys, --sigma (None: from the path), certify n0, n
    ("cifar_resnet20", "cifar10", False, None, 10, 100),
    ("cifar_resnet110", "cifar10", False, 0.5, 10, 100),
    ("resnet50", "imagenet", True, 0.5, 10, 50),
)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, dict]:
    """The three served architectures, imported through the command line into one repository."""
    tmp = tmp_path_factory.mktemp("importer")
    repo, models = tmp / "repo", {}
    for arch, dataset, dp, sigma, _, _ in SERVED:
        model = published_model(arch, dataset)
        noise = "noise_0.25" if sigma is None else "noise_1.00"  # --sigma overrides the path
        ckpt = save_published(
            tmp / "models" / dataset / arch / noise / "checkpoint.pth.tar", model, arch, dp
        )
        argv = ["import", str(ckpt), "--name", f"pub_{arch}", "--model-repo", str(repo)]
        argv += ["--threads", "1"] + ([] if sigma is None else ["--sigma", str(sigma)])
        summary = importer.main(argv)
        models[arch] = {"model": model, "checkpoint": ckpt, "summary": summary}
    return repo, models


@pytest.mark.parametrize("arch", [s[0] for s in SERVED])
def test_import_writes_config_onnx_and_card(imported, arch) -> None:
    repo, models = imported
    entry = SERVED[[s[0] for s in SERVED].index(arch)]
    model, ckpt, summary = (models[arch][k] for k in ("model", "checkpoint", "summary"))
    model_dir = repo / f"pub_{arch}"
    config = SmoothModelConfig.from_pbtxt((model_dir / "config.pbtxt").read_text())
    data = published.DATASETS[entry[1]]
    assert config.sigma == (entry[3] or 0.25) and config.input_shape == data.input_shape
    assert config.value_range == (0.0, 1.0) and len(config.labels) == data.num_classes
    assert config.input_name == "input" and config.output_name == "logits"
    assert config.max_batch_size == (64 if entry[1] == "imagenet" else 1024)
    assert config.extra_parameters["preprocessing"] == "normalize"
    assert summary["ort_max_abs_diff"] <= summary["tolerance"]
    # The graph holds the normalisation and takes [0, 1] pixels, with a dynamic batch axis.
    for batch in (1, 3):
        x = torch.rand(batch, *data.input_shape, generator=torch.Generator().manual_seed(batch))
        assert close(ort_outputs(model_dir, x), reference(model, x))
    card = (model_dir / "README.md").read_text()
    assert card.startswith(f"# pub_{arch}") and sha256_of(ckpt) in card
    assert str(ckpt.resolve()) in card and "smoothtrain import " in card
    assert f"`{arch}`" in card and "| epoch | 90 |" in card and "`normalize`" in card


def test_labels_are_cifar10_and_imagenet(imported) -> None:
    repo, _ = imported
    cifar = SmoothModelConfig.from_pbtxt((repo / "pub_cifar_resnet20" / "config.pbtxt").read_text())
    assert cifar.labels[:2] == ("airplane", "automobile") and cifar.labels[-1] == "truck"
    net = SmoothModelConfig.from_pbtxt((repo / "pub_resnet50" / "config.pbtxt").read_text())
    assert net.labels[0] == "tench" and net.labels[-1] == "toilet tissue"
    assert len(set(net.labels)) == 1000


def test_certify_imported_models_through_the_server(imported) -> None:
    testing = pytest.importorskip("smoothserve_dev.testing")
    client_module = pytest.importorskip("smoothserve_client")
    repo, _ = imported
    args = ["--batch-size", "16", "--intra-op-threads", "1", "--noise-threads", "1"]
    server = testing.ServerProcess(model_repo=repo, args=args, start_timeout=120)
    with server, client_module.SmoothServeClient(server.address, timeout=300) as client:
        for arch, dataset, _, sigma, n0, n in SERVED:
            shape = published.DATASETS[dataset].input_shape
            image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
            result = client.predict(
                f"pub_{arch}", image, mode="certify", n0=n0, n=n, alpha=0.001, seed=0
            )
            classes = published.DATASETS[dataset].num_classes
            assert isinstance(result.prediction, int) and -1 <= result.prediction < classes
            assert isinstance(result.radius, float) and result.radius >= 0
            assert (result.prediction == -1) == bool(result.abstain)
            assert result.n == n and result.n0 == n0 and sum(result.counts) == n
            assert result.sigma == (sigma or 0.25) and result.model_name == f"pub_{arch}"


def test_imagenet32_resnet110_imports_without_serving(tmp_path) -> None:
    model = published_model("imagenet32_resnet110", "imagenet32")
    ckpt = save_published(tmp_path / "noise_0.50" / "checkpoint.pth.tar", model,
                          "imagenet32_resnet110")  # fmt: skip
    result = import_checkpoint(ckpt, "i32", tmp_path / "repo")
    assert result.dataset == "imagenet32" and result.sigma == 0.5
    config = SmoothModelConfig.from_pbtxt((tmp_path / "repo" / "i32" / "config.pbtxt").read_text())
    assert config.input_shape == (3, 32, 32) and len(config.labels) == 1000
    assert config.max_batch_size == 1024
    x = torch.rand(4, 3, 32, 32)
    assert close(ort_outputs(tmp_path / "repo" / "i32", x), reference(model, x))
    # ImageNet32's class order is not torchvision's: the card says so, --labels names them.
    assert "map_clsloc" in (tmp_path / "repo" / "i32" / "README.md").read_text()


@pytest.mark.parametrize(
    ("saved_arch", "flag", "data_parallel"),
    [("cifar_dncnn", "dncnn", False), ("dncnn", "dncnn", True)],
)
def test_dncnn_becomes_a_component(tmp_path, saved_arch, flag, data_parallel) -> None:
    model = published_model("dncnn", "cifar10")
    ckpt = save_published(tmp_path / "noise_0.25" / "checkpoint.pth.tar", model, saved_arch,
                          data_parallel)  # fmt: skip
    keys = list(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    assert keys[0] == ("module.dncnn.0.weight" if data_parallel else "dncnn.0.weight")
    result = import_checkpoint(ckpt, "den", tmp_path / "repo", arch=flag, dataset="cifar10")
    assert result.kind == "denoiser" and result.max_abs_diff <= result.tolerance
    model_dir = tmp_path / "repo" / "den"
    text = (model_dir / "config.pbtxt").read_text()
    config = text_format.Parse(text, ModelConfig())
    assert [i.name for i in config.input] == ["input"] and list(config.input[0].dims) == [3, 32, 32]
    assert [o.name for o in config.output] == ["denoised"]
    assert list(config.output[0].dims) == [3, 32, 32]
    assert not {"sigma", "labels", "input_shape", "value_range"} & set(config.parameters)
    assert config.parameters["denoiser_sigma"].string_value == "0.25"
    with pytest.raises(NotSmoothed):
        SmoothModelConfig.from_pbtxt(text)
    component_config = getattr(model_config, "ComponentConfig", None)  # ensembles' reader
    if component_config is not None:
        component = component_config.from_pbtxt(text)
        assert not component.smoothed and not component.is_ensemble
        assert [(t.name, t.dims) for t in component.inputs] == [("input", (3, 32, 32))]
        assert [(t.name, t.dims) for t in component.outputs] == [("denoised", (3, 32, 32))]
    x = torch.rand(2, 3, 32, 32)
    assert close(ort_outputs(model_dir, x, "denoised"), reference(model, x))
    assert "component" in (model_dir / "README.md").read_text()


def test_imagenet_dncnn_keys_are_under_module(tmp_path) -> None:
    state = {"module.dncnn.0.weight": torch.zeros(1)}
    stripped, prefix = importer.strip_prefix(state, "imagenet_dncnn")
    assert prefix == "module." and list(stripped) == ["dncnn.0.weight"]
    net = published.build_net("cifar_dncnn", published.DATASETS["cifar10"])
    ckpt = save_published(tmp_path / "noise_0.25" / "den.pth.tar", net, "cifar_dncnn")
    with pytest.raises(ImportRefused, match="preprocessing does not apply"):
        import_checkpoint(ckpt, "x", tmp_path / "repo", preprocessing="center")


# --- strictness: each refusal is cheap (before any export) -----------------------------------


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory) -> tuple[Path, nn.Module, dict]:
    tmp = tmp_path_factory.mktemp("strict")
    model = published_model("cifar_resnet20", "cifar10", seed=3)
    ckpt = save_published(tmp / "noise_0.25" / "checkpoint.pth.tar", model, "cifar_resnet20")
    return ckpt, model, torch.load(ckpt, map_location="cpu", weights_only=True)


def _refused(tmp_path: Path, payload, match: str, **kwargs) -> str:
    path = tmp_path / "noise_0.25" / "bad.pth.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    with pytest.raises(ImportRefused, match=match) as info:
        import_checkpoint(path, "bad", tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo" / "bad" / "config.pbtxt").exists()
    return str(info.value)


def test_refuses_what_is_not_a_published_checkpoint(tmp_path, resnet20) -> None:
    _, _, ckpt = resnet20
    _refused(tmp_path, [torch.zeros(3)], "not a dict")
    text = tmp_path / "noise_0.25" / "README.md"
    text.write_text("# not a checkpoint")
    with pytest.raises(ImportRefused, match="not a torch checkpoint"):
        import_checkpoint(text, "bad", tmp_path / "repo")
    message = _refused(tmp_path, dict(ckpt["state_dict"]), "no 'state_dict'")
    assert "bare state dict" in message
    message = _refused(tmp_path, {**ckpt, "arch": "vgg16"}, "unknown architecture 'vgg16'")
    assert "cifar_resnet110" in message and "resnet50" in message
    _refused(tmp_path, {k: v for k, v in ckpt.items() if k != "arch"}, "names no 'arch'")
    _refused(tmp_path, ckpt, "disagrees", arch="cifar_resnet110")
    _refused(tmp_path, ckpt, "published for cifar10", dataset="imagenet")


def test_refuses_missing_extra_and_misshapen_keys(tmp_path, resnet20) -> None:
    _, _, ckpt = resnet20
    state = dict(ckpt["state_dict"])
    missing = {k: v for k, v in state.items() if k != "1.layer2.0.downsample.0.weight"}
    message = _refused(tmp_path, {**ckpt, "state_dict": missing}, "1 missing keys")
    assert "layer2.0.downsample.0.weight" in message
    extra = {**state, "1.extra.weight": torch.zeros(2)}
    assert "extra.weight" in _refused(tmp_path, {**ckpt, "state_dict": extra}, "unexpected keys")
    wrong = {**state, "1.fc.weight": torch.zeros(100, 64), "1.fc.bias": torch.zeros(100)}
    message = _refused(tmp_path, {**ckpt, "state_dict": wrong}, "shape mismatches")
    assert "fc.weight: checkpoint [100, 64], architecture [10, 64]" in message
    assert "10 classes for cifar10" in message
    bare = {k[len("1.") :]: v for k, v in state.items()}
    _refused(tmp_path, {**ckpt, "state_dict": bare}, "accepted prefix")
    module = {"module." + k: v for k, v in bare.items()}
    assert "bare DataParallel" in _refused(tmp_path, {**ckpt, "state_dict": module}, "prefix")
    buffers = {**state, "0.mean": torch.zeros(3)}
    _refused(tmp_path, {**ckpt, "state_dict": buffers}, "'0.' keys are unexpected")


def test_old_checkpoints_without_num_batches_tracked_load(tmp_path, resnet20) -> None:
    _, model, ckpt = resnet20
    old = {k: v for k, v in ckpt["state_dict"].items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "noise_0.25" / "old.pth.tar"
    path.parent.mkdir(parents=True)
    torch.save({**ckpt, "state_dict": old}, path)
    result = import_checkpoint(path, "old", tmp_path / "repo")
    assert any("num_batches_tracked" in note for note in result.notes)
    x = torch.rand(2, 3, 32, 32)
    assert close(ort_outputs(tmp_path / "repo" / "old", x), reference(model, x))


def test_cli_refusal_exits_2_with_one_line(tmp_path, resnet20, capsys) -> None:
    ckpt, _, _ = resnet20
    with pytest.raises(SystemExit) as info:
        importer.main(["import", str(ckpt), "--name", "x", "--model-repo", str(tmp_path),
                       "--arch", "resnet50"])  # fmt: skip
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("smoothtrain import: refused: --arch resnet50 disagrees")


def test_preprocessing_center_versus_the_default(tmp_path) -> None:
    """An input-centering checkpoint loads under either layer; only --preprocessing center gives
    its logits. The default (normalize) is applied, and recorded, when the flag is left out."""
    model = published_model("cifar_resnet20", "cifar10", center=True, seed=5)
    ckpt = save_published(tmp_path / "noise_0.12" / "checkpoint.pth.tar", model, "cifar_resnet20")
    repo = tmp_path / "repo"
    centered = import_checkpoint(ckpt, "center", repo, preprocessing="center")
    default = import_checkpoint(ckpt, "default", repo)
    assert centered.preprocessing == "center" and default.preprocessing == "normalize"
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    want = reference(model, x)
    assert close(ort_outputs(repo / "center", x), want)
    assert not close(ort_outputs(repo / "default", x), want)
    for name, kind in (("center", "center"), ("default", "normalize")):
        config = SmoothModelConfig.from_pbtxt((repo / name / "config.pbtxt").read_text())
        assert config.extra_parameters["preprocessing"] == kind and config.sigma == 0.12
        assert f"`{kind}`" in (repo / name / "README.md").read_text()
    assert "(the default" in (repo / "default" / "README.md").read_text()
    assert "default normalize" in " ".join(importer.parser().format_help().split())


def test_sigma_from_the_path_and_the_flag(tmp_path) -> None:
    path = tmp_path / "models" / "cifar10" / "resnet110" / "noise_0.25" / "checkpoint.pth.tar"
    assert importer.sigma_from_path(path) == 0.25
    assert importer.resolve_sigma(None, path, True) == (0.25, "the path's noise_0.25 folder")
    assert importer.resolve_sigma(0.5, path, True)[0] == 0.5
    assert "noise_0.25" in importer.resolve_sigma(0.5, path, True)[1]
    with pytest.raises(ImportRefused, match="pass --sigma"):
        importer.resolve_sigma(None, tmp_path / "checkpoint.pth.tar", True)
    assert importer.resolve_sigma(None, tmp_path / "x.pt", False) == (None, "unknown")


def test_gpu_saved_checkpoints_load_on_the_cpu(tmp_path, resnet20, monkeypatch) -> None:
    """The published checkpoints hold cuda:0 tensors: written here by tagging every storage
    'cuda:0' as torch.save does on a GPU; they load only with map_location='cpu'."""
    _, model, ckpt = resnet20
    path = tmp_path / "noise_0.25" / "gpu.pth.tar"
    path.parent.mkdir(parents=True)
    with monkeypatch.context() as patch:  # and in the pre-1.6 format, as torch 1.0 wrote them
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"  # a pickle stream, not a zip
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    result = import_checkpoint(path, "gpu", tmp_path / "repo")
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    assert result.max_abs_diff <= result.tolerance
    x = torch.rand(2, 3, 32, 32)
    assert close(ort_outputs(tmp_path / "repo" / "gpu", x), reference(model, x))


def test_pickled_objects_need_trust_pickle(tmp_path, resnet20) -> None:
    """Some checkpoints also pickle the training arguments (an argparse.Namespace): torch's
    safe loader refuses them, and only --trust-pickle unpickles them fully."""
    _, _, ckpt = resnet20
    payload = {**ckpt, "args": argparse.Namespace(lr=0.1)}
    message = _refused(tmp_path, payload, "--trust-pickle")
    assert "runs code" in message.lower() or "RUNS CODE" in message
    result = import_checkpoint(
        tmp_path / "noise_0.25" / "bad.pth.tar", "trusted", tmp_path / "repo", trust_pickle=True
    )
    assert "trusted" in (tmp_path / "repo" / "trusted" / "README.md").read_text()
    assert result.sigma == 0.25


def test_existing_models_are_kept_unless_forced(tmp_path, resnet20) -> None:
    ckpt, _, _ = resnet20
    import_checkpoint(ckpt, "again", tmp_path)
    with pytest.raises(ImportRefused, match="--force"):
        import_checkpoint(ckpt, "again", tmp_path)
    import_checkpoint(ckpt, "again", tmp_path, force=True)


def test_labels_data_and_batch_sizes() -> None:
    data = json.loads((ROOT / "export/smoothtrain/labels/imagenet.json").read_text())
    assert len(data["labels"]) == len(set(data["labels"])) == 1000
    assert "torchvision" in data["source"] and len(data["source_sha256"]) == 64
    assert importer.max_batch_for((3, 224, 224)) == 64
    assert importer.max_batch_for((3, 32, 32)) == 1024


def test_smoothtrain_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "export" / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["smoothtrain"] == "smoothtrain.importer:main"
    data = project["tool"]["setuptools"]["package-data"]["smoothtrain"]
    assert "labels/*.json" in data


def test_a_refused_export_leaves_the_repository_alone(tmp_path, resnet20, monkeypatch) -> None:
    ckpt, _, _ = resnet20
    monkeypatch.setattr(importer, "RELATIVE_TOLERANCE", -1.0)  # no export can pass
    with pytest.raises(ImportRefused, match="differ from torch's"):
        import_checkpoint(ckpt, "off", tmp_path / "repo")
    assert not (tmp_path / "repo" / "off").exists()


def test_labels_file_names_the_classes(tmp_path) -> None:
    names = [f"n{i:08d}" for i in range(1000)]
    (tmp_path / "labels.json").write_text(json.dumps(names))
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    data = published.DATASETS["imagenet32"]
    for path in (tmp_path / "labels.json", tmp_path / "labels.txt"):
        labels, source = importer.labels_for(data, path)
        assert labels == tuple(names) and str(path) in source
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(ImportRefused, match="needs 1000 distinct labels, got 2"):
        importer.labels_for(data, tmp_path / "short.txt")
