"""Denoised smoothing on Fashion-MNIST (Salman et al., NeurIPS 2020): training and export.

A plain SmallCNN trained without noise (the "pretrained classifier"), then DnCNN denoisers
that make it robust under Gaussian noise: with the MSE objective ||D(x + delta) - x||^2, and
with the stability objective CE(f(D(x + delta)), argmax f(x)) with f frozen, initialised from
the MSE denoiser of the same sigma (microsoft/denoised-smoothing's ``train_denoiser.py``:
``--objective stability --pretrained-denoiser``). Everything works in [0, 1] pixel space; the
noisy input is not clipped (the server does not clip either).

The export is Triton's ensemble layout: the classifier and each denoiser are plain ONNX
*components* (no smoothing parameters), and one ``platform: "ensemble"`` model per denoiser
chains ``input -> denoiser -> "denoised" -> classifier -> "logits"`` and carries sigma, labels,
input_shape and value_range, so it is what the server smooths and certifies.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from smoothcert.model_config import EnsembleStep, SmoothModelConfig, component_config_text

from .checkpoint import load_model, save_model
from .config import TrainConfig
from .data import load, to_tensors
from .dncnn import DnCNN
from .train import train

ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER = "fmnist_cnn_plain"
OPSET = 17  # as smoothtrain.onnx_export
INPUT_NAME, LOGITS, DENOISED = "input", "logits", "denoised"
COMPONENT_MAX_BATCH, ENSEMBLE_MAX_BATCH = 1024, 256
OBJECTIVE_NAMES = {"mse": "mse", "stab": "stability"}  # the configs' parameter values
OBJECTIVES = {
    "mse": "MSE ||D(x + delta) - x||^2",
    "stab": "stability CE(f(D(x + delta)), argmax f(x))",
}


# --------------------------------------------------------------------------- the classifier


def classifier_config(
    epochs: int = 14, train_limit: int = 0, max_batches: int = 0, eval_limit: int = 1000,
    name: str = CLASSIFIER,
) -> TrainConfig:  # fmt: skip
    """The committed CNNs' schedule (14 epochs, lr 0.05, x0.1 every 8, batch 256, seed 0),
    with sigma 0: ``TrainConfig.noise_like`` then adds zeros, so ``smoothtrain.train`` trains
    on clean images and its per-epoch "noisy" accuracy is the clean test accuracy."""
    return TrainConfig(
        name=name, method="gaussian", sigma=0.0, epochs=epochs, lr=0.05, lr_step_size=8,
        batch_size=256, seed=0, threads=1, train_limit=train_limit, max_batches=max_batches,
        eval_limit=eval_limit,
    )  # fmt: skip


# --------------------------------------------------------------------------- the denoisers


@dataclass
class DenoiserConfig:
    name: str
    objective: str  # "mse" or "stab"
    sigma: float  # Gaussian noise sd in [0, 1] pixels
    classifier: str = CLASSIFIER
    init: str = ""  # the denoiser whose weights start this one ("" : DnCNN's default init)
    n_channels: int = 16
    depth: int = 6
    epochs: int = 6
    batch_size: int = 256
    lr: float = 1e-3  # Adam, as the reference's default optimizer
    lr_step_size: int = 4
    lr_gamma: float = 0.1
    weight_decay: float = 1e-4
    seed: int = 0
    train_limit: int = 0  # first N training images; 0: all 60,000
    max_batches: int = 0  # batches per epoch cap (tests); 0: the whole epoch
    eval_limit: int = 1000  # test images for the per-epoch evaluation

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DenoiserConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def build(self) -> DnCNN:
        return DnCNN(image_channels=1, n_channels=self.n_channels, depth=self.depth)

    def describe(self) -> str:
        start = f", initialised from `{self.init}`" if self.init else ""
        return f"{OBJECTIVES[self.objective]} at sigma={self.sigma}{start}"


@dataclass
class DenoiserResult:
    model: DnCNN
    cfg: DenoiserConfig
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the classifier stays as it is while a denoiser learns."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def mse_loss(denoiser: nn.Module, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The reference's ``MSELoss()`` (mean over all elements) of D(x + noise) against x."""
    return F.mse_loss(denoiser(x + noise), x)


