"""The install boundaries: the client stands alone, serving never needs torch, and each of
the four distributions (server: root, client: clients/, harness: dev/, training: export/)
ships its own packages and no other's."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from test_linear_radius import point_at

from smoothcert.commands import VERIFY_EXTRA

ROOT = Path(__file__).resolve().parents[1]
# The folders of the four distributions, and the wheel each builds.
PROJECTS = {".": "smoothserve", "clients": "smoothserve_client", "dev": "smoothserve_dev",
            "export": "smoothserve_train"}  # fmt: skip


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
    harness = tomllib.loads((ROOT / "dev" / "pyproject.toml").read_text())["project"]
    assert "matplotlib" in {_name(d) for d in harness["dependencies"]}  # the test suite plots


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]


def test_serving_path_imports_no_torch() -> None:
    modules = imported_after(
        "import smoothserve.app, smoothserve.backends.onnxruntime, smoothserve.dataplane"
    )
    assert "torch" not in modules and "torchvision" not in modules


def _copy_of_the_checkout(target: Path) -> Path:
    """The four projects' files, without build outputs: setuptools never empties build/, so a
    wheel built in the checkout can carry modules that have since moved."""
    ignore = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "runs",
                                    "checkpoints")  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, target / name)
    for folder in ("server", "clients", "dev", "export"):
        shutil.copytree(ROOT / folder, target / folder, ignore=ignore)
    return target


class Wheel:
    def __init__(self, path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            self.names = archive.namelist()
            info = next(n.split("/")[0] for n in self.names if n.endswith(".dist-info/METADATA"))
            self.metadata = archive.read(f"{info}/METADATA").decode()
            points = f"{info}/entry_points.txt"
            self.entry_points = archive.read(points).decode() if points in self.names else ""
        self.top_level = {n.split("/")[0] for n in self.names if ".dist-info/" not in n}
        self.requires = [line.split(" ", 1)[1] for line in self.metadata.splitlines()
                         if line.startswith("Requires-Dist: ")]  # fmt: skip

    def core(self) -> list[str]:
        return sorted(r for r in self.requires if "extra ==" not in r)

    def extra(self, name: str) -> set[str]:
        return {_name(r) for r in self.requires if f'extra == "{name}"' in r}

    def scripts(self) -> dict[str, str]:
        section = self.entry_points.split("[console_scripts]\n", 1)[-1].split("\n[", 1)[0]
        pairs = (line.split("=", 1) for line in section.splitlines() if "=" in line)
        return {name.strip(): target.strip() for name, target in pairs}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Wheel]:
    """The four wheels, built (no dependencies, no isolation) from a copy of the checkout."""
    source = _copy_of_the_checkout(tmp_path_factory.mktemp("checkout"))
    out = tmp_path_factory.mktemp("wheels")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", *(str(source / folder) for folder in PROJECTS),
         "-w", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = {}
    for stem in PROJECTS.values():
        (path,) = out.glob(f"{stem}-*.whl")
        found[stem] = Wheel(path)
    return found


def _version(folder: str) -> str:
    return tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]["version"]


def test_client_wheel_declares_only_client_dependencies(wheels) -> None:
    wheel = wheels["smoothserve_client"]
    assert sorted(_name(r) for r in wheel.core()) == ["grpcio", "numpy", "protobuf"]
    extras = {extra: wheel.extra(extra) for extra in ("cli", "plot", "verify")}
    assert extras == {"cli": {"pillow", "tqdm"}, "plot": {"matplotlib"},
                      "verify": {"scipy", "cryptography"}}  # fmt: skip
    assert "smoothserve_client/api/v1/smoothserve_pb2.py" in wheel.names
    assert not any(n.startswith("smoothserve/") for n in wheel.names)


def test_client_wheel_carries_the_client_the_statistics_and_the_offline_tools(wheels) -> None:
    wheel = wheels["smoothserve_client"]
    assert wheel.top_level == {"smoothserve_client", "smoothcert"}
    for name in (
        "smoothcert/schema/model_config_pb2.py",
        "smoothcert/schema/model_config.proto",
        "smoothcert/families/gaussian.py",
        "smoothcert/procedures/anytime.py",
        "smoothcert/verify.py",
        "smoothcert/keytool.py",
        "smoothcert/commands.py",
    ):
        assert name in wheel.names, name
    assert wheel.scripts() == {
        "smoothserve-certify": "smoothserve_client.cli:certify_image_main",
        "smoothserve-certify-dataset": "smoothserve_client.cli:certify_dataset_main",
        "smoothserve-verify": "smoothcert.commands:verify",
        "smoothserve-key": "smoothcert.commands:key",
    }


def test_server_wheel_carries_the_server_alone_and_depends_on_the_client(wheels) -> None:
    wheel = wheels["smoothserve"]
    assert wheel.top_level == {"smoothserve"}
    assert "smoothserve/schema/request_envelope_pb2.py" in wheel.names
    assert wheel.scripts() == {"smoothserve": "smoothserve.app:main",
                               "smoothserve-tune-batch": "smoothserve.batch_tuning:main"}  # fmt: skip
    # The client of the same checkout, with the extra the statistics need (smoothcert).
    assert f"smoothserve-client[verify]=={_version('clients')}" in wheel.core()
    assert not {"torch", "matplotlib", "onnx"} & {_name(r) for r in wheel.core()}
    assert "train" not in re.findall(r"(?m)^Provides-Extra: (\S+)", wheel.metadata)


def test_harness_and_training_are_wheels_of_their_own(wheels) -> None:
    dev, train = wheels["smoothserve_dev"], wheels["smoothserve_train"]
    assert dev.top_level == {"smoothserve_dev"}
    assert "smoothserve_dev/twin_backend/model.py" in dev.names
    assert train.top_level == {"smoothtrain"}
    assert {"torch==2.13.0", "smoothserve", "smoothserve-dev"} <= set(train.core())
    assert {"onnx", "matplotlib"} <= {_name(r) for r in train.core()}
    assert "smoothserve" in dev.core()
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert root["optional-dependencies"]["torch"] == ["torch==2.13.0"]  # smoothserve-train's pin


def test_every_package_ships_in_exactly_one_wheel(wheels) -> None:
    packages = [
        path.parent.name
        for folder in ("server", "clients", "dev", "export")
        for path in (ROOT / folder).glob("*/__init__.py")
    ]
    shipped = [name for wheel in wheels.values() for name in wheel.top_level]
    assert sorted(shipped) == sorted(packages)


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


# The client with its verify extra, alone in a fresh virtual environment: no server, no
# onnxruntime, and a record saved from a live server verifies; without the extra the two tools
# say which extra to install.

# The options scripts/test.sh and scripts/demo.sh install with.
PIP_OPTIONS = ["--disable-pip-version-check", "--only-binary", ":all:",
               "-c", str(ROOT / "requirements" / "constraints.txt")]  # fmt: skip


def _fresh_venv(folder: Path, requirement: str) -> Path:
    """A new virtual environment with `requirement` pip-installed as scripts/test.sh would
    install it; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", *PIP_OPTIONS]
    done = subprocess.run([*pip, requirement], capture_output=True, text=True, timeout=300,
                          env=_clean_env())  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "bin"


