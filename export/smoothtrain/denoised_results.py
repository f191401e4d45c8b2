"""``make_denoised_results.py``: certify denoised smoothing through the server and write the
"Denoised smoothing" section of docs/results.md, its plot, TSVs and the ensembles' cards.

For each sigma: the plain classifier (trained without noise) smoothed as it is, with no
denoiser (served from a temporary repository: a copy of ``fmnist_cnn_plain``'s ONNX under a
config with sigma and labels); the two ensembles (MSE and stability denoisers in front of it);
and the committed models trained with noise (SmoothAdv and Gaussian augmentation) at the same
sigma. One real server (``smoothserve_dev.testing.ServerProcess``) serves them all from a
scratch copy of the repository; the client certifies the first ``--limit`` test images.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from smoothcert.model_config import SmoothModelConfig
from smoothserve_client.datasets import load_dataset
from smoothserve_client.results import (
    DEFAULT_RADII,
    Row,
    accuracy_table,
    certified_accuracy,
    max_certifiable_radius,
    read_tsv,
    write_tsv,
)

from .card import set_results
from .denoise import CLASSIFIER, denoiser_name, ensemble_name

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- denoised-results:begin -->", "<!-- denoised-results:end -->"
PLOT = "results_denoised_certified_accuracy.png"
SIGMAS = (0.25, 0.5)


def plain_name(sigma: float) -> str:
    """The plain classifier smoothed directly (only in the temporary repository)."""
    return f"{CLASSIFIER}_s{round(sigma * 100):03d}"


def noise_trained(sigma: float) -> dict[str, str]:
    tag = f"s{round(sigma * 100):03d}"
    return {"smoothadv": f"fmnist_cnn_smoothadv_{tag}", "gauss": f"fmnist_cnn_gauss_{tag}"}


def models_for(sigma: float, gaussian: bool = True) -> dict[str, str]:
    """Role -> served model name, in the table's order."""
    trained = noise_trained(sigma)
    roles = {
        "plain": plain_name(sigma),
        "mse": ensemble_name("mse", sigma),
        "stab": ensemble_name("stab", sigma),
        "smoothadv": trained["smoothadv"],
    }
    if gaussian:
        roles["gauss"] = trained["gauss"]
    return roles


LABELS = {
    "plain": "plain CNN, no denoiser",
    "mse": "plain CNN + DnCNN (MSE)",
    "stab": "plain CNN + DnCNN (stability)",
    "smoothadv": "CNN trained with SmoothAdv",
    "gauss": "CNN trained with Gaussian noise",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    p.add_argument("--checkpoint-dir", type=Path, default=ROOT / "checkpoints")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    p.add_argument("--no-gaussian", action="store_true",
                   help="leave out the Gaussian-augmentation models")  # fmt: skip
    p.add_argument("--roles", nargs="+", default=list(LABELS), choices=list(LABELS),
                   help="with --certify-only: certify only these (plain, mse, stab, smoothadv, "
                   "gauss)")  # fmt: skip
    p.add_argument("--certify-only", action="store_true",
                   help="stop after writing the TSVs (reuse them later with --reuse-tsv)")  # fmt: skip
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--limit", type=int, default=500, help="first N test images")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=0, help="image i is certified with seed + i")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--server-arg", action="append", default=[],
                   help="a flag for the server, repeatable")  # fmt: skip
    p.add_argument("--reuse-tsv", action="store_true",
                   help="reuse TSVs of the same settings; certify only the rest")  # fmt: skip
    p.add_argument("--scratch", type=Path, default=None,
                   help="write TSVs, plot and page under this folder, not the repository")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    return p


def tsv_path(args, name: str, sigma: float) -> Path:
    """Ensembles keep their TSV in their folder; the plain classifier's go in its folder, one
    per sigma; the committed models' (other settings than make_results.py's) under runs/."""
    if args.scratch:
        return args.scratch / "tsv" / f"{name}.tsv"
    if name.startswith("fmnist_denoised_"):
        return args.model_repo / name / "certification.tsv"
    if name == plain_name(sigma):
        return args.model_repo / CLASSIFIER / f"certification_s{round(sigma * 100):03d}.tsv"
    return ROOT / "runs" / "denoised" / "certify" / f"{name}.tsv"