def stability_loss(
    denoiser: nn.Module, classifier: nn.Module, x: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """CE(f(D(x + noise)), argmax f(x)): the reference's ``stability`` objective (hard targets:
    the frozen classifier's prediction on the clean input, computed without gradients)."""
    with torch.no_grad():
        targets = classifier(x).argmax(1)
    return F.cross_entropy(classifier(denoiser(x + noise)), targets)


@torch.no_grad()
def evaluate(
    denoiser: nn.Module, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float,
    seed: int = 12345,
) -> dict:  # fmt: skip
    """On fixed noise: test MSE of D, and accuracy of f(x), f(x + delta), f(D(x + delta))."""
    denoiser.eval()
    classifier.eval()
    generator = torch.Generator().manual_seed(seed)
    totals = {"mse": 0.0, "clean": 0, "noisy": 0, "denoised": 0}
    for start in range(0, len(y), 500):
        xb, yb = x[start : start + 500], y[start : start + 500]
        noisy = xb + sigma * torch.randn(xb.shape, generator=generator)
        out = denoiser(noisy)
        totals["mse"] += float(F.mse_loss(out, xb, reduction="sum")) / xb[0].numel()
        totals["clean"] += int((classifier(xb).argmax(1) == yb).sum())
        totals["noisy"] += int((classifier(noisy).argmax(1) == yb).sum())
        totals["denoised"] += int((classifier(out).argmax(1) == yb).sum())
    n = max(1, len(y))
    return {
        "test_mse": totals["mse"] / n, "clean_acc": totals["clean"] / n,
        "noisy_acc_no_denoiser": totals["noisy"] / n, "noisy_acc_denoised": totals["denoised"] / n,
    }  # fmt: skip


def train_denoiser(
    cfg: DenoiserConfig, classifier: nn.Module, train_xy, test_xy, init_state: dict | None = None,
    progress: bool = True,
) -> DenoiserResult:  # fmt: skip
    """Adam on ``cfg.objective``; noise N(0, sigma^2) added in pixel space, not clipped."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    denoiser = cfg.build()
    if init_state is not None:
        denoiser.load_state_dict(init_state)
    classifier = freeze(classifier)
    x, y = train_xy
    if cfg.train_limit:
        x, y = x[: cfg.train_limit], y[: cfg.train_limit]
    x_test, y_test = test_xy[0][: cfg.eval_limit], test_xy[1][: cfg.eval_limit]
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_size, cfg.lr_gamma)
    result = DenoiserResult(denoiser, cfg)
    for epoch in range(cfg.epochs):
        began = time.time()
        order = torch.randperm(len(x), generator=generator)
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(x), cfg.batch_size)]
        if cfg.max_batches:
            batches = batches[: cfg.max_batches]
        denoiser.train()
        total, seen = 0.0, 0
        bar = tqdm(batches, desc=f"{cfg.name} {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False)  # fmt: skip
        for index in bar:
            xb = x[index]
            noise = cfg.sigma * torch.randn(xb.shape, generator=generator)
            if cfg.objective == "mse":
                loss = mse_loss(denoiser, xb, noise)
            else:
                loss = stability_loss(denoiser, classifier, xb, noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        stats = {"epoch": epoch + 1, "lr": lr, "train_loss": total / max(1, seen)}
        stats |= evaluate(denoiser, classifier, x_test, y_test, cfg.sigma)
        stats["seconds"] = time.time() - began
        result.history.append(stats)
        result.wall_time_s += stats["seconds"]
        print(
            f"{cfg.name} epoch {epoch + 1}/{cfg.epochs} lr={lr:.3g} loss={stats['train_loss']:.5f} "
            f"test_mse={stats['test_mse']:.5f} acc(f(D(x+d)))={stats['noisy_acc_denoised']:.4f} "
            f"acc(f(x+d))={stats['noisy_acc_no_denoiser']:.4f} ({stats['seconds']:.1f}s)",
            flush=True,
        )
    denoiser.eval()
    return result


def save_denoiser(path: Path, result: DenoiserResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "arch": "dncnn", "config": result.cfg.to_dict(),
            "dncnn": {"image_channels": 1, "n_channels": result.cfg.n_channels,
                      "depth": result.cfg.depth},
            "state_dict": result.model.state_dict(), "history": result.history,
            "wall_time_s": result.wall_time_s,
        },
        path,
    )  # fmt: skip


def load_denoiser(path: Path) -> tuple[DnCNN, DenoiserConfig, dict]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = DenoiserConfig.from_dict(state["config"])
    model = cfg.build()
    model.load_state_dict(state["state_dict"])
    return model.eval(), cfg, state


# --------------------------------------------------------------------------- export


def export_onnx(model: nn.Module, path: Path, output_name: str, input_shape=(1, 28, 28)) -> Path:
    """Trace to ONNX (opset 17, TorchScript exporter): "input" [N,C,H,W] -> ``output_name``,
    with a dynamic batch axis, as ``smoothtrain.onnx_export.export_onnx``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (example,), str(path), input_names=[INPUT_NAME],
            output_names=[output_name],
            dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    return path


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _inputs(sigma: float, batch: int = 64, seed: int = 0, input_shape=(1, 28, 28)):
    """Clean [0,1] images, the same plus N(0, sigma^2) noise (unclipped, as served), one image."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(batch, *input_shape, generator=generator)
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
    return clean, noisy, clean[:1]


def verify_component(path: Path, model: nn.Module, output_name: str, sigma: float) -> float:
    """onnx.checker, then max |ORT (CPUExecutionProvider) - torch| on clean, noisy, one image."""
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = _session(path)
    worst = 0.0
    for x in _inputs(sigma):
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        (got,) = session.run([output_name], {INPUT_NAME: x.numpy()})
        if got.shape != expected.shape:
            raise AssertionError(f"ORT output {got.shape} != torch {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def verify_chain(
    denoiser_onnx: Path, classifier_onnx: Path, denoiser: nn.Module, classifier: nn.Module,
    sigma: float,
) -> float:  # fmt: skip
    """The ensemble's computation in ORT (denoiser's "denoised" fed to the classifier's "input")
    against torch f(D(x)): max |logits difference| on clean, noisy, one image."""
    d_session, f_session = _session(denoiser_onnx), _session(classifier_onnx)
    worst = 0.0
    for x in _inputs(sigma):
        with torch.no_grad():
            expected = classifier.eval()(denoiser.eval()(x)).numpy()
        (denoised,) = d_session.run([DENOISED], {INPUT_NAME: x.numpy()})
        (got,) = f_session.run([LOGITS], {INPUT_NAME: denoised})
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def component_pbtxt(
    name: str, output_name: str, output_dims, input_shape=(1, 28, 28),
    max_batch_size: int = COMPONENT_MAX_BATCH, parameters: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """An ONNX model without smoothing parameters (no sigma, no labels): an ensemble step."""
    return component_config_text(
        name, {INPUT_NAME: tuple(input_shape)}, {output_name: tuple(output_dims)},
        max_batch_size, parameters,
    )  # fmt: skip


def ensemble_pbtxt(
    name: str, denoiser: str, classifier: str, sigma: float, labels, input_shape=(1, 28, 28),
    max_batch_size: int = ENSEMBLE_MAX_BATCH, parameters: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """Triton's ensemble: input -> denoiser -> "denoised" -> classifier -> "logits", with the
    smoothing parameters (sigma, labels, input shape, value range) of the composed model."""
    steps = (
        EnsembleStep(denoiser, -1, ((INPUT_NAME, INPUT_NAME),), ((DENOISED, DENOISED),)),
        EnsembleStep(classifier, -1, ((INPUT_NAME, DENOISED),), ((LOGITS, LOGITS),)),
    )
    return SmoothModelConfig(
        name=name, sigma=float(sigma), labels=tuple(labels), input_shape=tuple(input_shape),
        value_range=(0.0, 1.0), platform="ensemble", max_batch_size=max_batch_size,
        input_name=INPUT_NAME, output_name=LOGITS, ensemble_steps=steps,
        extra_parameters=dict(parameters or {}),
    ).check().to_pbtxt()  # fmt: skip


def denoiser_name(objective: str, sigma: float) -> str:
    return f"fmnist_dncnn_{objective}_s{round(sigma * 100):03d}"


def ensemble_name(objective: str, sigma: float) -> str:
    return f"fmnist_denoised_{objective}_s{round(sigma * 100):03d}"


# --------------------------------------------------------------------------- model cards

DATA = "fashion-mnist (`/usr/share/datasets/fashion-mnist`, Debian's dataset-fashion-mnist)"


def _table(rows: list[tuple[str, str]]) -> list[str]:
    return ["| field | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def classifier_card(cfg: TrainConfig, history, wall_time_s, max_diff, n_train, command) -> str:
    acc = history[-1]["test_noisy_acc"] if history else float("nan")
    return "\n".join([
        f"# {cfg.name}",
        "",
        "An ordinary CNN trained **without noise**: the \"pretrained classifier\" of denoised "
        "smoothing (Salman et al., NeurIPS 2020). A *component*: its config has no smoothing "
        "parameters, so the server does not smooth it on its own; the ensembles "
        "`fmnist_denoised_*` put a DnCNN denoiser in front of it and are smoothed.",
        "",
        *_table([
            ("data", f"{DATA}, {n_train} training images"),
            ("architecture", f"`{cfg.arch}` (SmallCNN, as the committed models), normalisation "
                             "inside the graph"),
            ("training", "cross entropy on clean images (`smoothtrain.train` with sigma 0: the "
                         "noise it adds is zero)"),
            ("epochs, batch, lr", f"{cfg.epochs}, {cfg.batch_size}, SGD {cfg.lr} momentum "
                                  f"{cfg.momentum} (x{cfg.lr_gamma} every {cfg.lr_step_size}), "
                                  f"weight decay {cfg.weight_decay}"),
            ("seed, threads", f"{cfg.seed}, {cfg.threads}"),
            ("training wall time", f"{wall_time_s / 60:.1f} min (1 CPU core, shared machine)"),
            (f"clean test accuracy (first {cfg.eval_limit} test images)", f"{acc:.4f}"),
            ("max abs ORT - torch logits", f"{max_diff:.2e} (onnxruntime CPUExecutionProvider; "
                                           "clean and sigma=0.5 noisy inputs)"),
        ]),
        "",
        "Input `input` float32 [N, 1, 28, 28] in [0, 1]; output `logits` float32 [N, 10]. "
        f"ONNX opset {OPSET}, dynamic batch axis. The torch checkpoint is "
        f"`checkpoints/{cfg.name}.pt` (`smoothtrain.checkpoint.load_model`).",
        "",
        *command_lines(command),
    ])  # fmt: skip


def denoiser_card(result: DenoiserResult, max_diff: float, n_train: int, command: str) -> str:
    cfg, last = result.cfg, (result.history[-1] if result.history else {})
    seen = _images_seen(cfg, n_train)
    objective = OBJECTIVES[cfg.objective]
    init = (f"the weights of `{cfg.init}` (as the reference's `--pretrained-denoiser`)"
            if cfg.init else "DnCNN's default (PyTorch) initialisation")  # fmt: skip
    return "\n".join([
        f"# {cfg.name}",
        "",
        f"A DnCNN denoiser for denoised smoothing, trained at Gaussian sigma = {cfg.sigma} with "
        f"the {objective} objective. A *component* (no smoothing parameters); "
        f"`{ensemble_name(cfg.objective, cfg.sigma)}` chains it with `{cfg.classifier}` and is "
        "the smoothed model.",
        "",
        *_table([
            ("data", f"{DATA}, {n_train} training images; {cfg.epochs} epochs "
                     f"({seen} noisy images seen), batch {cfg.batch_size}"),
            ("architecture", f"DnCNN(image_channels=1, n_channels={cfg.n_channels}, "
                             f"depth={cfg.depth}), {_params(result.model):,} parameters; "
                             "predicts the noise and returns x - noise; key names of "
                             "microsoft/denoised-smoothing"),
            ("noise", f"N(0, {cfg.sigma}^2) per pixel in [0, 1] pixel space, the noisy input "
                      "not clipped (as the server samples it)"),
            ("objective", objective + (f" with `{cfg.classifier}` frozen (eval mode, no "
                                       "gradients to it)" if cfg.objective == "stab" else "")),
            ("initialisation", init),
            ("optimizer", f"Adam lr {cfg.lr}, weight decay {cfg.weight_decay}, "
                          f"x{cfg.lr_gamma} every {cfg.lr_step_size} epochs"),
            ("seed", str(cfg.seed)),
            ("training wall time", f"{result.wall_time_s / 60:.1f} min (1 CPU core, shared "
                                   "machine)"),
            (f"test MSE (first {cfg.eval_limit} test images, last epoch)",
             f"{last.get('test_mse', float('nan')):.5f}"),
            (f"accuracy of `{cfg.classifier}` on noisy test images: with / without this "
             "denoiser", f"{last.get('noisy_acc_denoised', float('nan')):.4f} / "
                         f"{last.get('noisy_acc_no_denoiser', float('nan')):.4f}"),
            ("max abs ORT - torch output", f"{max_diff:.2e} (onnxruntime CPUExecutionProvider; "
                                           "clean and noisy inputs)"),
        ]),
        "",
        "Input `input` float32 [N, 1, 28, 28] (noisy pixels); output `denoised` float32 "
        f"[N, 1, 28, 28]. ONNX opset {OPSET}, dynamic batch axis. The torch checkpoint is "
        f"`checkpoints/{cfg.name}.pt` (`smoothtrain.denoise.load_denoiser`).",
        "",
        "Per-epoch history (test metrics on one fixed noise draw):",
        "",
        "| epoch | lr | train loss | test MSE | acc f(D(x+d)) | acc f(x+d) | seconds |",
        "|---|---|---|---|---|---|---|",
        *[f"| {h['epoch']} | {h['lr']:.3g} | {h['train_loss']:.5f} | {h['test_mse']:.5f} | "
          f"{h['noisy_acc_denoised']:.4f} | {h['noisy_acc_no_denoiser']:.4f} | "
          f"{h['seconds']:.0f} |" for h in result.history],
        "",
        *command_lines(command),
    ])  # fmt: skip


COMMAND_NOTE = (
    "Command line (it trains the classifier and the four denoisers and writes every folder; "
    "with `--reuse` a model whose checkpoint in `checkpoints/` was written with the same "
    "settings is not trained again, and the wall time above is that of its training):"
)
RESULTS_BEGIN, RESULTS_END = "<!-- results:begin -->", "<!-- results:end -->"


def command_lines(command: str) -> list[str]:
    """A card's closing lines: what the command does, then the command in a code block."""
    return [COMMAND_NOTE, "", "```", command, "```", ""]


def ensemble_card(
    name: str, result: DenoiserResult, labels, chain_diff: float, command: str
) -> str:
    cfg, last = result.cfg, (result.history[-1] if result.history else {})
    return "\n".join([
        f"# {name}",
        "",
        f"Denoised smoothing (Salman et al., NeurIPS 2020): the Triton ensemble "
        f"`{cfg.name}` -> `{cfg.classifier}`, smoothed with Gaussian noise sigma = {cfg.sigma}. "
        "The server adds the noise to the input; the denoiser removes what it can; the "
        "classifier, trained without noise, classifies the denoised image.",
        "",
        *_table([
            ("platform", f"`ensemble`, max_batch_size {ENSEMBLE_MAX_BATCH}"),
            ("steps", f"`{cfg.name}` (`input` -> `denoised`), then `{cfg.classifier}` "
                      "(`denoised` -> `logits`)"),
            ("noise", f"Gaussian, sigma = {cfg.sigma} (certifies L2 radii), [0, 1] pixels"),
            ("denoiser objective", OBJECTIVES[cfg.objective]
             + (f", initialised from `{cfg.init}`" if cfg.init else "")),
            ("classes", ", ".join(labels)),
            ("data", f"{DATA}; see the components' cards"),
            ("accuracy of f(D(x+d)) under one noise draw (first "
             f"{cfg.eval_limit} test images)", f"{last.get('noisy_acc_denoised', float('nan')):.4f}"),
            ("max abs ORT chain - torch f(D(x)) logits", f"{chain_diff:.2e} (the two ONNX "
             "components in onnxruntime CPUExecutionProvider, clean and noisy inputs)"),
        ]),
        "",
        "`1/.keep` only holds the version folder: an ensemble has no model file of its own.",
        "",
        *command_lines(command),
        "## Results",
        "",
        RESULTS_BEGIN,
        "Not certified yet: run `python export/make_denoised_results.py`.",
        RESULTS_END,
        "",
    ])  # fmt: skip


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _images_seen(cfg: DenoiserConfig, n_train: int) -> int:
    per_epoch = n_train
    if cfg.max_batches:
        per_epoch = min(n_train, cfg.max_batches * cfg.batch_size)
    return per_epoch * cfg.epochs


# --------------------------------------------------------------------------- the command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the plain classifier and the DnCNN denoisers "
                                "(MSE and stability) and export them as Triton ensembles.")  # fmt: skip
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--classifier-epochs", type=int, default=14)
    p.add_argument("--mse-epochs", type=int, default=6)
    p.add_argument("--mse-lr", type=float, default=1e-3)
    p.add_argument("--mse-lr-step", type=int, default=4)
    p.add_argument("--stab-epochs", type=int, default=4)
    p.add_argument("--stab-lr", type=float, default=1e-4)
    p.add_argument("--stab-lr-step", type=int, default=3)
    p.add_argument("--n-channels", type=int, default=16, help="DnCNN width")
    p.add_argument("--depth", type=int, default=6, help="DnCNN depth (convolutions)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--train-limit", type=int, default=0, help="first N training images; 0: all")
    p.add_argument("--max-batches", type=int, default=0, help="batches per epoch cap (tests)")
    p.add_argument("--eval-limit", type=int, default=1000, help="test images for per-epoch stats")
    p.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    p.add_argument("--checkpoint-dir", type=Path, default=ROOT / "checkpoints")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    p.add_argument("--reuse", action="store_true",
                   help="reuse checkpoints written with the same settings; train only the rest")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def denoiser_configs(
    args: argparse.Namespace, sigma: float
) -> tuple[DenoiserConfig, DenoiserConfig]:
    common = dict(
        sigma=sigma, n_channels=args.n_channels, depth=args.depth, batch_size=args.batch_size,
        seed=args.seed, train_limit=args.train_limit, max_batches=args.max_batches,
        eval_limit=args.eval_limit,
    )  # fmt: skip
    mse = DenoiserConfig(name=denoiser_name("mse", sigma), objective="mse", epochs=args.mse_epochs,
                         lr=args.mse_lr, lr_step_size=args.mse_lr_step, **common)  # fmt: skip
    stab = DenoiserConfig(name=denoiser_name("stab", sigma), objective="stab", init=mse.name,
                          epochs=args.stab_epochs, lr=args.stab_lr,
                          lr_step_size=args.stab_lr_step, **common)  # fmt: skip
    return mse, stab


