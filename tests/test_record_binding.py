"""What a signed record binds (issue 20, item 11): the smoothing config of the model (sigma,
labels, value range, ...) and the full look plan of the sequential procedures, so that a
record re-signed with the server's own key after a consistent rewrite of sigma, labels or the
look plan fails ``smoothserve-verify`` (with ``--model`` where only the model can tell).

The server runs with a known key file, so the tests can play the holder of the key: every
tampered record below is re-signed and internally consistent under the checks of format v1."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from conftest import LINEAR_SHAPE, LINEAR_SIGMA
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_linear_radius import point_at

from smoothcert import procedures
from smoothcert.families import FAMILIES
from smoothcert.model_config import SmoothModelConfig
from smoothcert.procedures.fixed_n import certify
from smoothcert.procedures.target_radius import target_schedule
from smoothcert.verify import INVALID, VALID
from smoothcert.verify import main as verify_main
from smoothserve.records import (
    canonical_json,
    load_private_key,
    private_key_pem,
    public_key_pem,
)
from smoothserve_client import SmoothServeClient
from smoothserve_client.types import read_signed_record, signed_record_json
from smoothserve_dev.testing import ServerProcess

GAUSSIAN = FAMILIES["gaussian"]
X = point_at(0.5, 1)  # radius 0.5 from the boundary: every procedure certifies class 1
FIRST_LOOK = 32  # not the default (64): the record must carry the server's configured value
REQUESTS = {
    "fixed_n": {},
    "target_radius": {"procedure": "target_radius", "target_radius": 0.25},
    "anytime": {"procedure": "anytime", "tolerance": 0.01},
    "predict": {"mode": "predict"},
    "sound_noise": {"sound_noise": True},  # on the 8-bit lattice: sent as uint8 pixels
}


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    """The server's signing key, in a file only its owner can read, and its public key."""
    folder = tmp_path_factory.mktemp("binding-keys")
    private = Ed25519PrivateKey.generate()
    descriptor = os.open(folder / "signing.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private_key_pem(private))
    (folder / "signing.pub").write_text(public_key_pem(private.public_key()))
    return folder


@pytest.fixture(scope="module")
def saved(linear_repo, key, tmp_path_factory):
    """One honest record per kind of request, saved as a client saves it."""
    folder = tmp_path_factory.mktemp("binding-records")
    args = ["--signing-key", str(key / "signing.pem"), "--first-look", str(FIRST_LOOK)]
    with ServerProcess(linear_repo, args) as server, SmoothServeClient(server.address) as client:
        for name, options in REQUESTS.items():
            x = np.rint(X * 255).astype(np.uint8) if options.get("sound_noise") else X
            np.save(folder / f"{name}.npy", x)
            n0 = None if options.get("mode") == "predict" else 100  # PREDICT draws no n0
            result = client.predict("linear", x, n0=n0, n=10_000, **options)
            result.save_record(folder / f"{name}.json")
    return folder


def verify(path, key, *extra) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = verify_main([str(path), "--public-key", str(key / "signing.pub"), *map(str, extra)])
    return code, out.getvalue()


def load(path) -> dict:
    return json.loads(read_signed_record(path.read_text())[0])


def resign(record: dict, key, out):
    """``record`` signed with the server's own key, saved to ``out``: what the key's holder (or
    a thief of the key) can make."""
    private = load_private_key((key / "signing.pem").read_bytes())
    data = canonical_json(record)
    out.write_text(signed_record_json(data, private.sign(data)))
    return out


def rehash_config(record: dict) -> None:
    """Keep a rewritten record's config hash consistent with its config, where it has one."""
    if "config_sha256" in record:
        record["config_sha256"] = hashlib.sha256(canonical_json(record["config"])).hexdigest()


def model_forms(repo):
    """The ways ``--model`` names the served model: the file, its folder, its repository."""
    return [repo / "linear" / "1" / "model.onnx", repo / "linear", repo]


# --- (a) sigma and radius doubled --------------------------------------------------------------


def doubled_sigma(record: dict) -> dict:
    """sigma doubled everywhere the record holds it, and the radius with it: the answer still
    follows from the counts (radius = sigma * Phi^-1(p_A_lower))."""
    record = json.loads(json.dumps(record))
    record["sigma"] *= 2
    record["radius"] *= 2
    if "config" in record:
        record["config"]["sigma"] *= 2
    rehash_config(record)
    return record


def test_doubled_sigma_and_radius_resigned_fail_with_the_model(saved, key, linear_repo, tmp_path):
    honest = load(saved / "fixed_n.json")
    forged = doubled_sigma(honest)
    # Consistent as far as the counts go: CERTIFY at the doubled sigma gives the doubled radius.
    again = certify(
        np.array(forged["selection_counts"]), np.array(forged["counts"]), GAUSSIAN,
        forged["sigma"], forged["alpha"],
    )  # fmt: skip
    assert again.radius == forged["radius"] == 2 * honest["radius"] > 0
    path = resign(forged, key, tmp_path / "doubled.json")
    for model in model_forms(linear_repo):
        code, out = verify(path, key, "--model", model)
        assert code == INVALID, out
        assert "FAILED  model file" in out and "sigma 0.5 in the record, 0.25 in" in out, out
        assert "ok      signature" in out  # the key's holder signed it: only the model tells


def test_sigma_rewritten_only_where_it_shows_fails_without_the_model(saved, key, tmp_path):
    """sigma and radius doubled, the rest left as the server signed it: the record's own config
    gives it away, no model needed."""
    forged = json.loads(json.dumps(load(saved / "fixed_n.json")))
    forged["sigma"] *= 2
    forged["radius"] *= 2
    code, out = verify(resign(forged, key, tmp_path / "half.json"), key)
    assert code == INVALID, out
    assert "sigma 0.5 differs from the config's 0.25" in out


# --- (b) the look plan rewritten ---------------------------------------------------------------


def one_look_at_half_alpha(record: dict) -> dict:
    """The sequential record rewritten to claim its n samples were the first of two looks at
    alpha / 2 (the schedule [n, 2n] for the target-radius test), or, for anytime, a single
    look at n (the whole of alpha), with the bound, radius and answer recomputed for that
    claim."""
    forged = json.loads(json.dumps(record))
    n, sigma, alpha = record["n"], record["sigma"], record["alpha"]
    procedure = procedures.get(record["procedure"])
    if record["procedure"] == "target_radius":
        schedule = [n, 2 * n]
        plan = procedures.Plan(alpha, GAUSSIAN, sigma, cap=2 * n, first_look=n,
                               target_radius=record["target_radius"])  # fmt: skip
    else:
        schedule = [n]
        plan = procedures.Plan(alpha, GAUSSIAN, sigma, cap=n, first_look=n,
                               tolerance=record["tolerance"])  # fmt: skip
    answer = procedure.look(plan, tuple(schedule), 1, np.array(record["selection_counts"]),
                            np.array(record["counts"]))  # fmt: skip
    claimed = alpha / 2 if record["procedure"] == "target_radius" else alpha
    assert answer.bound_alpha == claimed and not answer.abstain
    assert answer.prediction == answer.candidate == record["candidate"]
    forged.update(
        look_schedule=schedule, looks=1, bound_alpha=answer.bound_alpha,
        p_a_lower=answer.p_a_lower, radius=answer.radius, prediction=answer.prediction,
        abstain=False,
    )  # fmt: skip
    return forged


@pytest.mark.parametrize("kind", ["target_radius", "anytime"])
def test_a_plan_rewritten_to_one_look_at_half_alpha_fails(kind, saved, key, linear_repo, tmp_path):
    honest = load(saved / f"{kind}.json")
    assert honest["looks"] > 1 or len(honest["look_schedule"]) > 1  # a plan to rewrite
    forged = one_look_at_half_alpha(honest)
    assert forged["radius"] > honest["radius"]  # what the rewrite gains
    path = resign(forged, key, tmp_path / "plan.json")
    for extra in ([], ["--model", linear_repo / "linear"]):
        code, out = verify(path, key, *extra)
        assert code == INVALID, out
        assert "does not follow from the plan" in out, out


def test_the_plan_is_the_servers(saved):
    """The record names the server's first look and the request's cap, and the schedule is what
    the server's functions give for them."""
    target, anytime = load(saved / "target_radius.json"), load(saved / "anytime.json")
    selection = {"first": 8, "cap": 100, "level": 0.01}  # the request's n0 is the cap
    assert target["plan"] == {"first_look": FIRST_LOOK, "cap": 10_000, "selection": selection}
    assert anytime["plan"] == {"first_look": FIRST_LOOK, "cap": 10_000, "selection": selection,
                               "horizon": 0, "timed": False}  # fmt: skip
    assert target["look_schedule"] == list(
        target_schedule(FIRST_LOOK, 10_000, 0.25, GAUSSIAN, LINEAR_SIGMA, target["alpha"])
    )
    assert anytime["look_schedule"] == list(procedures.look_schedule(FIRST_LOOK, 10_000))
    for kind in ("fixed_n", "predict"):
        assert load(saved / f"{kind}.json")["plan"] == {"first_look": 0, "cap": 10_000}


# --- (c) honest records ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", REQUESTS)
def test_an_honest_record_verifies_with_and_without_the_model(kind, saved, key, linear_repo):
    record = load(saved / f"{kind}.json")
    assert record["format"] == "smoothserve.certificate.v4"
    assert record["config"] == {
        "noise_family": "gaussian",
        "sigma": LINEAR_SIGMA, "labels": ["negative", "positive"], "value_range": [0.0, 1.0],
        "input_shape": list(LINEAR_SHAPE), "input_data_type": "TYPE_FP32", "sound_noise": False,
    }  # fmt: skip
    assert record["sound_noise"] == (kind == "sound_noise")
    code, out = verify(saved / f"{kind}.json", key)
    assert code == VALID, out
    for model in model_forms(linear_repo):
        code, out = verify(saved / f"{kind}.json", key, "--model", model,
                           "--input", saved / f"{kind}.npy")  # fmt: skip
        assert code == VALID, out
        assert out.count("\nok ") == 4 and "FAILED" not in out, out


# --- (d) labels or value range other than the model's -------------------------------------------


@pytest.mark.parametrize(
    "change", [{"labels": ("positive", "negative")}, {"value_range": (0.0, 2.0)}],
    ids=["labels", "value_range"],
)  # fmt: skip
def test_a_model_whose_config_differs_fails(change, saved, key, linear_repo, tmp_path):
    """The same network file under a config with other labels or another value range: the
    file's hash matches, the config does not."""
    copy = tmp_path / "repo" / "linear"
    shutil.copytree(linear_repo / "linear", copy)
    config = SmoothModelConfig.from_pbtxt((copy / "config.pbtxt").read_text())
    dataclasses.replace(config, **change).write(copy)
    (field,) = change
    for model in (copy / "1" / "model.onnx", copy):
        code, out = verify(saved / "fixed_n.json", key, "--model", model)
        assert code == INVALID, out
        assert f"FAILED  model file {copy / '1' / 'model.onnx'}" in out
        assert f"\n          {field} " in out, out


def test_relabelled_record_resigned_fails_with_the_model(saved, key, linear_repo, tmp_path):
    """The record's answer renamed (and its labels with it, hash and all), re-signed."""
    forged = json.loads(json.dumps(load(saved / "fixed_n.json")))
    assert forged["label"] == "positive"
    forged["label"] = "cat"
    if "config" in forged:
        forged["config"]["labels"] = ["dog", "cat"]
    rehash_config(forged)
    path = resign(forged, key, tmp_path / "relabelled.json")
    code, out = verify(path, key, "--model", linear_repo / "linear" / "1" / "model.onnx")
    assert code == INVALID, out
    assert "labels ['dog', 'cat'] in the record, ['negative', 'positive'] in" in out, out


def test_a_missing_config_fails_with_the_model(saved, key, linear_repo, tmp_path):
    """The network file alone cannot vouch for sigma: --model needs the config beside it."""
    shutil.copy(linear_repo / "linear" / "1" / "model.onnx", tmp_path / "model.onnx")
    code, out = verify(saved / "fixed_n.json", key, "--model", tmp_path / "model.onnx")
    assert code == INVALID and "config.pbtxt" in out, out


# --- older records -----------------------------------------------------------------------------


def as_v1(record: dict) -> dict:
    """A record in format v1, which had no config, config hash or plan."""
    old = {k: v for k, v in record.items() if k not in ("config", "config_sha256", "plan")}
    return {**old, "format": "smoothserve.certificate.v1"}


def test_a_v1_record_is_refused_unless_allowed(saved, key, linear_repo, tmp_path):
    # fixed_n: its rule is the same in every format (a v3 sequential record relabelled v1
    # would be checked under the rules v1 servers followed, which v3 changed)
    path = resign(as_v1(load(saved / "fixed_n.json")), key, tmp_path / "v1.json")
    code, out = verify(path, key)
    assert code == INVALID and "--allow-format-v1" in out, out
    code, out = verify(path, key, "--allow-format-v1", "--model", linear_repo / "linear")
    assert code == VALID, out
    doubled = as_v1(doubled_sigma(load(saved / "fixed_n.json")))
    path = resign(doubled, key, tmp_path / "v1-doubled.json")
    code, out = verify(path, key, "--allow-format-v1", "--model", linear_repo / "linear")
    assert code == INVALID and "sigma 0.5 in the record, 0.25 in" in out, out