def build_repository(source: Path, target: Path, sigmas, names, labels, input_shape) -> None:
    """A scratch repository: the served models' configs and version folders (cards, TSVs and
    TorchScript twins left out), the components the ensembles name, and the plain classifier
    under a config with sigma and labels, once per sigma."""
    plain = {plain_name(s) for s in sigmas}
    wanted = {n for n in names if n not in plain}
    for sigma in sigmas:  # an ensemble needs its components (and a component, an ensemble)
        for objective in ("mse", "stab"):
            if ensemble_name(objective, sigma) in wanted:
                wanted |= {CLASSIFIER, denoiser_name(objective, sigma)}
    for name in sorted(wanted):
        src = source / name
        if not (src / "config.pbtxt").exists():
            raise SystemExit(f"{src}/config.pbtxt is missing: run python export/make_denoised.py")
        (target / name).mkdir(parents=True)
        shutil.copy2(src / "config.pbtxt", target / name / "config.pbtxt")
        for version in (p for p in src.iterdir() if p.is_dir() and p.name.isdigit()):
            (target / name / version.name).mkdir()
            for item in version.iterdir():
                if item.name in ("model.onnx", ".keep"):
                    shutil.copy2(item, target / name / version.name / item.name)
    onnx = source / CLASSIFIER / "1" / "model.onnx"
    for sigma in sigmas:
        name = plain_name(sigma)
        if name not in names:
            continue
        (target / name / "1").mkdir(parents=True)
        shutil.copy2(onnx, target / name / "1" / "model.onnx")
        SmoothModelConfig(
            name=name, sigma=sigma, labels=tuple(labels), input_shape=tuple(input_shape),
            batch_size=1024,
            extra_parameters={"arch": "cnn", "training": "plain (no noise)",
                              "dataset": "fashion-mnist", "copy_of": CLASSIFIER},
        ).check().write(target / name)  # fmt: skip


