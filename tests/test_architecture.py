"""The architecture's promises that a reader relies on: the request's names and dtype tables
exist once, procedures and noise families come from their registries, and transports do not
import each other."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from smoothcert import families, procedures
from smoothcert.records import INPUT_DTYPES
from smoothserve import request
from smoothserve.transport import oip, servicer
from smoothserve_client import cli, types

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for base in ("server", "clients") for p in (ROOT / base).rglob("*.py")
           if "_pb2" not in p.name]  # fmt: skip


def test_every_door_uses_the_one_table_of_each_kind() -> None:
    assert request.DTYPES is INPUT_DTYPES
    assert oip.DATATYPES is request.OIP_DATATYPES
    assert set(request.OIP_DATATYPES.values()) == set(INPUT_DTYPES)
    assert set(types.DTYPES) == set(INPUT_DTYPES)  # the native API's enum, by the same names
    assert servicer.DTYPE_NAMES is types.DTYPE_NAMES
    assert request.PROCEDURES == procedures.CERTIFY_PROCEDURES
    assert tuple(types.PROCEDURES) == procedures.CERTIFY_PROCEDURES
    parser = argparse.ArgumentParser()
    cli._common(parser)
    choices = {action.dest: action.choices for action in parser._actions}
    assert tuple(choices["procedure"]) == procedures.CERTIFY_PROCEDURES


def test_no_module_writes_a_dtype_or_procedure_table_again() -> None:
    """A literal table of dtype or procedure names outside the modules that own them is a copy
    that can drift."""
    owners = {"request.py", "records.py", "types.py"}
    pattern = re.compile(
        r'"(?:float32|uint8)"\s*:\s*np\.dtype'  # the input dtypes
        r'|"(?:UINT8|FP32)"\s*:\s*"(?:uint8|float32)"'  # OIP's names for them
        r'|"(?:float32|uint8)"\s*:\s*pb\.DTYPE'  # the native API's
        r'|\(\s*"fixed_n",\s*"target_radius"'  # the procedures
    )
    copies = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES if p.name not in owners
              for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]  # fmt: skip
    assert copies == []


# Modules of the procedures folder that are stages every procedure may use, not entries.
SHARED = {"__init__", "base", "selection"}


def test_registries_hold_one_module_per_entry() -> None:
    folder = ROOT / "clients" / "smoothcert"
    family_modules = {p.stem for p in (folder / "families").glob("*.py")} - {"__init__", "base"}
    assert family_modules == set(families.FAMILIES)
    procedure_modules = {p.stem for p in (folder / "procedures").glob("*.py")} - SHARED
    assert procedure_modules == set(procedures.PROCEDURES)
    for entry in procedures.PROCEDURES.values():
        assert "Guarantee" in (type(entry).look.__doc__ or "") + (_module_doc(entry) or ""), entry


def _module_doc(entry) -> str:
    import importlib

    module = importlib.import_module(type(entry).__module__)
    return "".join(
        (f.__doc__ or "") for f in vars(module).values() if callable(f) and f.__module__ == module.__name__
    )


def test_transports_do_not_import_each_other() -> None:
    folder = ROOT / "server" / "smoothserve" / "transport"
    doors = {"servicer", "oip_grpc", "oip_rest"}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not (imported & doors - {path.stem}), (path.name, imported & doors)


def test_the_statistics_know_nothing_of_the_server() -> None:
    for path in (ROOT / "clients" / "smoothcert").rglob("*.py"):
        text = path.read_text()
        assert "import smoothserve\n" not in text and "from smoothserve." not in text, path
        assert "from smoothserve import" not in text, path
