"""Signed certificate records and the seed policy, against a live server: sign, save, verify
offline with ``smoothserve-verify``, and fail verification for any change."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
from conftest import LINEAR_SHAPE
from servers import metric
from test_linear_radius import point_at
from test_newcomer import write_idx_dataset

from smoothcert.families import FAMILIES
from smoothcert.keytool import main as key_main
from smoothcert.procedures.target_radius import exact_counts
from smoothcert.verify import INVALID, REPLAY, USAGE, VALID, recompute
from smoothcert.verify import main as verify_main
from smoothserve.records import RECORD_FORMAT, canonical_json
from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_client.types import read_signed_record, signed_record_json
from smoothserve_dev.testing import ServerProcess

X = point_at(0.5, 1)
REQUESTS = {
    "fixed_n": {},
    "target_radius": {"procedure": "target_radius", "target_radius": 0.25},
    "anytime": {"procedure": "anytime", "tolerance": 0.01},
    "predict": {"mode": "predict"},
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    assert key_main(["generate", str(folder / "signing.pem")]) == 0
    assert key_main(["generate", str(folder / "other.pem")]) == 0
    return folder


@pytest.fixture(scope="module")
def signing_server(linear_repo, keys):
    args = ["--signing-key", str(keys / "signing.pem"), "--allow-client-seeds", "false"]
    with ServerProcess(linear_repo, args) as server:
        yield server


@pytest.fixture(scope="module")
def signing_client(signing_server):
    with SmoothServeClient(signing_server.address, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def saved(signing_client, linear_repo, keys, tmp_path_factory):
    """One saved record per kind of request, with the input and the trusted key beside it."""
    folder = tmp_path_factory.mktemp("records")
    np.save(folder / "x.npy", X)
    for name, options in REQUESTS.items():
        signing_client.predict("linear", X, n0=100, n=10_000, **options).save_record(
            folder / f"{name}.json"
        )
    return folder


def verify(record, keys, *extra: str, key: str = "signing.pem.pub") -> int:
    return verify_main([str(record), "--public-key", str(keys / key), *extra])


@pytest.mark.parametrize("kind", REQUESTS)
def test_a_saved_record_verifies_offline(kind, saved, keys, linear_repo, capsys):
    model = linear_repo / "linear" / "1" / "model.onnx"
    code = verify(saved / f"{kind}.json", keys, "--model", str(model),
                  "--input", str(saved / "x.npy"))  # fmt: skip
    out = capsys.readouterr().out
    assert code == VALID, out
    assert out.count("ok ") == 4 and out.rstrip().endswith("VALID")


def test_the_record_holds_what_the_issue_lists(saved, keys):
    record_bytes, _ = read_signed_record((saved / "fixed_n.json").read_text())
    record = json.loads(record_bytes)
    assert record_bytes == canonical_json(record)  # canonical: re-encoding gives the same bytes
    assert record["format"] == RECORD_FORMAT
    assert record["input"]["dtype"] == "float32" and record["input"]["shape"] == list(LINEAR_SHAPE)
    assert set(record["model"]) == {"name", "version", "sha256"}
    assert sum(record["counts"]) == record["n"] == 10_000
    assert sum(record["selection_counts"]) == record["n0"] == 100
    assert record["seed"] == {"client_chosen": False, "value": None, "generator": "ars5"}
    assert record["server"]["time"].endswith("Z") and record["server"]["version"]
    assert record["sigma"] == 0.25 and record["alpha"] == 0.001


def tampered(path, out, change) -> None:
    """A copy of a saved record with ``change`` applied to its record (signature kept)."""
    record_bytes, signature = read_signed_record(path.read_text())
    record = json.loads(record_bytes)
    change(record)
    out.write_text(signed_record_json(canonical_json(record), signature))


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["counts"].__setitem__(1, r["counts"][1] + 1),
        lambda r: r.__setitem__("sigma", 0.5),
        lambda r: r["model"].__setitem__("sha256", "0" * 64),
        lambda r: r["input"].__setitem__("sha256", "0" * 64),
        lambda r: r.__setitem__("radius", r["radius"] * 1.01),
    ],
    ids=["count", "sigma", "model hash", "input hash", "radius"],
)
def test_any_change_to_a_record_fails_verification(change, saved, keys, tmp_path, capsys):
    tampered(saved / "fixed_n.json", tmp_path / "bad.json", change)
    assert verify(tmp_path / "bad.json", keys) == INVALID
    assert "FAILED  signature" in capsys.readouterr().out


def test_a_changed_signature_fails(saved, keys, tmp_path):
    envelope = json.loads((saved / "fixed_n.json").read_text())
    signature = bytearray(base64.b64decode(envelope["signature"]))
    signature[0] ^= 1
    envelope["signature"] = base64.b64encode(bytes(signature)).decode()
    (tmp_path / "bad.json").write_text(json.dumps(envelope))
    assert verify(tmp_path / "bad.json", keys) == INVALID


def test_an_untrusted_key_fails(saved, keys, capsys):
    assert verify(saved / "fixed_n.json", keys, key="other.pem.pub") == INVALID
    assert "not among the trusted keys" in capsys.readouterr().out


def test_a_different_model_or_input_fails(saved, keys, tmp_path, capsys):
    (tmp_path / "model.onnx").write_bytes(b"another network")
    np.save(tmp_path / "y.npy", point_at(0.35, 1))
    assert verify(saved / "fixed_n.json", keys, "--model", str(tmp_path / "model.onnx")) == INVALID
    assert verify(saved / "fixed_n.json", keys, "--input", str(tmp_path / "y.npy")) == INVALID
    out = capsys.readouterr().out
    assert "FAILED  model file" in out and "FAILED  input" in out


@pytest.mark.parametrize("kind", REQUESTS)
def test_the_statistics_check_alone_catches_changed_counts_and_sigma(kind, saved):
    """Without the signature: the answer recomputed from the counts disagrees with the record
    when a count or sigma changes (a server bug, or a record signed with a stolen key)."""
    record = json.loads(read_signed_record((saved / f"{kind}.json").read_text())[0])
    assert recompute(record) == []
    moved = {**record, "counts": record["counts"][::-1]}  # the votes of the two classes swapped
    assert recompute(moved), kind
    shift = 1  # one vote moves p_a_lower; PREDICT's p-value is ~1e-300 either way
    if kind == "target_radius":  # a certificate at the target holds until the look's count
        plan = (tuple(record["look_schedule"]), record["target_radius"], FAMILIES["gaussian"],
                record["sigma"], record["alpha"])  # fmt: skip
        assert record["candidate"] == 1  # X lies on the positive side
        shift = record["counts"][1] - exact_counts(*plan)[record["looks"] - 1] + 1
    nudged = {**record, "counts": [record["counts"][0] + shift, record["counts"][1] - shift]}
    if kind != "predict":
        assert recompute(nudged), kind
    if kind != "predict":
        wider = {**record, "sigma": record["sigma"] * 2}
        assert recompute(wider), kind
    short = {**record, "n": record["n"] + 1}
    assert recompute(short)


def test_an_unknown_format_is_a_problem_not_a_crash(saved):
    record = json.loads(read_signed_record((saved / "target_radius.json").read_text())[0])
    for form in ("smoothserve.certificate.v5", ["smoothserve.certificate.v4"], None, 4):
        problems = recompute({**record, "format": form})
        assert len(problems) == 1 and "expected smoothserve.certificate.v4" in problems[0], form


def test_a_malformed_file_is_a_usage_error(keys, tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    assert verify(tmp_path / "x.json", keys) == USAGE


def test_the_served_public_key_matches_the_configured_one(signing_client, keys, capsys):
    served = signing_client.signing_key()
    assert served.algorithm == "Ed25519" and served.persistent
    assert served.public_key_pem == (keys / "signing.pem.pub").read_text()
    assert key_main(["public", str(keys / "signing.pem")]) == 0
    assert capsys.readouterr().out == served.public_key_pem


def test_key_fetch_command_prints_the_served_key(signing_server, keys, capsys):
    assert key_main(["fetch", "--server", signing_server.address]) == 0
    assert capsys.readouterr().out == (keys / "signing.pem.pub").read_text()


def test_generate_never_overwrites(keys):
    before = (keys / "signing.pem").read_bytes()
    assert key_main(["generate", str(keys / "signing.pem")]) == 1
    assert (keys / "signing.pem").read_bytes() == before
    assert (keys / "signing.pem").stat().st_mode & 0o077 == 0  # private to its owner


# --- the seed policy ------------------------------------------------------------------------


def test_client_seeds_are_refused_by_default(signing_client, signing_server):
    before = metric(signing_server.metrics_url, "smoothserve_seeded_requests_total",
                    accepted="false")  # fmt: skip
    with pytest.raises(SmoothServeError) as refused:
        signing_client.predict("linear", X, n0=100, n=1000, seed=7)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--allow-client-seeds" in refused.value.details
    after = metric(signing_server.metrics_url, "smoothserve_seeded_requests_total",
                   accepted="false")  # fmt: skip
    assert after == before + 1


def test_an_allowed_seed_gives_a_record_verified_as_a_replay(linear_repo, keys, tmp_path, capsys):
    args = ["--signing-key", str(keys / "signing.pem"), "--allow-client-seeds", "true"]
    with ServerProcess(linear_repo, args) as server, SmoothServeClient(server.address) as client:
        first = client.predict("linear", X, n0=100, n=2000, seed=11)
        again = client.predict("linear", X, n0=100, n=2000, seed=11)
        accepted = metric(server.metrics_url, "smoothserve_seeded_requests_total", accepted="true")
    assert accepted == 2
    assert first.counts == again.counts  # reproducible: what an audit needs
    first.save_record(tmp_path / "seeded.json")
    assert verify(tmp_path / "seeded.json", keys) == REPLAY
    assert "VALID REPLAY" in capsys.readouterr().out


def test_without_a_configured_key_records_verify_with_the_served_key(linear_repo, tmp_path):
    with ServerProcess(linear_repo) as server, SmoothServeClient(server.address) as client:
        served = client.signing_key()
        client.predict("linear", X, n0=100, n=1000).save_record(tmp_path / "r.json")
        log = server.log()
    assert not served.persistent and served.key_id in log  # the warning names the key
    (tmp_path / "k.pub").write_text(served.public_key_pem)
    code = verify_main([str(tmp_path / "r.json"), "--public-key", str(tmp_path / "k.pub")])
    assert code == VALID


def test_a_bad_signing_key_stops_the_server_with_one_line(linear_repo, tmp_path):
    (tmp_path / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
    (tmp_path / "bad.pem").chmod(0o600)  # refused for its content, not its permissions
    with pytest.raises(RuntimeError) as failed:
        ServerProcess(linear_repo, ["--signing-key", str(tmp_path / "bad.pem")]).start()
    assert "signing key" in str(failed.value) and "Traceback" not in str(failed.value)
    assert "chmod" not in str(failed.value)


def test_the_console_scripts_run(saved, keys):
    command = [sys.executable, "-m", "smoothcert.verify", str(saved / "target_radius.json"),
               "--public-key", str(keys / "signing.pem.pub")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == VALID, done.stdout + done.stderr


def test_certify_cli_saves_a_record(signing_server, keys, tmp_path):
    from smoothserve_client.cli import certify_image_main

    np.save(tmp_path / "x.npy", X)
    code = certify_image_main([str(tmp_path / "x.npy"), "--server", signing_server.address,
                               "--model", "linear", "--n", "2000",
                               "--save-record", str(tmp_path / "x.json")])  # fmt: skip
    assert code == 0
    assert verify(tmp_path / "x.json", keys, "--input", str(tmp_path / "x.npy")) == VALID


def test_the_dataset_cli_saves_a_record_per_image(signing_server, keys, tmp_path):
    from smoothserve_client.cli import certify_dataset_main

    images = np.random.default_rng(3).integers(0, 256, (3, *LINEAR_SHAPE[1:]), dtype=np.uint8)
    data = write_idx_dataset(tmp_path / "fashion", images, np.arange(3) % 2)
    code = certify_dataset_main(["--server", signing_server.address, "--data-dir", str(data),
                                 "--n", "1000", "--out", str(tmp_path / "c.tsv"), "--no-plot",
                                 "--records-dir", str(tmp_path / "records")])  # fmt: skip
    assert code == 0
    saved = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert saved == ["0.json", "1.json", "2.json"]
    for name in saved:
        assert verify(tmp_path / "records" / name, keys) == VALID
