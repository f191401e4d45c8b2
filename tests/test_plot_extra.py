"""Plots are an extra (``plot``): without matplotlib the dataset CLI still writes its TSV and
table and says how to get plots; with it, the plot says what it shows."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LINEAR_SHAPE
from test_newcomer import run_cli, write_idx_dataset

from smoothserve_client.results import Row, certified_accuracy_figure, plot_subtitle

# A real import failure: a meta-path finder in front of all others refuses matplotlib.
BLOCK_MATPLOTLIB = """import sys
class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoMatplotlib())
"""


@pytest.fixture(scope="module")
def tiny_fashion(tmp_path_factory):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(3, *LINEAR_SHAPE[1:]), dtype=np.uint8)
    return write_idx_dataset(tmp_path_factory.mktemp("fashion"), images, np.array([0, 1, 1]))


def test_the_blocker_really_blocks_matplotlib():
    result = run_cli("certify_dataset_main", "--help",
                     prelude=BLOCK_MATPLOTLIB + "import matplotlib\n")  # fmt: skip
    assert result.returncode == 1 and "No module named 'matplotlib'" in result.stderr


def test_dataset_cli_without_matplotlib_writes_tsv_and_says_how_to_plot(
    server, tiny_fashion, tmp_path
):
    out = tmp_path / "certify.tsv"
    result = run_cli("certify_dataset_main", "--server", server.address, "--data-dir",
                     str(tiny_fashion), "--n0", "50", "--n", "500", "--out", str(out),
                     prelude=BLOCK_MATPLOTLIB)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "matplotlib" in line]
    assert warning.startswith("warning: ")
    assert "pip install 'smoothserve[plot]'" in warning
    assert "pip install 'smoothserve-client[plot]'" in warning
    assert len(out.read_text().splitlines()) == 4
    assert "| linear |" in result.stdout
    assert not out.with_suffix(".png").exists()
    assert result.stdout.strip().splitlines()[-1] == f"wrote {out}"


def test_plot_title_says_n_alpha_sigma_and_images():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    rows = [Row(i, 0, 0, 0.3 * i, 1, 0.0) for i in range(5)]
    subtitle = plot_subtitle(100_000, 0.001, [0.5, 0.25, 0.5], len(rows))
    assert subtitle == "n = 100,000, alpha = 0.001, sigma = 0.25, 0.5, 5 images"
    fig = certified_accuracy_figure({"m": rows}, title="m on fashion-mnist", subtitle=subtitle)
    try:
        assert fig.axes[0].get_title() == f"m on fashion-mnist\n{subtitle}"
    finally:
        plt.close(fig)