def _same(saved: dict, wanted: dict) -> bool:
    drop = {"threads"}
    return {k: v for k, v in saved.items() if k not in drop} == {
        k: v for k, v in wanted.items() if k not in drop
    }


def _classifier(args, cfg: TrainConfig, progress: bool) -> tuple[nn.Module, tuple, dict]:
    ckpt = args.checkpoint_dir / f"{cfg.name}.pt"
    if args.reuse and ckpt.exists():
        model, _, state = load_model(ckpt)
        if _same(state["config"], cfg.to_dict()):
            print(f"{cfg.name}: reusing {ckpt}", flush=True)
            return model, tuple(state["classes"]), state
    result = train(cfg, args.runs_dir / cfg.name, progress=progress)
    extra = {"history": result.history, "wall_time_s": result.wall_time_s}
    save_model(ckpt, result.model, cfg, result.classes, result.input_shape, extra)
    return result.model.eval(), tuple(result.classes), {**extra, "input_shape": result.input_shape}


def _denoiser(args, cfg, classifier, train_xy, test_xy, init, progress) -> DenoiserResult:
    ckpt = args.checkpoint_dir / f"{cfg.name}.pt"
    if args.reuse and ckpt.exists():
        model, saved, state = load_denoiser(ckpt)
        if _same(saved.to_dict(), cfg.to_dict()):
            print(f"{cfg.name}: reusing {ckpt}", flush=True)
            return DenoiserResult(model, saved, state["history"], state["wall_time_s"])
    init_state = init.model.state_dict() if init is not None else None
    result = train_denoiser(cfg, classifier, train_xy, test_xy, init_state, progress)
    save_denoiser(ckpt, result)
    log = args.runs_dir / cfg.name / "history.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps({"config": cfg.to_dict(), "history": result.history,
                               "wall_time_s": result.wall_time_s}, indent=1))  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    command = "python export/make_denoised.py" + (" " + shlex.join(argv) if argv else "")
    repo = args.model_repo
    began = time.time()

    cfg = classifier_config(args.classifier_epochs, args.train_limit, args.max_batches,
                            args.eval_limit)  # fmt: skip
    classifier, labels, state = _classifier(args, cfg, progress)
    classifier = freeze(classifier)
    shape = tuple(int(d) for d in state["input_shape"])
    train_set = load(cfg.dataset, None, "train", args.train_limit)
    n_train = len(train_set)
    train_xy = to_tensors(train_set)
    test_xy = to_tensors(load(cfg.dataset, None, "test", args.eval_limit))
    summary: dict = {"command": command, "models": {}}

    f_dir = repo / cfg.name
    f_onnx = export_onnx(classifier, f_dir / "1" / "model.onnx", LOGITS, shape)
    (f_dir / "config.pbtxt").write_text(component_pbtxt(
        cfg.name, LOGITS, [len(labels)], shape,
        parameters={"role": "component", "arch": cfg.arch, "training": "plain (no noise)",
                    "dataset": cfg.dataset},
    ))  # fmt: skip
    f_diff = verify_component(f_onnx, classifier, LOGITS, 0.5)
    _check(f_diff, cfg.name)
    (f_dir / "README.md").write_text(classifier_card(
        cfg, state["history"], state["wall_time_s"], f_diff, n_train, command))  # fmt: skip
    summary["models"][cfg.name] = {
        "wall_time_s": round(state["wall_time_s"], 1), "ort_max_abs_diff": f_diff,
        "clean_acc": state["history"][-1]["test_noisy_acc"] if state["history"] else None,
    }  # fmt: skip

    for sigma in args.sigmas:
        mse_cfg, stab_cfg = denoiser_configs(args, sigma)
        mse = _denoiser(args, mse_cfg, classifier, train_xy, test_xy, None, progress)
        stab = _denoiser(args, stab_cfg, classifier, train_xy, test_xy, mse, progress)
        for result in (mse, stab):
            d_cfg = result.cfg
            d_dir = repo / d_cfg.name
            arch, objective = (
                f"dncnn_{d_cfg.n_channels}x{d_cfg.depth}",
                OBJECTIVE_NAMES[d_cfg.objective],
            )
            d_onnx = export_onnx(result.model, d_dir / "1" / "model.onnx", DENOISED, shape)
            (d_dir / "config.pbtxt").write_text(component_pbtxt(
                d_cfg.name, DENOISED, shape, shape,
                parameters={"role": "component", "arch": arch, "training": "denoiser",
                            "objective": objective,
                            "denoiser_noise_sd": repr(float(sigma)), "dataset": cfg.dataset},
            ))  # fmt: skip
            d_diff = verify_component(d_onnx, result.model, DENOISED, sigma)
            _check(d_diff, d_cfg.name)
            (d_dir / "README.md").write_text(denoiser_card(result, d_diff, n_train, command))
            e_name = ensemble_name(d_cfg.objective, sigma)
            e_dir = repo / e_name
            (e_dir / "1").mkdir(parents=True, exist_ok=True)
            (e_dir / "1" / ".keep").write_text("")
            (e_dir / "config.pbtxt").write_text(ensemble_pbtxt(
                e_name, d_cfg.name, cfg.name, sigma, labels, shape,
                parameters={"arch": f"{arch}+{cfg.arch}", "training": "denoised_smoothing",
                            "denoiser_objective": objective,
                            "denoiser": d_cfg.name, "classifier": cfg.name,
                            "dataset": cfg.dataset},
            ))  # fmt: skip
            chain = verify_chain(d_onnx, f_onnx, result.model, classifier, sigma)
            _check(chain, e_name)
            (e_dir / "README.md").write_text(ensemble_card(e_name, result, labels, chain, command))
            last = result.history[-1] if result.history else {}
            summary["models"][d_cfg.name] = {
                "wall_time_s": round(result.wall_time_s, 1), "ort_max_abs_diff": d_diff,
                "test_mse": last.get("test_mse"),
                "noisy_acc_denoised": last.get("noisy_acc_denoised"),
                "noisy_acc_no_denoiser": last.get("noisy_acc_no_denoiser"),
            }  # fmt: skip
            summary["models"][e_name] = {"chain_max_abs_diff": chain}
    summary["wall_time_s"] = round(time.time() - began, 1)
    out = args.runs_dir / "denoised" / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)
    return summary


def _check(diff: float, name: str, tolerance: float = 1e-4) -> None:
    if not diff <= tolerance:
        raise SystemExit(
            f"{name}: the exported graph differs from torch by {diff:.3g} > {tolerance}"
        )
