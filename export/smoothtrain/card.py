"""The model card ``model_repo/<name>/README.md``; make_results fills in its results section."""

from __future__ import annotations

import re
from pathlib import Path

from .config import TrainConfig

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def write_card(
    model_dir: Path, cfg: TrainConfig, command: str, wall_time_s: float, history: list[dict],
    max_diff: float, n_train: int,
) -> Path:  # fmt: skip
    noisy_acc = history[-1]["test_noisy_acc"] if history else float("nan")
    lines = [
        f"# {cfg.name}",
        "",
        f"Base classifier for randomized smoothing: {cfg.describe()}.",
        "",
        "| field | value |",
        "|---|---|",
        (f"| data | {cfg.dataset} (`{_data_root(cfg)}`), {n_train} training images |"),
        f"| architecture | `{cfg.arch}`, normalisation inside the graph |",
        f"| method | {cfg.method}"
        + (f" ({cfg.attack})" if cfg.method == "smoothadv" else "")
        + " |",
        f"| noise | {cfg.noise_family}, {cfg.family.scale_parameter} = {cfg.sigma} "
        f"(certifies {cfg.family.norm.upper()} radii) |",
        f"| epsilon (L2, [0,1] pixels) | {cfg.epsilon if cfg.method == 'smoothadv' else '-'} |",
        "| attack steps / noise draws (m) | "
        + (f"{cfg.num_steps} / {cfg.num_noise_vec} |" if cfg.method == "smoothadv" else "- |"),
        f"| warm-up epochs | {cfg.warmup if cfg.method == 'smoothadv' else '-'} |",
        (
            f"| epochs, batch, lr | {cfg.epochs}, {cfg.batch_size}, {cfg.lr} "
            f"(x{cfg.lr_gamma} every {cfg.lr_step_size}) |"
        ),
        f"| seed | {cfg.seed} |",
        f"| training wall time | {wall_time_s / 60:.1f} min (CPU) |",
        f"| base accuracy under noise (last epoch) | {noisy_acc:.4f} |",
        f"| max abs ORT - torch logits | {max_diff:.2e} |",
        "",
        "Input `input` float32 [N, C, H, W] in [0, 1]; output `logits` float32 [N, K].",
        "",
        "Command line:",
        "",
        "```",
        command,
        "```",
        "",
        "## Results",
        "",
        BEGIN,
        "Not certified yet: run `python export/make_results.py`.",
        END,
        "",
    ]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines))
    return path


def set_results(model_dir: Path, markdown: str) -> None:
    """Replace the results section of a model card (between the markers)."""
    path = model_dir / "README.md"
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{markdown.strip()}\n{END}", text))


def _data_root(cfg: TrainConfig) -> str:
    if cfg.data_root:
        return cfg.data_root
    if cfg.dataset == "fashion-mnist":
        from smoothserve_client.datasets import FASHION_MNIST_DIR, REPO_SLICE_DIR

        return str(FASHION_MNIST_DIR if FASHION_MNIST_DIR.exists() else REPO_SLICE_DIR)
    return "default"
