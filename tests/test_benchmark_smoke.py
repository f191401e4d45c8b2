"""The benchmark at tiny n, so it cannot rot. Figures come from the full run, not from here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_quick_run(linear_repo, tmp_path) -> None:
    out = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_benchmark.py"), "--quick", "--skip-triton",
         "--model-repo", str(linear_repo), "--checkpoint-dir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    for model in ("linear", "cifar_resnet20_random"):
        assert f"{model}: raw ONNX Runtime images/s" in text
        for generator in ("ars5", "pcg64"):
            assert f"{model}: host noise alone ({generator}" in text
            assert f"{model} [{generator}]:  8 clients, n =" in text
            assert f"ratio {model} [{generator}] server ÷ raw, 8 clients" in text
            assert f"{model} [{generator}]: peak server RSS" in text
    assert "linear [ars5]: 32 clients, n =" in text
    assert "cifar_resnet20_random: round 1: server" in text  # the baseline's alternating rounds
    assert "fastnoise extra:" in text
    assert not out.exists()  # a quick run writes no report


def test_sequential_benchmark_quick_run(tmp_path) -> None:
    plot = tmp_path / "sequential.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sequential.py"), "--images", "4",
         "--fixed-n", "2000", "--models", "fmnist_cnn_smoothadv_s050", "--plot", str(plot)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| 0.5 |" in result.stdout and "fixed ÷ sequential" in result.stdout
    assert "anytime" in result.stdout and "error" not in result.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_sequential_benchmark_against_a_baseline_commit(tmp_path) -> None:
    """--baseline runs the target-radius certificates on a second server built from a commit's
    tree (here HEAD's, the one commit every checkout has) and reports the ratio per radius."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sequential.py"), "--images", "4",
         "--fixed-n", "2000", "--models", "fmnist_cnn_smoothadv_s050", "--parts", "target",
         "--targets", "0.25", "0.5", "--repeats", "2", "--baseline", "HEAD"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Baseline: the code of commit HEAD" in result.stdout
    assert "error" not in result.stdout
    rows = [line for line in result.stdout.splitlines() if "; runs: " in line]
    assert len(rows) == 2 * 2  # two radii, printed as they finish and again in the report
    for row in rows:
        per_run = row.split("; runs: ")[1].split(")")[0].split(", ")
        assert len(per_run) == 2 and all(float(r) > 0 for r in per_run)


def test_sequential_benchmark_pools_deadline_runs_taking_turns(tmp_path) -> None:
    """--repeats runs anytime and the fitted fixed n image by image in turn, pools the runs, and
    reports fixed n less anytime per radius: the row agrees with the two pooled rows. The plot
    of a run without target rows has the deadline panels only."""
    plot = tmp_path / "deadline.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sequential.py"), "--images", "4",
         "--fixed-n", "2000", "--models", "fmnist_cnn_smoothadv_s050", "--parts", "deadline",
         "--deadline-ms", "300", "--repeats", "2", "--plot", str(plot)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "s apart, the mean of 2 runs, anytime and fixed n taking turns image by image" in text
    report = text[text.index("## Sequential certification"):]

    def row(name: str) -> list[str]:
        line = next(line for line in report.splitlines() if line.startswith(f"| {name}"))
        return [cell.strip() for cell in line.strip("|").split("|")[1:]]

    ours = [float(cell.rstrip(" %")) for cell in row("anytime")]
    theirs = [float(cell.rstrip(" %")) for cell in row("fixed n =")]
    gaps = [float(cell.split(" (")[0]) for cell in row("fixed n − anytime")]
    assert len(ours) == len(theirs) == len(gaps) == 7
    for a, f, g in zip(ours, theirs, gaps, strict=True):
        assert abs((f - a) - g) <= 0.11, (a, f, g)
    per_run = report.split("each run's: ")[1].split(")")[0].split(", ")
    assert len(per_run) == 2
    assert f"Largest shortfall of anytime against fixed n: {max(gaps):.1f} points" in report
    assert plot.read_bytes().startswith(b"\x89PNG")