def certify(repo: Path, names, dataset, indices, args) -> dict[str, tuple[list[Row], float]]:
    from smoothserve_client import SmoothServeClient
    from smoothserve_client.dataset import certify_dataset
    from smoothserve_dev.testing import ServerProcess

    out = {}
    with (
        ServerProcess(repo, list(args.server_arg), start_timeout=300) as server,
        SmoothServeClient(server.address, timeout=3600) as client,
    ):
        for name in names:
            began = time.time()
            rows = certify_dataset(
                client, name, dataset, list(indices), n0=args.n0, n=args.n, alpha=args.alpha,
                concurrency=args.concurrency, progress=not args.no_progress, seed=args.seed,
            )  # fmt: skip
            out[name] = (list(rows), time.time() - began)
            print(f"{name}: certified {len(rows)} images in {out[name][1]:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    docs = args.scratch / "docs" if args.scratch else ROOT / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    test_set = load_dataset(args.dataset, args.data_root, "test")
    indices = list(range(min(args.limit, len(test_set))))
    roles = {s: models_for(s, not args.no_gaussian) for s in args.sigmas}
    if args.certify_only:
        roles = {
            s: {r: n for r, n in named.items() if r in args.roles} for s, named in roles.items()
        }
    elif set(args.roles) != set(LABELS):
        raise SystemExit("--roles needs --certify-only: the page compares every role")
    names = [n for s in args.sigmas for n in roles[s].values()]
    settings = {"images": len(indices), "n0": args.n0, "n": args.n, "alpha": args.alpha,
                "seed": args.seed}  # fmt: skip
    sigma_of = {n: s for s in args.sigmas for n in roles[s].values()}
    curves: dict[str, list[Row]] = {}
    seconds: dict[str, float] = {}
    for name in names:
        meta = tsv_path(args, name, sigma_of[name]).with_suffix(".json")
        if args.reuse_tsv and meta.exists():
            saved = json.loads(meta.read_text())
            if {k: saved.get(k) for k in settings} == settings:
                curves[name] = read_tsv(meta.with_suffix(".tsv"))
                seconds[name] = saved["seconds"]
    todo = [n for n in names if n not in curves]
    if todo:
        with tempfile.TemporaryDirectory(prefix="denoised-repo-") as tmp:
            build_repository(args.model_repo, Path(tmp), args.sigmas, set(todo),
                             test_set.classes, test_set.images.shape[1:])  # fmt: skip
            for name, (rows, took) in certify(Path(tmp), todo, test_set, indices, args).items():
                path = tsv_path(args, name, sigma_of[name])
                path.parent.mkdir(parents=True, exist_ok=True)
                write_tsv(rows, path)
                path.with_suffix(".json").write_text(json.dumps({**settings, "seconds": took}))
                curves[name], seconds[name] = rows, took
    if args.certify_only:
        return {}
    command = "python export/make_denoised_results.py" + (" " + shlex.join(argv) if argv else "")
    plot_curves(roles, curves, docs / PLOT, args)
    section = document(args, roles, curves, seconds, command, len(indices))
    results = docs / "results.md"
    text = results.read_text() if results.exists() else ""
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text,
                      flags=re.S)  # fmt: skip
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    results.write_text(text)
    if not args.scratch:
        where = (f"{len(indices)} {args.dataset} test images, n0={args.n0}, n={args.n}, "
                 f"alpha={args.alpha}, through the server; `{command}`")  # fmt: skip
        for sigma in args.sigmas:
            for role in ("mse", "stab"):
                name = roles[sigma][role]
                table = accuracy_table({name: curves[name]}, radii_for(args))
                set_results(args.model_repo / name, f"Certified accuracy ({where}):\n\n{table}\n")
    summary = {name: [round(float(a), 3) for a in certified_accuracy(curves[name],
                                                                     radii_for(args))]
               for name in names}  # fmt: skip
    print(json.dumps({"radii": list(radii_for(args)), "certified_accuracy": summary}))
    return summary


def radii_for(args) -> tuple[float, ...]:
    return DEFAULT_RADII


def table(roles, curves, radii) -> str:
    lines = ["| sigma | model | " + " | ".join(f"r = {r:g}" for r in radii) + " |",
             "|---|---|" + "---|" * len(radii)]  # fmt: skip
    for sigma, named in roles.items():
        for role, name in named.items():
            acc = certified_accuracy(curves[name], radii)
            cells = " | ".join(f"{100 * a:.1f}%" for a in acc)
            lines.append(f"| {sigma:g} | {LABELS[role]} (`{name}`) | {cells} |")
    return "\n".join(lines)


def verdict(sigma: float, named: dict[str, str], curves, radii, cap: float) -> str:
    """The paper's relative claim checked on these numbers: the denoisers lift the plain
    classifier far above no denoiser, and stay below a classifier trained with noise."""
    reach = [r for r in radii if r <= cap]
    acc = {role: certified_accuracy(curves[name], reach) for role, name in named.items()}
    trained = [role for role in ("gauss", "smoothadv") if role in acc]
    parts = [f"**sigma = {sigma:g}** (radii up to {reach[-1]:g}, the most n allows here):"]
    for role in ("mse", "stab"):
        lift = acc[role] - acc["plain"]
        parts.append(
            f"{LABELS[role]} minus no denoiser: "
            + ", ".join(f"r={r:g}: {100 * d:+.1f}" for r, d in zip(reach, lift, strict=True))
            + " points"
        )
        for t in trained:
            gap = acc[role] - acc[t]
            above = [r for r, d in zip(reach, gap, strict=True) if d > 0.005]
            parts.append(
                f"minus {LABELS[t].replace('CNN trained with ', '')}: "
                + ", ".join(f"r={r:g}: {100 * d:+.1f}" for r, d in zip(reach, gap, strict=True))
                + (f" (above it at r in {{{', '.join(f'{r:g}' for r in above)}}})" if above
                   else " (never above it)")
            )  # fmt: skip
    return "; ".join(parts[1:]).join([parts[0] + " ", "."])