def _clean_env() -> dict[str, str]:
    """This environment without the dev venv on any path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


@pytest.fixture(scope="module")
def client_source(tmp_path_factory) -> Path:
    return _copy_of_the_checkout(tmp_path_factory.mktemp("source")) / "clients"


def _run(bin_dir: Path, tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / tool), *args], cwd=cwd, env=_clean_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_client_with_the_verify_extra_verifies_a_record_without_the_server(
    client_source, server, client, tmp_path
) -> None:
    bin_dir = _fresh_venv(tmp_path / "venv", f"{client_source}[verify]")
    for module in ("onnxruntime", "smoothserve"):
        probe = _run(bin_dir, "python", "-c", f"import {module}", cwd=tmp_path)
        assert probe.returncode == 1, f"{module} is in the client's venv"
        assert f"No module named '{module}'" in probe.stderr
    key = _run(bin_dir, "smoothserve-key", "fetch", "--server", server.address, cwd=tmp_path)
    assert key.returncode == 0, key.stderr
    assert key.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "key.pub").write_text(key.stdout)
    client.predict("linear", point_at(0.5, 1), n0=100, n=1000).save_record(tmp_path / "record.json")
    done = _run(bin_dir, "smoothserve-verify", "record.json", "--public-key", "key.pub",
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "VALID"


def test_client_without_the_verify_extra_names_it_in_one_line(client_source, tmp_path) -> None:
    bin_dir = _fresh_venv(tmp_path / "venv", str(client_source))
    probe = _run(bin_dir, "python", "-c", "import scipy", cwd=tmp_path)
    assert probe.returncode == 1, "scipy is installed without the verify extra"
    for tool, args in (("smoothserve-verify", ["record.json", "--public-key", "key.pub"]),
                       ("smoothserve-key", ["generate", "signing.pem"])):  # fmt: skip
        done = _run(bin_dir, tool, *args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert re.fullmatch(rf"error: no module named '\w+'; {re.escape(VERIFY_EXTRA)}", line)
        assert VERIFY_EXTRA == "install the verify extra: pip install './clients[verify]'"
    assert not (tmp_path / "signing.pem").exists()
