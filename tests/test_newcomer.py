"""Rough edges a newcomer meets: missing data, bad files, silent installs, noisy logs, and
numbers in the output that do not say where they come from."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LINEAR_SHAPE, LINEAR_SIGMA

from smoothcert.families import FAMILIES
from smoothcert.procedures.fixed_n import certify
from smoothserve_client.cli import certify_dataset_main
from smoothserve_client.dataset import progress_lines
from smoothserve_client.datasets import FASHION_MNIST_DIR, load_fashion_mnist
from smoothserve_client.results import max_certifiable_radius, radius_limit_note

ROOT = Path(__file__).resolve().parents[1]
GAUSSIAN = FAMILIES["gaussian"]
NOWHERE = "127.0.0.1:9"  # nothing listens: a test that reaches the network fails
CLI = "import sys; from smoothserve_client.cli import {main} as main; sys.exit(main(sys.argv[1:]))"


def run_cli(
    main: str, *args: str, cwd: Path = ROOT, pythonpath: Path | None = None, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    """A CLI's entry function in a fresh interpreter, its stderr a pipe (not a terminal).

    Output is decoded from bytes: text mode would turn carriage returns into newlines."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    code = prelude + CLI.format(main=main)
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, timeout=120
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def write_idx_dataset(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Fashion-MNIST's test split as gzipped idx files: (N, H, W) uint8 images, N labels."""
    root.mkdir(parents=True, exist_ok=True)
    for stem, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        array = np.ascontiguousarray(array, dtype=np.uint8)
        header = bytes([0, 0, 0x08, array.ndim])
        header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(root / f"{stem}.gz", "wb") as f:
            f.write(header + array.tobytes())
    return root


@pytest.fixture(scope="module")
def installed_client(tmp_path_factory) -> Path:
    """The client as `pip install` puts it: a copy in site-packages, no checkout around it."""
    tmp = tmp_path_factory.mktemp("installed")
    source = tmp / "src"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT / "clients", source, ignore=ignore)
    target = tmp / "site-packages"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return target


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    for needle in needles:
        assert needle in line


# 1. Fashion-MNIST outside a checkout


