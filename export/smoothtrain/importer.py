"""``smoothtrain import``: a published randomized-smoothing checkpoint into the model repository.

The literature's checkpoints (Cohen et al.'s locuslab/smoothing, SmoothAdv, denoised smoothing)
are ``torch.save({"epoch", "arch", "state_dict", "optimizer"})`` of
``Sequential(preprocessing, net)`` (``smoothtrain.published``). This command loads one on the
CPU, checks it against the named architecture strictly, exports it to ONNX with the
preprocessing inside the graph (input "input" in [0, 1] pixels, dynamic batch), checks ONNX
Runtime's outputs against torch's, and writes ``<repo>/<name>/config.pbtxt``,
``<repo>/<name>/<version>/model.onnx`` and the model card ``<repo>/<name>/README.md``.

Examples::

    smoothtrain import models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar \\
        --name cohen_cifar10_resnet110_s025
    smoothtrain import models/imagenet/resnet50/noise_0.50/checkpoint.pth.tar \\
        --name cohen_imagenet_resnet50_s050
    # SmoothAdv's first release (2019) built its models behind InputCenterLayer:
    smoothtrain import PGD_2steps/eps_64/cifar10/resnet110/noise_0.25/checkpoint.pth.tar \\
        --name smoothadv_pgd2_eps64_s025 --preprocessing center

A denoiser (``--arch dncnn``; denoised smoothing's ``cifar_dncnn``, ``imagenet_dncnn``,
``cifar_dncnn_wide``) becomes a component model: a config without smoothing parameters, input
"input" and output "denoised" of the same shape, for an ensemble to place before a classifier.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import shlex
import shutil
import sys
import tarfile
import tempfile
import textwrap
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smoothcert.model_config import SmoothModelConfig, component_config_text, sha256_of
from smoothcert.schema.model_config_pb2 import ModelConfig

from . import published
from .card import BEGIN, END
from .published import ARCHS, DATASETS, DEFAULT_PREPROCESSING, PREPROCESSING

REPO_ROOT = Path(__file__).resolve().parents[2]
INPUT_NAME, LOGITS, DENOISED = "input", "logits", "denoised"
# ONNX Runtime must reproduce torch to 1e-3 of the outputs' scale: max |ORT - torch| <=
# RELATIVE_TOLERANCE * max(1, max |torch output|) over clean and noisy inputs. float32
# reorderings (fused batch norm, other convolution algorithms) give ~1e-6 relative; a wrong
# graph (a missing layer, another preprocessing) is off by O(1) of the scale.
RELATIVE_TOLERANCE = 1e-3
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
NOISE_DIR = re.compile(r"^noise_(\d+(?:\.\d+)?)$")  # the published layouts' noise_0.25
# The published networks were saved from DataParallel or not: these prefixes are accepted.
PREFIX_HELP = (
    "classifiers: '1.' (Sequential(preprocessing, net)) or '1.module.' (net in DataParallel); "
    "denoisers: none or 'module.'"
)
SAME_NETWORK = {"dncnn": "dncnn", "cifar_dncnn": "dncnn", "imagenet_dncnn": "dncnn"}
PREPROCESSING_HELP = (
    f"the layer the network was trained behind; default {DEFAULT_PREPROCESSING}: "
    "'normalize' is (x - mean) / std, locuslab's NormalizeLayer, which Cohen et al.'s models, "
    "denoised smoothing and SmoothAdv's current code use; 'center' is x - mean, SmoothAdv's "
    "InputCenterLayer, which that repository's first release (2019) built its models with. "
    "The checkpoint cannot tell: the layer has no weights, and a checkpoint loads under either "
    "but gives wrong logits under the other, so check the code the model was trained with"
)


class ImportRefused(Exception):
    """The checkpoint cannot be imported as asked; the message says why and what to do."""


@dataclass
class Imported:
    """What an import wrote and checked (``summary()`` is the command's JSON line)."""

    name: str
    model_dir: Path
    arch: str
    dataset: str
    kind: str
    preprocessing: str | None
    sigma: float | None
    sigma_source: str
    input_shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    checkpoint: Path
    checkpoint_sha256: str
    epoch: object
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "name": self.name, "model_dir": str(self.model_dir), "kind": self.kind,
            "arch": self.arch, "dataset": self.dataset, "preprocessing": self.preprocessing,
            "sigma": self.sigma, "input_shape": list(self.input_shape),
            "ort_max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
            "checkpoint_sha256": self.checkpoint_sha256,
        }  # fmt: skip