def document(args, roles, curves, seconds, command, images) -> str:
    radii = radii_for(args)
    caps = {s: max_certifiable_radius(args.n, args.alpha, s) for s in roles}
    times = ", ".join(f"`{n}` {seconds[n]:.0f} s" for named in roles.values()
                      for n in named.values() if n in seconds)  # fmt: skip
    arch, models = models_table(args, roles)
    claims = [verdict(s, roles[s], curves, radii, caps[s]) for s in roles]
    summary = claim_summary(roles, curves, radii, caps)
    return "\n".join([
        BEGIN,
        "## Denoised smoothing",
        "",
        f"Produced by `{command}` (regenerate with `python export/make_denoised_results.py`; "
        "`--reuse-tsv` reads TSVs of the same settings back). The models come from "
        "`python export/make_denoised.py` (their cards in `model_repo/` give the details).",
        "",
        "Denoised smoothing (Salman et al., NeurIPS 2020) makes a classifier that was trained "
        "**without noise** certifiably robust by putting a denoiser in front of it: the server "
        "smooths the Triton ensemble `fmnist_denoised_<objective>_s<sigma>` = DnCNN denoiser "
        f"-> `fmnist_cnn_plain`. The denoisers ({arch}: sized so that certifying them "
        "through the server on one CPU core fits the budget) were trained at each sigma with the MSE objective ||D(x + delta) - x||^2, and with the stability objective "
        "CE(f(D(x + delta)), argmax f(x)) with the classifier frozen, starting from the MSE "
        "denoiser (as the paper's Stab+MSE). Baselines at the same sigma: the plain classifier "
        "smoothed with no denoiser (a temporary copy of its ONNX under a config with sigma and "
        "labels), and the committed CNNs trained with noise (SmoothAdv, Gaussian augmentation).",
        "",
        f"Certification: {images} {args.dataset} test images, n0={args.n0}, n={args.n}, "
        f"alpha={args.alpha}, seed {args.seed} + image index, through the real gRPC server "
        "(`smoothserve_dev.testing.ServerProcess` on a scratch copy of `model_repo/`) with "
        f"`smoothserve_client` (wall times: {times}). With n = {args.n} no radius beyond "
        + " / ".join(f"{caps[s]:.2f} (sigma = {s:g})" for s in roles)
        + " can be certified (all votes unanimous), so every row is 0 beyond that radius "
        "because of n, not of the model. With other settings than the section above "
        "(1000 images, n = 10,000), the SmoothAdv and Gaussian rows differ from it a little.",
        "",
        *models,
        "",
        "Fraction of test images classified correctly with a certified L2 radius >= r:",
        "",
        table(roles, curves, radii),
        "",
        f"![denoised smoothing certified accuracy]({PLOT})",
        "",
        "Differences in percentage points:",
        "",
        *[c + "\n" for c in claims],
        summary,
        END,
    ])  # fmt: skip


def claim_summary(roles, curves, radii, caps) -> str:
    """One sentence: does the paper's relative claim hold on these numbers?"""
    lifts, below, above = [], 0, 0
    for sigma, named in roles.items():
        reach = [r for r in radii if r <= caps[sigma]]
        plain = certified_accuracy(curves[named["plain"]], reach)
        trained = [certified_accuracy(curves[named[t]], reach)
                   for t in ("gauss", "smoothadv") if t in named]  # fmt: skip
        best_trained = np.max(trained, axis=0)
        for role in ("mse", "stab"):
            acc = certified_accuracy(curves[named[role]], reach)
            lifts.append(float(np.mean(acc - plain)))
            below += int(np.sum(acc < best_trained - 0.005))
            above += int(np.sum(acc > best_trained + 0.005))
    lift = np.mean(lifts)
    first = (
        f"**The paper's relative claim, checked:** averaged over the certifiable radii and "
        f"the {len(lifts)} denoisers, a denoiser adds {100 * lift:+.1f} points of certified accuracy to the plain "
        "classifier"
    )
    if min(lifts) > 0.1:
        first += " (each denoiser by more than 10 points), so the lift over no denoiser holds"
    elif min(lifts) > 0:
        first += " (every denoiser helps, some by less than 10 points)"
    else:
        first += " (not every denoiser helps)"
    total = below + above + 0
    second = (
        f"; against the better of the models trained with noise at the same sigma, the denoised "
        f"classifiers are below at {below} and above at {above} of the (denoiser, radius) pairs "
        "(the rest within half a point)"
    )
    if above == 0 and below:
        second += ", so they also stay below a model trained with noise, as the paper found."
    elif above:
        second += ', so "below a model trained with noise" does not hold everywhere here.'
    else:
        second += "."
    return first + second + ("" if total else "")


