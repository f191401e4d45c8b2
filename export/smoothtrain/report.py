"""docs/results.md: the certified-accuracy table, empirical accuracy, and what they show."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smoothserve_client.results import Row, accuracy_table, certified_accuracy

from .config import TrainConfig


def empirical_table(empirical: dict[str, dict[float, float]]) -> str:
    epsilons = sorted({e for acc in empirical.values() for e in acc})
    lines = [
        "| model | " + " | ".join(f"eps = {e:g}" for e in epsilons) + " |",
        "|" + "---|" * (len(epsilons) + 1),
    ]
    for name, acc in empirical.items():
        cells = [f"{100 * acc[e]:.1f}%" if e in acc else "-" for e in epsilons]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(
    curves: dict[str, Sequence[Row]], configs: dict[str, TrainConfig], radii: Sequence[float]
) -> list[str]:
    """One paragraph per sigma: at which radii SmoothAdv beats the Gaussian baseline."""
    paragraphs = []
    for sigma in sorted({c.sigma for c in configs.values()}):
        gauss = [n for n, c in configs.items() if c.sigma == sigma and c.method == "gaussian"]
        adv = [n for n, c in configs.items() if c.sigma == sigma and c.method == "smoothadv"]
        if not gauss or not adv:
            continue
        g, a = gauss[0], adv[0]
        acc_g = certified_accuracy(curves[g], radii)
        acc_a = certified_accuracy(curves[a], radii)
        wins = [r for r, x, y in zip(radii, acc_a, acc_g, strict=True) if x > y + 0.005]
        losses = [r for r, x, y in zip(radii, acc_a, acc_g, strict=True) if x < y - 0.005]
        ties = [r for r in radii if r not in wins and r not in losses]
        diff = ", ".join(
            f"r={r:g}: {100 * (x - y):+.1f} pts"
            for r, x, y in zip(radii, acc_a, acc_g, strict=True)
        )
        text = f"**sigma = {sigma}** (`{a}` vs `{g}`): SmoothAdv minus Gaussian: {diff}. "
        text += f"SmoothAdv wins at r in {_fmt(wins)}; loses at r in {_fmt(losses)}"
        text += f"; ties (within 0.5 points) at r in {_fmt(ties)}." if ties else "."
        paragraphs.append(text)
    return paragraphs


def best_model(curves: dict[str, Sequence[Row]], radii: Sequence[float]) -> str:
    """The model with the largest mean certified accuracy over ``radii`` (the table's row mean)."""
    return max(curves, key=lambda name: float(np.mean(certified_accuracy(curves[name], radii))))


def _fmt(values: Sequence[float]) -> str:
    return "{" + ", ".join(f"{v:g}" for v in values) + "}" if values else "{} (none)"


def model_card_results(
    name: str, rows: Sequence[Row], settings: str, empirical: dict | None
) -> str:
    text = f"Certified accuracy ({settings}):\n\n{accuracy_table({name: rows})}\n"
    if empirical:
        table = empirical_table({name: empirical})
        text += f"\nEmpirical robust accuracy (SmoothAdv PGD):\n\n{table}\n"
    return text
