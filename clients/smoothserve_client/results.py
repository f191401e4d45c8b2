"""Certification results: the reference's tab-separated format, certified accuracy, plots."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

TSV_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass(frozen=True)
class Row:
    """One line of the Cohen et al. ``certify.py`` output; predict is -1 on abstain."""

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: float

    def tsv(self) -> str:
        return f"{self.idx}\t{self.label}\t{self.predict}\t{self.radius:.3}\t{self.correct}\t{self.time:.4f}"


def write_tsv(rows: Iterable[Row], path: Path | str) -> None:
    with open(path, "w") as f:
        f.write(TSV_HEADER + "\n")
        for row in rows:
            f.write(row.tsv() + "\n")


def read_tsv(path: Path | str) -> list[Row]:
    rows = []
    with open(path) as f:
        next(f)
        for line in f:
            idx, label, pred, radius, correct, time = line.rstrip("\n").split("\t")
            rows.append(Row(int(idx), int(label), int(pred), float(radius), int(correct), float(time)))
    return rows


def certified_accuracy(rows: Sequence[Row], radii: Iterable[float]) -> np.ndarray:
    """Fraction of inputs classified correctly with a certified radius >= r, for each r."""
    correct = np.array([r.correct for r in rows], dtype=bool)
    radius = np.array([r.radius for r in rows], dtype=float)
    return np.array([float(np.mean(correct & (radius >= r))) if len(rows) else 0.0 for r in radii])


PLOT_INSTALL_HINT = "pip install 'smoothserve[plot]' or pip install 'smoothserve-client[plot]'"


class PlotUnavailableError(ImportError):
    """Plots need matplotlib, which is an extra (``plot``) of both packages."""


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise PlotUnavailableError(f"plots need matplotlib: {PLOT_INSTALL_HINT}") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_subtitle(n: int, alpha: float, sigmas: Iterable[float], images: int) -> str:
    """The settings a certified-accuracy curve depends on, for the plot's subtitle."""
    sigma = ", ".join(f"{s:g}" for s in sorted(set(sigmas)))
    return f"n = {n:,}, alpha = {alpha:g}, sigma = {sigma}, {images:,} images"


def certified_accuracy_figure(
    curves: dict[str, Sequence[Row]],
    title: str = "Certified accuracy",
    max_radius: float | None = None,
    empirical: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    subtitle: str | None = None,
    norm: str = "l2",
):
    """The matplotlib figure of ``plot_certified_accuracy``; the caller closes it."""
    plt = _pyplot()
    largest = [max((r.radius for r in rows), default=0.0) for rows in curves.values()]
    top = max_radius or max([*largest, 0.5])
    radii = np.linspace(0.0, top * 1.05, 300)
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {}
    for name, rows in curves.items():
        (line,) = ax.plot(radii, certified_accuracy(rows, radii), label=name)
        colors[name] = line.get_color()
    for name, (xs, ys) in (empirical or {}).items():
        ax.plot(xs, ys, "--", color=colors.get(name), label=f"{name} (empirical)")
    ax.set_xlabel(f"{norm.upper()} radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, radii[-1])
    ax.grid(alpha=0.3)
    ax.set_title(title if subtitle is None else f"{title}\n{subtitle}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_certified_accuracy(
    curves: dict[str, Sequence[Row]],
    path: Path | str,
    title: str = "Certified accuracy",
    max_radius: float | None = None,
    empirical: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    subtitle: str | None = None,
    norm: str = "l2",
) -> None:
    """Certified accuracy against radius in ``norm`` (L2 by default), one line per result set,
    as in the papers' figures.

    ``empirical`` adds dashed lines (radii, accuracies) of empirical robust accuracy;
    ``subtitle`` (``plot_subtitle``) says n, alpha, sigma and how many images. The title and
    subtitle are also the PNG's ``Title`` metadata. Raises ``PlotUnavailableError`` without
    matplotlib.
    """
    plt = _pyplot()
    fig = certified_accuracy_figure(curves, title, max_radius, empirical, subtitle, norm)
    full_title = title if subtitle is None else f"{title} ({subtitle})"
    metadata = {"Title": full_title} if str(path).lower().endswith(".png") else None
    try:
        fig.savefig(path, dpi=120, metadata=metadata)
    finally:
        plt.close(fig)


def accuracy_table(curves: dict[str, Sequence[Row]], radii: Sequence[float] = DEFAULT_RADII) -> str:
    """A markdown table in the papers' style: one row per model, one column per radius."""
    header = "| model | " + " | ".join(f"r = {r:g}" for r in radii) + " |"
    lines = [header, "|" + "---|" * (len(radii) + 1)]
    for name, rows in curves.items():
        accs = certified_accuracy(rows, radii)
        lines.append(f"| {name} | " + " | ".join(f"{100 * a:.1f}%" for a in accs) + " |")
    return "\n".join(lines)


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius CERTIFY can return with n samples: when all n votes agree, the
    Clopper-Pearson lower bound is alpha^(1/n), and the radius sigma * Phi^-1(alpha^(1/n))."""
    return sigma * NormalDist().inv_cdf(alpha ** (1.0 / n))


def radius_limit_note(n: int, alpha: float, sigmas: Iterable[float]) -> str:
    """One line per sigma, for under the table: beyond this radius certified accuracy is 0
    because of n, not because of the model."""
    return "\n".join(
        f"the largest radius n={n:,} can certify at alpha={alpha:g} with sigma={sigma:g} "
        f"is {max_certifiable_radius(n, alpha, sigma):.3f}"
        for sigma in sorted(set(sigmas))
    )
