"""The install boundaries: the client stands alone, and serving never needs torch."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_client_imports_no_server_dependency() -> None:
    modules = imported_after(
        "import smoothserve_client, smoothserve_client.cli, smoothserve_client.dataset"
    )
    assert not {"smoothserve", "onnxruntime", "scipy", "torch", "prometheus_client"} & modules


def test_client_imports_matplotlib_only_to_plot() -> None:
    modules = imported_after(
        "import smoothserve_client.cli, smoothserve_client.dataset, smoothserve_client.results"
    )
    assert "matplotlib" not in modules


def test_serving_install_has_no_matplotlib_and_the_plot_extra_has_it() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not any(_name(d) == "matplotlib" for d in project["dependencies"])
    assert [_name(d) for d in extras["plot"]] == ["matplotlib"]
    assert "matplotlib" in {_name(d) for d in extras["dev"]}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def test_serving_path_imports_no_torch() -> None:
    modules = imported_after(
        "import smoothserve.app, smoothserve.backends.onnxruntime, smoothserve.dataplane"
    )
    assert "torch" not in modules and "torchvision" not in modules


def test_client_wheel_declares_only_client_dependencies(tmp_path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(ROOT / "clients"), "-w", str(tmp_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("smoothserve_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist")]
    core = [r for r in requires if "extra ==" not in r]
    assert sorted(r.split()[1].split(">")[0].split("<")[0] for r in core) == ["grpcio", "numpy", "protobuf"]
    extras = {
        extra: {_name(r.split()[1]) for r in requires if f'extra == "{extra}"' in r}
        for extra in ("cli", "plot")
    }
    assert extras == {"cli": {"pillow", "tqdm"}, "plot": {"matplotlib"}}
    assert "smoothserve_client/api/v1/smoothserve_pb2.py" in names
    assert not any(n.startswith("smoothserve/") for n in names)
