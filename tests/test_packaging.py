"""The install boundaries: the client stands alone, and serving never needs torch."""

from __future__ import annotations

import ast
import os
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


# Development code the server package must never import: harnesses, tests, benchmarks.
DEV_MODULES = {"smoothserve_dev", "tests", "bench", "pytest", "conftest", "models"}
# Folders the checks below skip: environments, caches, build outputs.
SKIPPED_DIRS = {"build", "dist", "node_modules", "__pycache__"}


def _imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of every module a file imports, including import_module("...")."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in {"import_module", "__import__", "importorskip"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return {name.split(".")[0] for name in names}


def test_server_package_imports_no_development_code() -> None:
    sources = sorted((ROOT / "server" / "smoothserve").rglob("*.py"))
    assert any(p.name == "dataplane.py" for p in sources)
    offenders = {
        str(path.relative_to(ROOT)): sorted(found)
        for path in sources
        if (found := _imported_modules(ast.parse(path.read_text(), str(path))) & DEV_MODULES)
    }
    assert offenders == {}


def test_the_import_check_sees_every_form() -> None:
    code = (
        "import pytest\nfrom smoothserve_dev.testing import ServerProcess\n"
        "import importlib\nimportlib.import_module('bench.run_benchmark')\nfrom . import noise\n"
    )
    assert _imported_modules(ast.parse(code)) & DEV_MODULES == {
        "pytest",
        "smoothserve_dev",
        "bench",
    }


def _python_files() -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [
            d for d in dirs
            if not (d.startswith(".") or d in SKIPPED_DIRS or d.endswith(".egg-info"))
        ]  # fmt: skip
        files += [Path(folder) / name for name in names if name.endswith(".py")]
    return files


def _edits_import_path(tree: ast.AST) -> bool:
    """True where code touches sys's path list: a method call on it, an assignment or
    augmented assignment to it or to an item or slice of it."""

    def is_path(node: ast.AST) -> bool:
        if isinstance(node, ast.Subscript):
            node = node.value
        return (
            isinstance(node, ast.Attribute)
            and node.attr == "path"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if is_path(node.func.value):
                return True
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(is_path(t) for t in targets):
                return True
    return False


def test_no_python_file_edits_the_import_path() -> None:
    files = _python_files()
    assert {"conftest.py", "run_benchmark.py", "soak.py", "train_and_export.py"} <= {
        p.name for p in files
    }
    offenders = [
        str(p.relative_to(ROOT)) for p in files if _edits_import_path(ast.parse(p.read_text()))
    ]
    assert offenders == []


def test_the_import_path_check_sees_every_form() -> None:
    target = "sys." + "path"  # spelt apart so that a grep of the repository stays empty
    for line in (f"{target}.insert(0, 'x')", f"{target}.append('x')",
                 f"{target}[:0] = ['x']", f"{target} += ['x']"):  # fmt: skip
        assert _edits_import_path(ast.parse(f"import sys\n{line}\n")), line
    assert not _edits_import_path(ast.parse(f"import sys\nprint({target})\n"))
