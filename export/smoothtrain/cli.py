"""``train_and_export.py``: train a base classifier, export it to ONNX and the model repo."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from smoothcert.families import FAMILIES

from .card import write_card
from .checkpoint import save_model
from .config import TrainConfig
from .models import ARCHITECTURES
from .onnx_export import verify_onnx, write_model_repo
from .train import train

REPO_ROOT = Path(__file__).resolve().parents[2]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    d = TrainConfig(name="")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument(
        "--dataset", default=d.dataset, choices=["fashion-mnist", "cifar10", "imagefolder"]
    )
    p.add_argument("--data-root", default=None, help="dataset directory (default: Debian's)")
    p.add_argument("--arch", default=d.arch, choices=ARCHITECTURES)
    p.add_argument("--method", default=d.method, choices=["gaussian", "smoothadv"])
    p.add_argument("--attack", default=d.attack, choices=["pgd", "ddn"])
    p.add_argument("--noise-family", default=d.noise_family, choices=sorted(FAMILIES),
                   help="smoothing noise: gaussian (certifies L2 radii) or uniform (L1)")  # fmt: skip
    p.add_argument("--sigma", "--lambda", type=float, default=d.sigma, dest="sigma",
                   help="the noise family's scale in [0,1] pixels: Gaussian sigma, uniform "
                        "lambda (noise on [-lambda, lambda])")  # fmt: skip
    p.add_argument("--epsilon", type=float, default=d.epsilon, help="SmoothAdv L2 radius")
    p.add_argument("--num-steps", "--steps", type=int, default=d.num_steps, dest="num_steps")
    p.add_argument(
        "--num-noise-vec", "--m", type=int, default=d.num_noise_vec, dest="num_noise_vec"
    )
    p.add_argument("--warmup", type=int, default=d.warmup, help="epsilon warm-up epochs")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-step-size", type=int, default=d.lr_step_size)
    p.add_argument("--lr-gamma", type=float, default=d.lr_gamma)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads; 0: default")
    p.add_argument("--train-limit", type=int, default=0, help="first N training images only")
    p.add_argument("--max-batches", type=int, default=0, help="batches per epoch cap (tests)")
    p.add_argument("--eval-limit", type=int, default=d.eval_limit)
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--run-dir", type=Path, default=None, help="default: runs/<name>")
    p.add_argument("--model-repo", type=Path, default=REPO_ROOT / "model_repo")
    p.add_argument("--checkpoint-dir", type=Path, default=REPO_ROOT / "checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    keys = TrainConfig.__dataclass_fields__.keys()
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in keys})


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    cfg = config_from_args(args)
    if cfg.method == "smoothadv" and cfg.noise_family != "gaussian":
        raise SystemExit("SmoothAdv attacks in L2 under Gaussian noise: use --method gaussian "
                         f"(noise augmentation) with --noise-family {cfg.noise_family}")  # fmt: skip
    run_dir = args.run_dir or REPO_ROOT / "runs" / cfg.name
    result = train(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    ckpt = args.checkpoint_dir / f"{cfg.name}.pt"
    save_model(ckpt, result.model, cfg, result.classes, result.input_shape,
               {"history": result.history, "wall_time_s": result.wall_time_s})  # fmt: skip
    model_dir, _ = write_model_repo(
        result.model, cfg, result.classes, result.input_shape, args.model_repo
    )
    max_diff = verify_onnx(
        model_dir / "1" / "model.onnx", result.model, result.input_shape, cfg.sigma,
        noise=cfg.noise_like,
    )
    if max_diff > 1e-4:
        raise SystemExit(f"exported graph differs from torch by {max_diff:.3g} > 1e-4")
    n_train = cfg.train_limit or _count_train(cfg)
    command = "python export/train_and_export.py " + shlex.join(argv)
    write_card(model_dir, cfg, command, result.wall_time_s, result.history, max_diff, n_train)
    summary = {
        "name": cfg.name, "model_dir": str(model_dir), "checkpoint": str(ckpt),
        "wall_time_s": round(result.wall_time_s, 1), "ort_max_abs_diff": max_diff,
        "test_noisy_acc": result.history[-1]["test_noisy_acc"] if result.history else None,
    }  # fmt: skip
    print(json.dumps(summary), flush=True)
    return summary


def _count_train(cfg: TrainConfig) -> int:
    from .data import load

    return len(load(cfg.dataset, cfg.data_root, "train"))