@pytest.mark.skipif(FASHION_MNIST_DIR.exists(), reason="Debian's dataset-fashion-mnist is here")
def test_dataset_cli_outside_a_checkout_says_where_to_get_the_data(installed_client, tmp_path):
    result = run_cli("certify_dataset_main", "--server", NOWHERE, cwd=tmp_path,
                     pythonpath=installed_client)  # fmt: skip
    assert_one_line_error(result, "--data-dir", "dataset-fashion-mnist", str(FASHION_MNIST_DIR))
    probe = subprocess.run(
        [sys.executable, "-c", "import smoothserve_client; print(smoothserve_client.__file__)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed_client)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.startswith(str(installed_client)), "the test ran the checkout's copy"


@pytest.mark.skipif(FASHION_MNIST_DIR.exists(), reason="Debian's dataset-fashion-mnist is here")
def test_installed_client_run_from_the_checkout_root_finds_the_committed_slice(installed_client):
    site = str(installed_client)
    code = (
        f"import smoothserve_client.datasets as d; assert d.__file__.startswith({site!r}); "
        "print(len(d.load_fashion_mnist()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(installed_client)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = len(load_fashion_mnist(ROOT / "data" / "fashion-mnist-slice"))
    assert int(result.stdout) == expected


def test_dataset_cli_with_a_missing_data_dir_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    code = certify_dataset_main(["--data-dir", str(missing), "--server", NOWHERE])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(missing) in err and "--data-dir" in err


def test_cifar10_cli_with_a_missing_folder_is_one_line_and_exit_2(tmp_path):
    result = run_cli("certify_dataset_main", "--dataset", "cifar10", "--data-dir",
                     str(tmp_path / "cifar"), "--server", NOWHERE)  # fmt: skip
    assert_one_line_error(result, str(tmp_path / "cifar"))


# 2. smoothserve-certify on a file that is not an image


def test_certify_a_missing_file_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "nope.png"
    result = run_cli("certify_image_main", str(missing), "--server", NOWHERE)
    assert_one_line_error(result, str(missing))


@pytest.mark.parametrize("name", ["notes.png", "notes.txt", "array.npy"])
def test_certify_a_file_that_is_not_an_image_is_one_line_and_exit_2(tmp_path, name):
    path = tmp_path / name
    path.write_text("these are not pixels\n")
    result = run_cli("certify_image_main", str(path), "--server", NOWHERE)
    assert_one_line_error(result, str(path), "image")


def test_certify_a_directory_is_one_line_and_exit_2(tmp_path):
    result = run_cli("certify_image_main", str(tmp_path), "--server", NOWHERE)
    assert_one_line_error(result, str(tmp_path))


# 2b. a client installed without the cli extra (no Pillow, no tqdm)

WITHOUT = "import sys; sys.modules[{module!r}] = None; "  # `import module` then fails
CLI_EXTRA = "install the cli extra: pip install './clients[cli]'"


def test_certify_a_png_without_pillow_says_install_the_cli_extra():
    image = ROOT / "examples" / "image.png"
    result = run_cli("certify_image_main", str(image), "--server", NOWHERE,
                     prelude=WITHOUT.format(module="PIL"))  # fmt: skip
    assert_one_line_error(result, "'PIL'", CLI_EXTRA)


def test_dataset_cli_on_a_terminal_without_tqdm_says_install_the_cli_extra(tiny_fashion):
    leader, follower = os.openpty()
    code = WITHOUT.format(module="tqdm") + CLI.format(main="certify_dataset_main")
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, "--server", NOWHERE, "--data-dir", str(tiny_fashion)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=follower, timeout=120,
        )  # fmt: skip
    finally:
        os.close(follower)
    err = os.read(leader, 65536).decode()
    os.close(leader)
    assert done.returncode == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line == "error: no module named 'tqdm'; " + CLI_EXTRA


# 3. .venv-serve is ignored


def test_demo_venv_is_ignored_by_git():
    result = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", ".venv-serve/bin/python"], cwd=ROOT
    )
    assert result.returncode == 0, ".venv-serve/ is not in .gitignore"


# 4. scripts/test.sh says what it is doing before the long install


def fake_venv(root: Path) -> Path:
    """A venv whose pip and python only say that they ran (pip is not ours to test)."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("pip", "python"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool.upper()}-RAN\n")
        (bin_dir / tool).chmod(0o755)
    return root


def test_test_script_announces_the_install_and_its_end(tmp_path):
    venv = fake_venv(tmp_path / "venv")
    result = subprocess.run(
        ["bash", "scripts/test.sh", "--version"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "VENV": str(venv)}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    install = lines.index("PIP-RAN")
    assert any("installing the dev environment" in line for line in lines[:install])
    after = lines[install + 1 : lines.index("PYTHON-RAN")]
    assert after and all("PIP" not in line for line in after)


# 5. progress without carriage returns when stderr is not a terminal


def test_progress_on_a_pipe_is_plain_lines(tmp_path):
    log = tmp_path / "log"
    with open(log, "w") as stream:
        assert list(progress_lines(range(25), 25, "certify m", stream)) == list(range(25))
    text = log.read_bytes().decode()
    assert "\r" not in text
    assert text.splitlines()[-1] == "certify m: 25/25 images"
    assert 2 <= len(text.splitlines()) <= 10


def test_progress_on_a_terminal_is_a_bar():
    leader, follower = os.openpty()
    with open(follower, "w") as stream:
        assert list(progress_lines(range(5), 5, "certify m", stream)) == list(range(5))
    chunks = []
    while True:  # a pty hands its bytes over in chunks; EIO once the writer is closed
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    output = b"".join(chunks).decode()
    assert "\r" in output and "5/5" in output


# 7. the largest radius n samples can certify


@pytest.mark.parametrize(
    ("n", "alpha", "sigma"), [(1_000, 0.001, 0.5), (1_000, 0.001, 0.25), (100_000, 0.001, 0.12)]
)
def test_max_certifiable_radius_is_what_the_server_certifies_when_all_votes_agree(n, alpha, sigma):
    server = certify(np.array([0, 100]), np.array([0, n]), GAUSSIAN, sigma, alpha).radius
    assert max_certifiable_radius(n, alpha, sigma) == pytest.approx(server, rel=1e-9)


def test_radius_limit_note_has_one_line_per_sigma():
    note = radius_limit_note(1_000, 0.001, [0.5, 0.25, 0.5])
    lines = note.splitlines()
    assert len(lines) == 2
    for line, sigma in zip(lines, (0.25, 0.5), strict=True):
        radius = certify(np.array([0, 1]), np.array([0, 1_000]), GAUSSIAN, sigma, 0.001).radius
        prefix = f"the largest radius n=1,000 can certify at alpha=0.001 with sigma={sigma:g} is"
        assert line == f"{prefix} {radius:.3f}"


# 5, 6 and 7 through the dataset CLI against a real server


@pytest.fixture(scope="module")
def tiny_fashion(tmp_path_factory) -> Path:
    """Six 8x8 'Fashion-MNIST' images in idx files, the shape of the test server's model."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(6, *LINEAR_SHAPE[1:]), dtype=np.uint8)
    return write_idx_dataset(tmp_path_factory.mktemp("fashion"), images, np.arange(6) % 2)


def test_dataset_cli_logs_progress_table_limit_and_plot_title(server, tiny_fashion, tmp_path):
    out = tmp_path / "certify.tsv"
    result = run_cli("certify_dataset_main", "--server", server.address, "--data-dir",
                     str(tiny_fashion), "--n0", "50", "--n", "1000", "--alpha", "0.01",
                     "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\r" not in result.stdout
    assert "certify linear: 6/6 images" in result.stderr.splitlines()
    assert len(out.read_text().splitlines()) == 7
    radius = certify(np.array([0, 1]), np.array([0, 1000]), GAUSSIAN, LINEAR_SIGMA, 0.01).radius
    note = f"the largest radius n=1,000 can certify at alpha=0.01 with sigma=0.25 is {radius:.3f}"
    table_end = max(i for i, line in enumerate(result.stdout.splitlines()) if line.startswith("|"))
    assert result.stdout.splitlines()[table_end + 1] == note
    from PIL import Image

    with Image.open(out.with_suffix(".png")) as png:
        title = png.info["Title"]
    assert title == "linear on fashion-mnist test (n = 1,000, alpha = 0.01, sigma = 0.25, 6 images)"