# --- loading and checking ------------------------------------------------------------------


def load_checkpoint(path: Path, trust_pickle: bool = False) -> tuple[object, str]:
    """``torch.load`` on the CPU (the published checkpoints hold cuda:0 tensors): with
    ``weights_only=True`` (tensors, numbers, strings, containers: no code runs), and only with
    ``trust_pickle`` as a full unpickling, which runs whatever code the file names."""
    if not path.is_file():
        raise ImportRefused(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch >= 1.6 writes a zip; older torch (the 2019 checkpoints) a pickle stream, or a tar
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80" or tarfile.is_tarfile(path)):
        raise ImportRefused(f"{path} is not a torch checkpoint (not a zip, pickle or tar file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only=True"
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            why = next((line for line in lines if "WeightsUnpickler error" in line), "")
            why = why.split("WeightsUnpickler error:", 1)[-1].strip() or (lines or [""])[0]
            raise ImportRefused(
                f"{path} holds more than tensors and plain values, so torch's safe loader "
                f"(weights_only=True) refused it ({why[:200]}). Loading it fully runs code "
                "that the file names: only if you trust where it came from, pass --trust-pickle"
            ) from None
    except Exception as exc:  # noqa: BLE001 - any reader error is a file that is not a checkpoint
        raise ImportRefused(f"{path} cannot be read as a torch checkpoint: {exc}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False), "full pickle (trusted)"
    except Exception as exc:  # noqa: BLE001
        raise ImportRefused(f"{path} cannot be read as a torch checkpoint: {exc}") from None


def state_dict_of(checkpoint: object) -> dict[str, torch.Tensor]:
    if not isinstance(checkpoint, Mapping):
        raise ImportRefused(
            f"the checkpoint is a {type(checkpoint).__name__}, not a dict: expected "
            "torch.save({'epoch', 'arch', 'state_dict', 'optimizer'})"
        )
    state = checkpoint.get("state_dict")
    if state is None:
        keys = ", ".join(map(repr, list(checkpoint)[:6]))
        hint = ""
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            hint = " (it looks like a bare state dict, not the published format)"
        raise ImportRefused(f"the checkpoint has no 'state_dict' (its keys: {keys}){hint}")
    if not isinstance(state, Mapping) or not state:
        raise ImportRefused("the checkpoint's 'state_dict' is not a non-empty dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ImportRefused(f"the state dict has non-tensor entries: {_few(map(str, bad))}")
    return dict(state)


def resolve_arch(requested: str | None, checkpoint: Mapping) -> tuple[str, list[str]]:
    """The architecture: ``--arch``, else the checkpoint's ``arch``; both must agree."""
    saved = checkpoint.get("arch")
    saved = saved if isinstance(saved, str) else None
    known = ", ".join(ARCHS)
    if requested is None:
        if saved is None:
            raise ImportRefused(f"the checkpoint names no 'arch': pass --arch (known: {known})")
        if saved not in ARCHS:
            raise ImportRefused(
                f"unknown architecture {saved!r} (the checkpoint's 'arch'); known: {known}. If "
                "it is one of these under another name, pass --arch"
            )
        return saved, []
    if requested not in ARCHS:
        raise ImportRefused(f"unknown architecture {requested!r}; known: {known}")
    if saved is None or saved == requested:
        return requested, [] if saved else ["the checkpoint names no arch; --arch used"]
    if saved in ARCHS:
        if SAME_NETWORK.get(saved, saved) == SAME_NETWORK.get(requested, requested):
            return saved, [f"--arch {requested} is the checkpoint's {saved}"]
        raise ImportRefused(
            f"--arch {requested} disagrees with the checkpoint's arch {saved!r}; leave "
            "--arch out to use the checkpoint's"
        )
    return requested, [f"the checkpoint's arch {saved!r} is not a known name; --arch used"]


def resolve_dataset(arch: str, requested: str | None) -> published.Dataset:
    allowed = ARCHS[arch].datasets
    if requested is None:
        if len(allowed) > 1:
            raise ImportRefused(f"--arch {arch} needs --dataset (one of {', '.join(allowed)})")
        requested = allowed[0]
    if requested not in allowed:
        raise ImportRefused(
            f"{arch} was published for {', '.join(allowed)}, not {requested}: its input "
            "size or class count would not match"
        )
    return DATASETS[requested]


def strip_prefix(state: dict[str, torch.Tensor], arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """The network's own keys: the accepted prefix (``PREFIX_HELP``) removed from every key."""
    spec = ARCHS[arch]
    for prefix in spec.prefixes:
        if all(key.startswith(prefix) for key in state):
            return {key[len(prefix) :]: value for key, value in state.items()}, prefix
    heads: dict[str, int] = {}
    for key in state:
        head = key.split(".", 1)[0] + "." if "." in key else key
        heads[head] = heads.get(head, 0) + 1
    seen = ", ".join(f"{h!r} ({n})" for h, n in sorted(heads.items()))
    hint = ""
    if not spec.is_denoiser and all(k.startswith("module.") for k in state):
        hint = (
            "; 'module.' alone is a bare DataParallel network without the preprocessing layer: "
            "not the published format, and its preprocessing cannot be known"
        )
    elif not spec.is_denoiser and any(k.startswith("0.") for k in state):
        hint = "; the published preprocessing layer has no weights, so '0.' keys are unexpected"
    raise ImportRefused(
        f"the state dict's keys do not all share an accepted prefix ({PREFIX_HELP}); their "
        f"first components: {seen}{hint}"
    )


def load_strictly(net: nn.Module, state: dict[str, torch.Tensor], dataset: published.Dataset
                  ) -> list[str]:  # fmt: skip
    """Load ``state`` into ``net`` strictly, refusing with the keys or shapes at fault.

    The one leniency: BatchNorm's ``num_batches_tracked`` (which torch < 0.4.1 did not save,
    and which evaluation never reads) may be missing; it is then set to 0 and noted."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    notes = []
    if missing and all(k.endswith("num_batches_tracked") for k in missing):
        state = {**state, **{k: torch.zeros((), dtype=torch.long) for k in missing}}
        notes.append(f"{len(missing)} BatchNorm num_batches_tracked entries missing: set to 0")
        missing = []
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    shapes = [
        f"{k}: checkpoint {list(state[k].shape)}, architecture {list(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({_few(shapes)})")
        if any(s.startswith("fc.") for s in shapes):
            problems.append(f"the head must have {dataset.num_classes} classes for {dataset.name}")
    if problems:
        raise ImportRefused("the checkpoint does not fit the architecture: " + "; ".join(problems))
    net.load_state_dict(state, strict=True)
    return notes


def sigma_from_path(path: Path) -> float | None:
    """The noise level of a published layout's ``noise_<sigma>`` folder (the innermost one)."""
    folder = _noise_folder(path)
    return None if folder is None else float(NOISE_DIR.match(folder).group(1))


def _noise_folder(path: Path) -> str | None:
    return next((p for p in reversed(Path(path).resolve().parts[:-1]) if NOISE_DIR.match(p)), None)


def resolve_sigma(flag: float | None, path: Path, required: bool) -> tuple[float | None, str]:
    """The noise level and where it came from: ``--sigma``, else the path's ``noise_<sigma>``."""
    folder, from_path = _noise_folder(path), sigma_from_path(path)
    if flag is not None:
        if not (math.isfinite(flag) and flag > 0):
            raise ImportRefused(f"--sigma must be a finite positive number, got {flag}")
        if from_path is not None and from_path != flag:
            return flag, f"--sigma (the path's folder says {folder})"
        return flag, "--sigma"
    if from_path is not None:
        if not from_path > 0:
            raise ImportRefused(f"the path's {folder} folder is no noise level: pass --sigma")
        return from_path, f"the path's {folder} folder"
    if required:
        raise ImportRefused(
            "no noise level: pass --sigma (or keep the published noise_<sigma> folder in the path)"
        )
    return None, "unknown"


def labels_for(dataset: published.Dataset, labels_file: Path | None) -> tuple[tuple[str, ...], str]:
    if labels_file is not None:
        text = labels_file.read_text()
        try:
            raw = json.loads(text)
            labels = raw["labels"] if isinstance(raw, dict) else raw
        except json.JSONDecodeError:
            labels = [line.strip() for line in text.splitlines() if line.strip()]
        source = f"--labels {labels_file}"
    elif dataset.name == "cifar10":
        from smoothserve_client.datasets import CIFAR10_LABELS

        labels, source = list(CIFAR10_LABELS), "CIFAR-10 (torchvision's class order)"
    elif dataset.name == "imagenet":
        data = json.loads(resources.files(__package__).joinpath("labels/imagenet.json").read_text())
        labels, source = data["labels"], "smoothtrain/labels/imagenet.json: " + data["source"]
    else:  # imagenet32
        labels = [f"class_{i:03d}" for i in range(dataset.num_classes)]
        source = (
            "class numbers only: Imagenet32 (Chrabaszcz et al., 2017) numbers its classes in "
            "the ILSVRC devkit's map_clsloc.txt order, not the sorted-WordNet-ID order of "
            "torchvision's names; pass --labels with the names in that order"
        )
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ImportRefused("--labels must hold a JSON list of strings (or one name per line)")
    if len(labels) != dataset.num_classes or len(set(labels)) != len(labels):
        raise ImportRefused(
            f"{dataset.name} needs {dataset.num_classes} distinct labels, got {len(labels)} "
            f"({len(set(labels))} distinct)"
        )
    return tuple(labels), source


def max_batch_for(input_shape) -> int:
    """A power of two holding about as many values as 64 images of 3x224x224, at most 1,024."""
    elements = math.prod(input_shape)
    return int(min(1024, max(1, 2 ** math.floor(math.log2(64 * 3 * 224 * 224 / elements)))))


# --- export and check ----------------------------------------------------------------------


def export_onnx(model: nn.Module, input_shape, path: Path, output_name: str, opset: int = 17
                ) -> Path:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model.eval(), (example,), str(path), input_names=[INPUT_NAME],
            output_names=[output_name],
            dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset, dynamo=False,
        )  # fmt: skip
    return path


def compare_onnx(path: Path, model: nn.Module, input_shape, output_name: str,
                 sigma: float | None, batch: int, seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """onnx.checker, then (max |ORT - torch|, the tolerance) over random inputs in [0, 1], the
    same plus Gaussian noise at ``sigma`` (as served; 0.5 when unknown), and one single input.
    ONNX Runtime runs on its CPU provider, named explicitly."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(batch, *input_shape, generator=generator)
    noisy = clean + (sigma or 0.5) * torch.randn(clean.shape, generator=generator)
    worst, scale = 0.0, 0.0
    for x in (clean, noisy, clean[:1]):
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        (got,) = session.run([output_name], {INPUT_NAME: x.numpy().astype(np.float32)})
        if got.shape != expected.shape:
            raise ImportRefused(f"ONNX Runtime's output {got.shape} != torch's {expected.shape}")
        if not np.isfinite(expected).all():
            raise ImportRefused("torch's outputs are not finite: the weights are broken")
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - expected))))
        scale = max(scale, float(np.max(np.abs(expected))))
    return worst, RELATIVE_TOLERANCE * max(1.0, scale)


def component_config(name: str, input_shape, max_batch: int, parameters: dict[str, str]
                     ) -> str:  # fmt: skip
    """A denoiser's Triton config, without smoothing parameters: "input" -> "denoised"."""
    shape = tuple(input_shape)
    return component_config_text(name, {INPUT_NAME: shape}, {DENOISED: shape}, max_batch,
                                 parameters)  # fmt: skip


# --- the command ---------------------------------------------------------------------------


def import_checkpoint(
    checkpoint_path: Path,
    name: str,
    model_repo: Path,
    arch: str | None = None,
    dataset: str | None = None,
    sigma: float | None = None,
    preprocessing: str | None = None,
    labels_file: Path | None = None,
    trust_pickle: bool = False,
    version: int = 1,
    force: bool = False,
    verify_batch: int = 0,
    command: str = "",
    progress=None,
) -> Imported:
    """Load, check, export and verify one checkpoint; write its repository entry and card."""
    say = progress or (lambda message: None)
    checkpoint_path = Path(checkpoint_path)
    if not NAME_PATTERN.match(name):
        raise ImportRefused(f"model name {name!r}: letters, digits, '_', '.', '-' only")
    if version < 0:
        raise ImportRefused(f"--version must be a non-negative integer, got {version}")
    model_dir = Path(model_repo) / name
    if model_dir.exists() and not force:
        raise ImportRefused(f"{model_dir} already exists: pass --force to replace it")

    say(f"[1/5] loading {checkpoint_path} on the CPU")
    checkpoint, load_mode = load_checkpoint(checkpoint_path, trust_pickle)
    state = state_dict_of(checkpoint)
    arch, notes = resolve_arch(arch, checkpoint)
    spec = ARCHS[arch]
    data = resolve_dataset(arch, dataset)
    if spec.is_denoiser and preprocessing is not None:
        raise ImportRefused("a denoiser works in [0, 1] pixels: --preprocessing does not apply")
    preprocessing = None if spec.is_denoiser else (preprocessing or DEFAULT_PREPROCESSING)
    if preprocessing is not None and preprocessing not in PREPROCESSING:
        raise ImportRefused(f"--preprocessing must be one of {', '.join(PREPROCESSING)}")
    sigma, sigma_source = resolve_sigma(sigma, checkpoint_path, required=not spec.is_denoiser)
    labels, labels_source = ((), "") if spec.is_denoiser else labels_for(data, labels_file)

    say(f"[2/5] checking the state dict against {arch} ({data.name})")
    state, prefix = strip_prefix(state, arch)
    model = published.build_model(arch, data, preprocessing or DEFAULT_PREPROCESSING)
    notes += load_strictly(model if spec.is_denoiser else model[1], state, data)
    notes.append(f"key prefix stripped: {prefix!r}" if prefix else "no key prefix")
    result = Imported(
        name=name, model_dir=model_dir, arch=arch, dataset=data.name, kind=spec.kind,
        preprocessing=preprocessing, sigma=sigma, sigma_source=sigma_source,
        input_shape=data.input_shape, max_abs_diff=math.nan, tolerance=math.nan,
        checkpoint=checkpoint_path, checkpoint_sha256=sha256_of(checkpoint_path),
        epoch=checkpoint.get("epoch"), notes=notes,
    )  # fmt: skip

    # Everything is written to a staging folder first: a refusal leaves the repository as it was.
    with tempfile.TemporaryDirectory(prefix="smoothtrain-import-") as staging:
        stage = Path(staging) / name
        _export_and_write(model.eval(), result, data, labels, stage, version, verify_batch, say)
        write_card(result, stage, data, load_mode, labels_source, command)
        if model_dir.exists():  # --force
            shutil.rmtree(model_dir)
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), str(model_dir))
    return result


def _export_and_write(model: nn.Module, result: Imported, data: published.Dataset, labels,
                      stage: Path, version: int, verify_batch: int, say) -> None:  # fmt: skip
    """Export, compare (``result`` gets the difference and tolerance), write the config."""
    denoiser = result.kind == "denoiser"
    say(f"[3/5] exporting ONNX ({INPUT_NAME} [N, {', '.join(map(str, data.input_shape))}])")
    output_name = DENOISED if denoiser else LOGITS
    onnx_path = stage / str(version) / "model.onnx"
    export_onnx(model, data.input_shape, onnx_path, output_name)

    batch = verify_batch or (16 if math.prod(data.input_shape) <= 3 * 64 * 64 else 2)
    say(f"[4/5] comparing ONNX Runtime (CPU) with torch on {batch} + {batch} + 1 inputs")
    worst, tolerance = compare_onnx(
        onnx_path, model, data.input_shape, output_name, result.sigma, batch
    )
    if not worst <= tolerance:
        raise ImportRefused(
            f"ONNX Runtime's outputs differ from torch's by {worst:.3g}, more than the "
            f"tolerance {tolerance:.3g} ({RELATIVE_TOLERANCE:g} of the outputs' scale)"
        )
    result.max_abs_diff, result.tolerance = worst, tolerance

    say("[5/5] writing config.pbtxt and README.md")
    max_batch = max_batch_for(data.input_shape)
    extra = {
        "arch": result.arch, "dataset": data.name,
        "imported_from_sha256": result.checkpoint_sha256,
        **({"preprocessing": result.preprocessing} if result.preprocessing else {}),
    }  # fmt: skip
    if denoiser:
        params = {"component": "denoiser", **extra}
        if result.sigma is not None:
            params["denoiser_sigma"] = repr(float(result.sigma))
        text = component_config(result.name, data.input_shape, max_batch, params)
        (stage / "config.pbtxt").write_text(text)
    else:
        SmoothModelConfig(
            name=result.name, sigma=float(result.sigma), labels=labels,
            input_shape=data.input_shape, value_range=(0.0, 1.0), input_name=INPUT_NAME,
            output_name=LOGITS, max_batch_size=max_batch,
            preferred_batch_sizes=tuple(b for b in (max_batch // 4, max_batch // 2, max_batch) if b),
            extra_parameters=extra,
        ).check().write(stage)  # fmt: skip


def write_card(result: Imported, model_dir: Path, data: published.Dataset, load_mode: str,
               labels_source: str, command: str) -> Path:  # fmt: skip
    """The model card ``README.md``: where the checkpoint came from and how it was imported."""
    max_batch = max_batch_for(result.input_shape)
    shape = "x".join(map(str, result.input_shape))
    if result.kind == "denoiser":
        summary = (
            "Denoiser (denoised smoothing, Salman et al. 2020) imported as a component model: "
            "no smoothing parameters of its own, for an ensemble to run before a classifier."
        )
        io = (f"Input `input` float32 [N, {shape}] in [0, 1] pixels (noisy); output `denoised` "
              f"float32 [N, {shape}] (pixels, not clipped).")  # fmt: skip
        pre = "none (the denoiser works in pixel space)"
    else:
        summary = "Base classifier for randomized smoothing, imported from a published checkpoint."
        io = (f"Input `input` float32 [N, {shape}] in [0, 1] pixels; output `logits` float32 "
              f"[N, {data.num_classes}].")  # fmt: skip
        layer = "(x - mean) / std" if result.preprocessing == "normalize" else "x - mean"
        pre = (
            f"`{result.preprocessing}`: {layer}, inside the graph, mean {list(data.mean)}"
            + (f", std {list(data.std)}" if result.preprocessing == "normalize" else "")
            + (" (the default, Cohen et al.'s NormalizeLayer; SmoothAdv's first release, 2019, "
               "built its models behind InputCenterLayer: `--preprocessing center`)"
               if result.preprocessing == DEFAULT_PREPROCESSING
               else " (SmoothAdv's InputCenterLayer, chosen with `--preprocessing center`)")
        )  # fmt: skip
    sigma = "unknown" if result.sigma is None else f"{result.sigma:g}"
    rows = [
        ("checkpoint", f"`{result.checkpoint.resolve()}`"),
        ("checkpoint sha256", f"`{result.checkpoint_sha256}`"),
        ("checkpoint size", f"{result.checkpoint.stat().st_size:,} bytes"),
        ("loaded with", f"torch.load(map_location='cpu', {load_mode})"),
        ("architecture", f"`{result.arch}`"),
        ("epoch", str(result.epoch)),
        ("dataset", f"{data.name}, input {shape}"),
        ("preprocessing", pre),
        ("noise", f"Gaussian, sigma = {sigma} ({result.sigma_source})"),
        *(() if result.kind == "denoiser" else [("labels", labels_source)]),
        ("max batch size", str(max_batch)),
        ("max abs ORT - torch", f"{result.max_abs_diff:.2e} (tolerance {result.tolerance:.2e}: "
                                f"{RELATIVE_TOLERANCE:g} x max(1, max abs output))"),
        ("notes", "; ".join(result.notes)),
        ("torch / onnxruntime", f"{torch.__version__} / {_ort_version()}"),
    ]  # fmt: skip
    lines = [f"# {result.name}", "", summary, "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", io, "", "Command line:", "", "```", command or "(called from Python)", "```", ""]
    if result.kind != "denoiser":
        lines += ["## Results", "", BEGIN, "Not certified yet.", END, ""]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smoothtrain import",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.fill(
            f"Tolerance: max |ORT - torch| <= {RELATIVE_TOLERANCE:g} x max(1, max |torch output|)"
            " over random inputs in [0, 1], clean and noisy. Accepted key prefixes: "
            f"{PREFIX_HELP}. Refusals exit with status 2.",
            width=94,
        ),
    )
    p.add_argument("checkpoint", type=Path, help="the .pth.tar file")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--arch", choices=list(ARCHS), default=None, metavar="ARCH",
                   help=f"one of {', '.join(ARCHS)}; default: the checkpoint's 'arch' (both "
                        "must agree)")  # fmt: skip
    p.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="labels, input shape and preprocessing constants; default: the arch's "
                        "(cifar_* -> cifar10, resnet50 -> imagenet, imagenet32_* -> imagenet32)")  # fmt: skip
    p.add_argument("--sigma", type=float, default=None,
                   help="Gaussian noise level in [0, 1] pixels; default: the path's noise_<sigma> "
                        "folder")  # fmt: skip
    p.add_argument("--preprocessing", choices=PREPROCESSING, default=None, help=PREPROCESSING_HELP)
    p.add_argument("--labels", type=Path, default=None, dest="labels_file",
                   help="class names: a JSON list (or {'labels': [...]}) or one per line")  # fmt: skip
    p.add_argument("--trust-pickle", action="store_true",
                   help="if torch's safe loader (weights_only=True) refuses the file, unpickle it "
                        "fully: this RUNS CODE the file names; only for files you trust")  # fmt: skip
    p.add_argument("--model-repo", type=Path, default=REPO_ROOT / "model_repo")
    p.add_argument("--version", type=int, default=1, help="the version folder")
    p.add_argument("--force", action="store_true", help="replace an existing model folder")
    p.add_argument("--verify-batch", type=int, default=0,
                   help="inputs per ORT/torch comparison; 0: 16 at 32x32, 2 at 224x224")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch/ORT threads; 0: default")
    return p


def import_main(argv: list[str]) -> dict:
    """``smoothtrain import ARGS``: refusals exit with status 2 and one line on stderr."""
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "smoothtrain import " + shlex.join(argv)
    try:
        result = import_checkpoint(
            args.checkpoint, args.name, args.model_repo, arch=args.arch, dataset=args.dataset,
            sigma=args.sigma, preprocessing=args.preprocessing, labels_file=args.labels_file,
            trust_pickle=args.trust_pickle, version=args.version, force=args.force,
            verify_batch=args.verify_batch, command=command,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )  # fmt: skip
    except ImportRefused as exc:
        print(f"smoothtrain import: refused: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    summary = result.summary()
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict:
    """The ``smoothtrain`` command: ``smoothtrain import CHECKPOINT --name NAME [...]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"import": import_main}
    if not argv or argv[0] not in commands:
        print("usage: smoothtrain import CHECKPOINT --name NAME [options]  "
              "(smoothtrain import --help)", file=sys.stderr)  # fmt: skip
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    return commands[argv[0]](argv[1:])


def _pbtxt(config: ModelConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def _few(items, limit: int = 3) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return "?"


if __name__ == "__main__":
    main()
