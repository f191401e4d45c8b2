"""``make_l1_results.py``: certify the uniform-noise model (L1 radii) through the server and
write the "L1 certificates" section of docs/results.md, its plot and the model's TSV.

An L2 certificate of radius r also holds in L1 (||d||_2 <= ||d||_1), so the Gaussian models'
L2 TSVs (written by ``make_results.py``) appear beside the uniform model as L1 baselines.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

from smoothserve_client.datasets import load_dataset
from smoothserve_client.results import accuracy_table, plot_certified_accuracy, read_tsv, write_tsv

from .evaluate import certify_models

ROOT = Path(__file__).resolve().parents[2]
UNIFORM = "fmnist_cnn_uniform_l087"
BASELINES = ("fmnist_cnn_gauss_s050",)
BEGIN, END = "<!-- l1-results:begin -->", "<!-- l1-results:end -->"
RADII = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=UNIFORM)
    p.add_argument("--baselines", nargs="*", default=list(BASELINES),
                   help="models whose L2 TSVs are shown as L1 baselines")  # fmt: skip
    p.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--limit", type=int, default=1000, help="first N test images")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--reuse-tsv", action="store_true", help="reuse a TSV of the same settings")
    p.add_argument("--scratch", type=Path, default=None,
                   help="write the TSV, plot and page under this folder, not the repository")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    docs = args.scratch / "docs" if args.scratch else ROOT / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    tsv = (args.scratch / "tsv" if args.scratch else args.model_repo) / args.model / "certification.tsv"
    meta = tsv.with_suffix(".json")
    settings = {"images": args.limit, "n0": args.n0, "n": args.n, "alpha": args.alpha}
    saved = json.loads(meta.read_text()) if args.reuse_tsv and meta.exists() else {}
    if {k: saved.get(k) for k in settings} == settings:
        rows, seconds = read_tsv(tsv), saved["seconds"]
    else:
        test_set = load_dataset(args.dataset, args.data_root, "test")
        indices = list(range(min(args.limit, len(test_set))))
        (rows, seconds), = certify_models(
            args.model_repo, [args.model], test_set, indices, args.n0, args.n, args.alpha,
            args.concurrency, ["--batch-size", "1024"], progress=not args.no_progress,
        ).values()  # fmt: skip
        tsv.parent.mkdir(parents=True, exist_ok=True)
        write_tsv(rows, tsv)
        meta.write_text(json.dumps({**settings, "seconds": seconds}))
    curves = {f"{args.model} (uniform, L1)": rows}
    for name in args.baselines:
        baseline = args.model_repo / name / "certification.tsv"
        if baseline.exists():
            curves[f"{name} (Gaussian L2, valid in L1)"] = read_tsv(baseline)
    plot = docs / "results_l1_certified_accuracy.png"
    plot_certified_accuracy(curves, plot, title=f"{args.dataset}: certified accuracy, L1 radius",
                            max_radius=max(RADII), norm="l1")  # fmt: skip
    command = "python export/make_l1_results.py" + (" " + shlex.join(argv) if argv else "")
    section = "\n".join([
        BEGIN,
        "## L1 certificates: uniform noise",
        "",
        f"Produced by `{command}` (regenerate with `python export/make_l1_results.py`; "
        "`--reuse-tsv` reads the TSV back when its settings match).",
        "",
        f"`{args.model}` was trained with uniform noise on [-lambda, lambda]^d, lambda = 0.866 "
        "(the variance of Gaussian sigma = 0.5; its model card has the command), and certified "
        f"through the gRPC server ({len(rows)} {args.dataset} test images, n0={args.n0}, "
        f"n={args.n}, alpha={args.alpha}, {seconds:.0f} s) with the uniform family's L1 radius "
        "2 lambda (p_A_lower - 1/2) (Yang et al., ICML 2020), at most lambda. The Gaussian "
        "model's L2 certificates (from its TSV above) hold in L1 too, since ||d||_2 <= ||d||_1, "
        "so they are shown as a baseline.",
        "",
        "Fraction of test images classified correctly with a certified L1 radius >= r:",
        "",
        accuracy_table(curves, RADII),
        "",
        "![L1 certified accuracy](results_l1_certified_accuracy.png)",
        END,
    ])  # fmt: skip
    results = docs / "results.md"
    text = results.read_text() if results.exists() else ""
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text,
                      flags=re.S)  # fmt: skip
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    results.write_text(text)
    print(accuracy_table(curves, RADII))


def preserved_section(old_text: str, begin: str = BEGIN, end: str = END) -> str:
    """A section of an existing results.md between ``begin`` and ``end`` (default: the L1
    section), for ``make_results.py`` to keep."""
    match = re.search(re.escape(begin) + ".*?" + re.escape(end), old_text, flags=re.S)
    return "" if match is None else "\n" + match.group(0) + "\n"
