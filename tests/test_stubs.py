"""The committed protobuf stubs are what scripts/gen_proto.sh makes from the .proto files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = [
    ("clients", "smoothserve_client/api/v1/smoothserve.proto", True),
    ("clients", "smoothcert/schema/model_config.proto", False),
    ("server", "smoothserve/schema/request_envelope.proto", False),
]


@pytest.mark.parametrize("root, proto, grpc_stubs", STUBS, ids=[p for _, p, _ in STUBS])
def test_committed_stubs_equal_regenerated(tmp_path, root, proto, grpc_stubs):
    pytest.importorskip("grpc_tools")
    source = tmp_path / root
    (source / proto).parent.mkdir(parents=True)
    shutil.copy(ROOT / root / proto, source / proto)
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{source}", f"--python_out={out}",
               f"--pyi_out={out}", str(source / proto)]  # fmt: skip
    if grpc_stubs:
        command.insert(-1, f"--grpc_python_out={out}")
    subprocess.run(command, check=True)
    stem = proto.removesuffix(".proto")
    suffixes = ["_pb2.py", "_pb2.pyi"] + (["_pb2_grpc.py"] if grpc_stubs else [])
    for suffix in suffixes:
        committed = (ROOT / root / (stem + suffix)).read_text()
        regenerated = (out / (stem + suffix)).read_text()
        assert committed == regenerated, f"{stem}{suffix} is stale: run scripts/gen_proto.sh"
