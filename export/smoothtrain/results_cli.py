"""``make_results.py``: certify the committed models, attack them, write docs/results.md."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from smoothserve_client import SmoothServeClient
from smoothserve_client.datasets import load_dataset
from smoothserve_client.results import (
    DEFAULT_RADII,
    accuracy_table,
    plot_certified_accuracy,
    read_tsv,
    write_tsv,
)
from smoothserve_dev.testing import ServerProcess

from .card import set_results
from .checkpoint import load_model
from .data import to_tensors
from .denoised_results import BEGIN as DENOISED_BEGIN
from .denoised_results import END as DENOISED_END
from .evaluate import certify_models, empirical_robust_accuracy, onnx_throughput
from .l1_results import preserved_section
from .report import best_model, comparison, empirical_table, model_card_results

ROOT = Path(__file__).resolve().parents[2]
MODELS = (
    "fmnist_cnn_gauss_s025",
    "fmnist_cnn_smoothadv_s025",
    "fmnist_cnn_gauss_s050",
    "fmnist_cnn_smoothadv_s050",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    p.add_argument("--checkpoint-dir", type=Path, default=ROOT / "checkpoints")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None, help="default: Debian's full test set")
    p.add_argument("--limit", type=int, default=1000, help="first N test images")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument(
        "--server-arg", action="append", default=None,
        help="a flag for the server, repeatable (default: --batch-size 1024)",
    )  # fmt: skip
    p.add_argument(
        "--reuse-tsv", action="store_true",
        help="reuse TSVs (and empirical results) of the same settings; compute only the rest",
    )  # fmt: skip
    p.add_argument("--certify-only", action="store_true", help="stop after writing the TSVs")
    p.add_argument(
        "--empirical-only", action="store_true", help="only run (and cache) the empirical attack"
    )
    p.add_argument("--empirical-limit", type=int, default=500, help="0: no empirical attack")
    p.add_argument("--empirical-steps", type=int, default=20)
    p.add_argument("--empirical-m", type=int, default=16, help="noise draws per attack step")
    p.add_argument("--empirical-n", type=int, default=1000, help="PREDICT samples")
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    p.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="write everything under this folder and leave the repository alone",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.server_arg is None:
        args.server_arg = ["--batch-size", "1024"]  # the CNN's max_batch_size: fewer ORT calls
    torch.set_num_threads(1)
    docs = (args.scratch / "docs") if args.scratch else ROOT / "docs"
    tsv_root = (args.scratch / "tsv") if args.scratch else args.model_repo
    docs.mkdir(parents=True, exist_ok=True)
    test_set = load_dataset(args.dataset, args.data_root, "test")
    indices = list(range(min(args.limit, len(test_set))))
    tsv = {name: tsv_root / name / "certification.tsv" for name in args.models}
    settings_now = {"images": len(indices), "n0": args.n0, "n": args.n, "alpha": args.alpha}
    curves, timing = {}, {}
    for name in args.models:
        meta = tsv[name].with_suffix(".json")
        if args.reuse_tsv and meta.exists():
            saved = json.loads(meta.read_text())
            if {k: saved.get(k) for k in settings_now} == settings_now:
                curves[name], timing[name] = read_tsv(tsv[name]), saved["seconds"]
    todo = [] if args.empirical_only else [n for n in args.models if n not in curves]
    certified = certify_models(
        args.model_repo, todo, test_set, indices, args.n0, args.n, args.alpha,
        args.concurrency, args.server_arg, progress=not args.no_progress,
    ) if todo else {}  # fmt: skip
    for name, (rows, seconds) in certified.items():
        tsv[name].parent.mkdir(parents=True, exist_ok=True)
        write_tsv(rows, tsv[name])
        tsv[name].with_suffix(".json").write_text(json.dumps({**settings_now, "seconds": seconds}))
        curves[name], timing[name] = rows, seconds
        print(f"{name}: certified {len(rows)} images in {seconds:.0f}s", flush=True)
    if args.certify_only:
        return
    models = {name: load_model(args.checkpoint_dir / f"{name}.pt") for name in args.models}
    empirical: dict[str, dict[float, float]] = {}
    if args.empirical_limit:
        with (
            ServerProcess(args.model_repo, list(args.server_arg)) as server,
            SmoothServeClient(server.address, timeout=600) as client,
        ):
            empirical = empirical_results(args, test_set, models, tsv, client)
    if args.empirical_only:
        return
    curves = {name: curves[name] for name in args.models}
    throughput = {
        name: onnx_throughput(args.model_repo / name / "1" / "model.onnx", state["input_shape"])
        for name, (_, _, state) in models.items()
    }
    plot = docs / "results_certified_accuracy.png"
    plot_certified_accuracy(
        curves,
        plot,
        title=f"{args.dataset}: certified (solid) and empirical (dashed)",
        max_radius=max(max(DEFAULT_RADII), 2.0),
        empirical={n: (list(a), list(a.values())) for n, a in empirical.items()},
    )
    images = len(next(iter(curves.values()), []))
    settings = f"{images} {args.dataset} test images, n0={args.n0}, n={args.n}, alpha={args.alpha}"
    text = _document(args, argv, curves, models, empirical, throughput, timing, settings)
    old = docs / "results.md"
    if old.exists():  # the sections of make_l1_results.py and make_denoised_results.py
        text += preserved_section(old.read_text())
        text += preserved_section(old.read_text(), DENOISED_BEGIN, DENOISED_END)
    (docs / "results.md").write_text(text)
    if not args.scratch:
        for name in args.models:
            set_results(
                args.model_repo / name,
                model_card_results(name, curves[name], settings, empirical.get(name)),
            )
    print(json.dumps({"best": best_model(curves, DEFAULT_RADII), "results": str(docs)}))


def _document(args, argv, curves, models, empirical, throughput, timing, settings) -> str:
    configs = {name: cfg for name, (_, cfg, _) in models.items()}
    best = best_model(curves, DEFAULT_RADII)
    command = "python export/make_results.py" + (" " + shlex.join(argv) if argv else "")
    out = [
        "# Results: Gaussian augmentation vs SmoothAdv on Fashion-MNIST",
        "",
        "Regenerate this page (and the plot, the TSVs and the model cards' results) with the",
        "results command, from the repository root:",
        "",
        "```",
        "python export/make_results.py",
        "```",
        "",
        (
            f"This version was produced by `{command}`. Quick look: `--limit 20 --n 1000 "
            "--empirical-limit 20 --scratch /tmp/results` (writes nothing into the repository). "
            "With `--reuse-tsv`, certification TSVs and empirical results of the same settings "
            "are read back from `model_repo/<name>/` instead of recomputed."
        ),
        "",
        (
            f"Certification ({settings}) ran through the real gRPC server "
            "(`smoothserve_dev.testing.ServerProcess` on `model_repo/`) with `smoothserve_client`; "
            "TSVs in Cohen et al.'s format are in `model_repo/<name>/certification.tsv`."
        ),
        "",
        "## Certified accuracy",
        "",
        (
            "Fraction of test images classified correctly with a certified L2 radius >= r "
            "(r in [0,1] pixel units):"
        ),
        "",
        accuracy_table(curves, DEFAULT_RADII),
        "",
        "![certified accuracy](results_certified_accuracy.png)",
        "",
        "Solid: certified accuracy. Dashed: empirical robust accuracy (below).",
        "",
    ]
    if empirical:
        out += [
            "## Empirical robust accuracy",
            "",
            (
                f"The SmoothAdv PGD attack on the smoothed soft classifier ({args.empirical_steps} "
                f"steps, {args.empirical_m} fresh noise draws per step) at L2 radius eps, on the "
                f"first {args.empirical_limit} test images, then PREDICT (n={args.empirical_n}, "
                f"alpha={args.alpha}) through the server on the adversarial image; abstentions "
                "count as errors. "
                "This is an upper bound on robust accuracy, the certified one a lower bound."
            ),
            "",
            empirical_table(empirical),
            "",
        ]
    out += ["## Where SmoothAdv wins, where it does not, and why", ""]
    out += [p + "\n" for p in comparison(curves, configs, DEFAULT_RADII)]
    cap = _radius_cap(args.n, args.alpha)
    why = WHY.format(n=args.n, alpha=args.alpha, cap=cap, cap_quarter=cap / 4)
    out += [
        why,
        "",
        (
            f"**Default model for the server:** `{best}` (highest mean certified "
            "accuracy over the radii of the table)."
        ),
        "",
    ]
    out += [
        "## Models",
        "",
        "| model | training | epochs | wall time | s/epoch (min-max) | max abs ORT-torch "
        "| ORT img/s (1 thread) | certify time (1000 imgs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (_, cfg, state) in models.items():
        wall = state.get("wall_time_s", float("nan")) / 60
        seconds = [h["seconds"] for h in state.get("history", [])] or [float("nan")]
        diff = _card_field(args.model_repo / name, "max abs ORT - torch logits")
        cert = f"{timing[name]:.0f} s" if name in timing else "-"
        out.append(
            f"| `{name}` | {cfg.describe()} | {cfg.epochs} | {wall:.1f} min | "
            f"{min(seconds):.0f}-{max(seconds):.0f} | {diff} | {throughput[name]:,.0f} | {cert} |"
        )
    out += ["", TRAINING_NOTE, "", GPU_NOTE, ""]
    return "\n".join(out)


def _card_field(model_dir: Path, field: str) -> str:
    card = model_dir / "README.md"
    for line in card.read_text().splitlines() if card.exists() else []:
        if line.startswith(f"| {field} |"):
            return line.split("|")[2].strip()
    return "-"


def _radius_cap(n: int, alpha: float) -> float:
    """The largest radius CERTIFY can give with n samples, in units of sigma."""
    from scipy.stats import norm

    from smoothcert.bounds import lower_confidence_bound

    return float(norm.ppf(lower_confidence_bound(n, n, alpha)))


WHY = """**Why.** SmoothAdv trains the base network on adversarial examples of the *smoothed*
soft classifier, found inside an L2 ball of radius epsilon around each training image, with the
same noise draws it then trains on. The noisy copies of a point therefore keep voting for its
class even after a worst-case shift of up to epsilon, which raises p_A for inputs near the
decision boundary; the certified radius sigma * Phi^-1(p_A_lower) rewards exactly that, hence
SmoothAdv's gains at the middle and large radii. The price is paid at r = 0 and small radii:
training on points pushed towards other classes blurs the boundary for clean inputs and takes
capacity from a small network (0.2 M parameters, 14 epochs), so its smoothed classifier errs
or abstains more often on unperturbed images, the trade-off of Salman et al.'s Table 1 (larger
epsilon buys large-radius accuracy with clean accuracy). Where both curves are zero neither can
win: with n = {n} and alpha = {alpha}, even unanimous votes give p_A_lower such that the radius
is at most {cap:.2f} sigma, so the sigma = 0.25 models certify nothing beyond {cap_quarter:.2f}
and only the sigma = 0.5 models reach r >= 1. The choice of sigma moves the curves more than
the training method: sigma = 0.5 gives up clean accuracy for reach. An attack gives an upper
bound on robust accuracy and a certificate a lower bound, so the dashed curves should lie above
the solid ones, up to sampling (fewer images; PREDICT with fewer samples abstains more easily);
their gap is the slack of the certificate plus the weakness of the attack. Absolute numbers
differ from the paper's CIFAR-10/ImageNet figures: other data, a far smaller network and a far
shorter schedule."""


TRAINING_NOTE = """Training ran on the 2-core CPU machine that other work shared, so the wall
times and the seconds per epoch (a SmoothAdv epoch takes about 50 s on an idle core, a Gaussian
one about 10 s) measure the contention as much as the methods. Each model card gives the exact
command line, and `checkpoints/<name>.pt` keeps the per-epoch history; a command ending in
`--resume` continued its run from the training checkpoint `runs/<name>/last.pt`. The exported
graphs (normalisation inside, dynamic batch axis) pass `onnx.checker` and match torch to the
"max abs ORT-torch" column on clean and noisy inputs (onnxruntime, CPUExecutionProvider)."""

GPU_NOTE = """No GPU machine was lent to this task, so everything above ran on 2 CPU cores, and
there are no ResNet-110 (CIFAR-10) or ResNet-50 (ImageNet) figures: the training code supports
them (`--arch resnet110`, `--arch resnet50`), but training them on a CPU is out of budget."""


def empirical_results(args, test_set, models, tsv, client) -> dict[str, dict[float, float]]:
    """The empirical attack on each model, PREDICT through the server; cached per model."""
    empirical: dict[str, dict[float, float]] = {}
    subset = test_set.subset(np.arange(min(args.empirical_limit, len(test_set))))
    x, y = to_tensors(subset)
    attack = {
        "images": len(y), "steps": args.empirical_steps, "m": args.empirical_m,
        "n": args.empirical_n, "alpha": args.alpha, "epsilons": list(args.epsilons),
        "predict": "server",
    }  # fmt: skip
    for name, (model, cfg, _) in models.items():
        cache = tsv[name].with_name("empirical.json")
        if args.reuse_tsv and cache.exists():
            saved = json.loads(cache.read_text())
            if saved["settings"] == attack:
                empirical[name] = {float(e): a for e, a in saved["accuracy"].items()}
                continue
        began = time.time()
        empirical[name] = empirical_robust_accuracy(
            model, x, y, cfg.sigma, args.epsilons, client, name, args.empirical_steps,
            args.empirical_m, args.empirical_n, args.alpha, progress=not args.no_progress,
        )  # fmt: skip
        seconds = time.time() - began
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(
            {"settings": attack, "accuracy": empirical[name], "seconds": seconds}))  # fmt: skip
        print(f"{name}: empirical {empirical[name]} in {seconds:.0f}s", flush=True)
    return empirical