STYLE = {
    "plain": ("tab:gray", ":"),
    "mse": ("tab:blue", "-"),
    "stab": ("tab:orange", "-"),
    "smoothadv": ("tab:green", "--"),
    "gauss": ("tab:red", "--"),
}


def plot_curves(roles, curves, path: Path, args) -> None:
    """One panel per sigma: certified accuracy against L2 radius, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(roles), figsize=(6 * len(roles), 4.5), squeeze=False)
    for ax, (sigma, named) in zip(axes[0], roles.items(), strict=True):
        cap = max_certifiable_radius(args.n, args.alpha, sigma)
        grid = np.linspace(0, max(1.5, cap * 1.05), 200)
        for role, name in named.items():
            color, style = STYLE[role]
            ax.plot(grid, certified_accuracy(curves[name], grid), color=color, linestyle=style,
                    label=LABELS[role])  # fmt: skip
        ax.axvline(cap, color="black", linewidth=0.6, alpha=0.4)
        ax.set_title(f"sigma = {sigma:g}")
        ax.set_xlabel("L2 radius ([0,1] pixels)")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    images = len(next(iter(curves.values()), []))
    fig.suptitle(f"{args.dataset}: denoised smoothing ({images} test images, n={args.n}, "
                 f"alpha={args.alpha})", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def models_table(args, roles) -> tuple[str, list[str]]:
    """The denoiser's size, and a table of the components' training from their checkpoints."""
    import torch

    def state(name: str) -> dict:
        path = args.checkpoint_dir / f"{name}.pt"
        return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else {}

    f = state(CLASSIFIER)
    f_acc = f["history"][-1]["test_noisy_acc"] if f.get("history") else float("nan")
    lines = [
        f"`{CLASSIFIER}` (SmallCNN, clean training, {f.get('config', {}).get('epochs', '?')} "
        f"epochs, {f.get('wall_time_s', float('nan')) / 60:.1f} min) has clean test accuracy "
        f"{100 * f_acc:.1f}% (first 1000 test images). The denoisers, on the first 1000 test "
        "images with one fixed noise draw (accuracy of the classifier on single noisy images, "
        "not of the smoothed classifier):",
        "",
        "| denoiser | objective | sigma | epochs | Adam lr | wall time | test MSE "
        "| acc f(D(x+d)) | acc f(x+d) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    arch = "DnCNN"
    for sigma in roles:
        for objective in ("mse", "stab"):
            name = denoiser_name(objective, sigma)
            s = state(name)
            if not s:
                continue
            cfg, last = s["config"], s["history"][-1]
            params = sum(int(v.numel()) for k, v in s["state_dict"].items()
                         if k.endswith("weight") or k.endswith("bias"))  # fmt: skip
            arch = (f"DnCNN with {cfg['n_channels']} channels and depth {cfg['depth']}, "
                    f"{params:,} parameters")  # fmt: skip
            start = f", from `{cfg['init']}`" if cfg.get("init") else ""
            lines.append(
                f"| `{name}` | {objective}{start} | {sigma:g} | {cfg['epochs']} | {cfg['lr']:g} "
                f"| {s['wall_time_s'] / 60:.1f} min | {last['test_mse']:.4f} "
                f"| {100 * last['noisy_acc_denoised']:.1f}% "
                f"| {100 * last['noisy_acc_no_denoiser']:.1f}% |"
            )
    return arch, lines
