"""The training loop: Gaussian augmentation or SmoothAdv, with resumable checkpoints."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .attacks import ddn_l2, draw_noise, pgd_l2
from .config import TrainConfig
from .data import load, to_tensors
from .models import build_model


@dataclass
class TrainResult:
    model: nn.Module
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    history: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0


def smoothadv_batch(
    model: nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SmoothAdv batch: attack G at x with fixed noise, then train on the noisy copies."""
    noise = draw_noise(x, cfg.num_noise_vec, cfg.sigma)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.attack == "ddn":
        x_adv = ddn_l2(model, x, y, epsilon, cfg.num_steps, noise, init_norm=epsilon)
    else:
        x_adv = pgd_l2(model, x, y, epsilon, cfg.num_steps, noise=noise)
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    logits = model((x_adv.unsqueeze(1) + noise).flatten(0, 1))
    return logits, y.repeat_interleave(cfg.num_noise_vec)


def gaussian_batch(
    model: nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return model(x + cfg.noise_like(x)), y


@torch.no_grad()
def noisy_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> float:
    """Accuracy of the base classifier under one draw of the model's noise per image."""
    model.eval()
    correct = 0
    for start in range(0, len(y), 1000):
        xb, yb = x[start : start + 1000], y[start : start + 1000]
        correct += int((model(xb + cfg.noise_like(xb)).argmax(1) == yb).sum())
    return correct / max(1, len(y))


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".ckpt.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(
    cfg: TrainConfig, run_dir: Path, resume: bool = False, progress: bool = True
) -> TrainResult:
    """Train per ``cfg``; a checkpoint ``run_dir/last.pt`` is written after every epoch."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_set = load(cfg.dataset, cfg.data_root, "train", cfg.train_limit)
    test_set = load(cfg.dataset, cfg.data_root, "test", cfg.eval_limit)
    x_train, y_train = to_tensors(train_set)
    x_test, y_test = to_tensors(test_set)
    shape = tuple(int(d) for d in train_set.images.shape[1:])
    model = build_model(cfg.arch, cfg.dataset, shape, len(train_set.classes))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_size, cfg.lr_gamma)
    result = TrainResult(model, train_set.classes, shape)
    ckpt_path, start_epoch = run_dir / "last.pt", 0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if _comparable(state["config"]) != _comparable(cfg.to_dict()):
            raise ValueError(f"{ckpt_path} was written with another configuration")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, result.history = state["epoch"], state["history"]
        result.wall_time_s = state["wall_time_s"]
    for epoch in range(start_epoch, cfg.epochs):
        began = time.time()
        stats = _epoch(model, cfg, optimizer, x_train, y_train, epoch, progress)
        scheduler.step()
        stats["test_noisy_acc"] = noisy_accuracy(model, x_test, y_test, cfg)
        stats["seconds"] = time.time() - began
        result.history.append(stats)
        result.wall_time_s += stats["seconds"]
        print(_format(stats, cfg.epochs), flush=True)
        _save_atomic(
            {
                "config": cfg.to_dict(), "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(), "history": result.history,
                "wall_time_s": result.wall_time_s,
            },
            ckpt_path,
        )  # fmt: skip
    model.eval()
    return result


def _comparable(config: dict) -> dict:
    """A configuration minus what a resumed run may change (more epochs, other threads)."""
    return {k: v for k, v in config.items() if k not in {"epochs", "threads"}}


def _epoch(
    model: nn.Module, cfg: TrainConfig, optimizer: torch.optim.Optimizer,
    x: torch.Tensor, y: torch.Tensor, epoch: int, progress: bool,
) -> dict:  # fmt: skip
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed * 1009 + epoch))
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(y), cfg.batch_size)]
    if cfg.max_batches:
        batches = batches[: cfg.max_batches]
    epsilon = cfg.epsilon_at(epoch)
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    total_loss, correct, seen = 0.0, 0, 0
    model.train()
    for index in bar:
        xb, yb = x[index], y[index]
        if cfg.method == "smoothadv":
            logits, targets = smoothadv_batch(model, cfg, xb, yb, epsilon)
        else:
            logits, targets = gaussian_batch(model, cfg, xb, yb)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(targets)
        correct += int((logits.argmax(1) == targets).sum())
        seen += len(targets)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return {
        "epoch": epoch + 1, "epsilon": epsilon, "lr": optimizer.param_groups[0]["lr"],
        "train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen),
    }  # fmt: skip


def _format(stats: dict, epochs: int) -> str:
    return (
        f"epoch {stats['epoch']}/{epochs} eps={stats['epsilon']:.3f} lr={stats['lr']:.4g} "
        f"loss={stats['train_loss']:.4f} train_acc={stats['train_acc']:.4f} "
        f"test_noisy_acc={stats['test_noisy_acc']:.4f} ({stats['seconds']:.1f}s)"
    )
