"""Issue 24: model control as Triton does it (--model-control-mode none|poll|explicit), the
model repository extension on both doors (index, load, unload) with the ecosystem's own
clients (tritonclient.grpc and tritonclient.http), and the config's version_policy. A request
in flight on a model that is unloaded finishes on it with its certificate."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from conftest import LINEAR_SHAPE, LINEAR_SIGMA, linear_weights
from test_linear_radius import point_at
from tritonclient.utils import InferenceServerException

from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess

X = point_at(0.5, 1)
FAST = ["--batch-size", "1024", "--http-port", "0"]  # no batch measurement at each load
POLL = ["--model-control-mode", "poll", "--repository-poll-secs", "1"]
POLICIES = {  # model name -> the version_policy its config adds (none: Triton's default)
    "default": "",
    "latest2": "version_policy { latest { num_versions: 2 } }",
    "every": "version_policy { all {} }",
    "chosen": "version_policy { specific { versions: [1, 3] } }",
}
SERVED = {"default": ["3"], "latest2": ["2", "3"], "every": ["1", "2", "3"], "chosen": ["1", "3"]}


def write_model(repo: Path, name: str, policy: str = "", versions: tuple[str, ...] = ("1",)) -> Path:
    w, b = linear_weights()
    model_dir = write_linear_model(repo, name, w, b, LINEAR_SIGMA, LINEAR_SHAPE)
    for version in versions:
        if version != "1":
            (model_dir / version).mkdir()
            shutil.copy(model_dir / "1" / "model.onnx", model_dir / version / "model.onnx")
    if "1" not in versions:
        shutil.rmtree(model_dir / "1")
    if policy:
        config = model_dir / "config.pbtxt"
        config.write_text(config.read_text() + policy + "\n")
    return model_dir


def copy_in(source: Path, repo: Path) -> None:
    """A model folder into the repository in one step (a rename), as an operator should."""
    staged = repo.parent / f".{source.name}.staged"
    shutil.copytree(source, staged)
    staged.rename(repo / source.name)


def grpc_client(server) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(server.address)


def http_client(server) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")


def index(server) -> dict[tuple[str, str], tuple[str, str]]:
    """(name, version) -> (state, reason), from the REST index; the gRPC one, read between two
    REST reads that agree (a model mid-transition may change state in between), must agree."""

    def over_http():
        return {(m["name"], m.get("version", "")): (m["state"], m.get("reason", ""))
                for m in http_client(server).get_model_repository_index()}  # fmt: skip

    for _ in range(20):
        before = over_http()
        over_grpc = {(m.name, m.version): (m.state, m.reason)
                     for m in grpc_client(server).get_model_repository_index().models}  # fmt: skip
        if over_http() == before:
            break
    assert before == over_grpc
    return before


def infer(server, name: str, version: str = "", **parameters):
    tensor = triton_grpc.InferInput("input", [1, *X.shape], "FP32")
    tensor.set_data_from_numpy(X[None])
    return grpc_client(server).infer(name, [tensor], model_version=version,
                                     parameters={"n0": 50, "n": 500, **parameters})  # fmt: skip


def wait_for(condition, seconds: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.1)


# -- explicit mode ---------------------------------------------------------------------------


def test_explicit_mode_loads_and_unloads_through_both_clients(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "first")
    write_model(repo, "second")
    args = [*FAST, "--model-control-mode", "explicit", "--load-model", "first"]
    with ServerProcess(repo, args) as server, SmoothServeClient(server.address) as native:
        assert index(server) == {("first", "1"): ("READY", ""),
                                 ("second", ""): ("UNAVAILABLE", "not loaded")}  # fmt: skip
        assert [m.name for m in native.list_models()] == ["first"]
        assert not grpc_client(server).is_model_ready("second")

        http_client(server).load_model("second")  # REST
        assert index(server)[("second", "1")] == ("READY", "")
        assert grpc_client(server).is_model_ready("second")
        assert infer(server, "second").as_numpy("counts").sum() == 500
        assert [m.name for m in native.list_models()] == ["first", "second"]

        grpc_client(server).unload_model("first")  # gRPC
        assert not http_client(server).is_model_ready("first")
        with pytest.raises(InferenceServerException) as gone:
            infer(server, "first")
        assert gone.value.status() == "StatusCode.NOT_FOUND"
        wait_for(lambda: index(server).get(("first", "")) == ("UNAVAILABLE", "unloaded"),
                 what="first listed as unloaded")  # fmt: skip
        assert [m.name for m in native.list_models()] == ["second"]

        grpc_client(server).load_model("first")  # and back again
        assert infer(server, "first").as_numpy("counts").sum() == 500
        with pytest.raises(InferenceServerException) as missing:
            grpc_client(server).load_model("nowhere")
        assert missing.value.status() == "StatusCode.NOT_FOUND"
        assert "nowhere" in missing.value.message()
        with pytest.raises(InferenceServerException) as missing_over_http:
            http_client(server).load_model("nowhere")
        assert "nowhere" in missing_over_http.value.message()
        assert ("nowhere", "") not in index(server)


def test_a_failed_reload_leaves_the_served_model_as_it_was(tmp_path):
    repo = tmp_path / "repo"
    model_dir = write_model(repo, "steady")
    args = [*FAST, "--model-control-mode", "explicit", "--load-model", "*"]
    with ServerProcess(repo, args) as server:
        assert index(server) == {("steady", "1"): ("READY", "")}
        (model_dir / "config.pbtxt").write_text("not a config {")
        with pytest.raises(InferenceServerException) as failed:
            grpc_client(server).load_model("steady")
        assert "config.pbtxt" in failed.value.message()
        assert index(server) == {("steady", "1"): ("READY", "")}
        assert infer(server, "steady").as_numpy("counts").sum() == 500


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_are_refused_outside_explicit_mode(tmp_path, mode):
    repo = tmp_path / "repo"
    write_model(repo, "fixed")
    args = [*FAST, "--model-control-mode", mode, "--repository-poll-secs", "30"]
    with ServerProcess(repo, args) as server:
        assert index(server) == {("fixed", "1"): ("READY", "")}  # the index: in every mode
        for call in (lambda c: c.load_model("fixed"), lambda c: c.unload_model("fixed")):
            with pytest.raises(InferenceServerException) as over_grpc:
                call(grpc_client(server))
            assert over_grpc.value.status() == "StatusCode.UNAVAILABLE"
            assert f"not allowed in model control mode {mode}" in over_grpc.value.message()
            with pytest.raises(InferenceServerException) as over_http:
                call(http_client(server))
            assert over_http.value.status() == "503"
            assert "not allowed" in over_http.value.message()
        assert grpc_client(server).is_model_ready("fixed")  # unharmed


# -- poll mode -------------------------------------------------------------------------------


def test_poll_mode_follows_the_repository_and_requests_in_flight_finish(tmp_path):
    repo, spare = tmp_path / "repo", tmp_path / "spare"
    write_model(repo, "resident")
    late = write_model(spare, "late")
    args = [*FAST, *POLL, "--max-n", "40000000", "--max-samples-in-flight", "80000000"]
    with ServerProcess(repo, args) as server, SmoothServeClient(server.address, timeout=300) as native:
        assert index(server) == {("resident", "1"): ("READY", "")}

        copy_in(late, repo)  # a new model folder: served within a poll or two
        wait_for(lambda: grpc_client(server).is_model_ready("late"), what="late served")
        assert infer(server, "late").as_numpy("counts").sum() == 500
        assert {m.name for m in native.list_models()} == {"resident", "late"}

        # A large request on "late", then its folder removed: the model is unloaded, and the
        # request finishes on it with its certificate.
        answers, errors = [], []

        def large() -> None:
            try:
                answers.append(native.predict("late", X, n0=100, n=30_000_000))
            except Exception as exc:  # reported below
                errors.append(exc)

        request = threading.Thread(target=large)
        request.start()
        time.sleep(0.5)  # admitted and sampling
        shutil.rmtree(repo / "late")
        wait_for(lambda: ("late", "1") not in index(server) or
                 index(server)[("late", "1")][0] != "READY", what="late unloaded")  # fmt: skip
        assert request.is_alive(), "the request finished before the unload: make it larger"
        assert index(server)[("late", "1")] == ("UNLOADING", "unloading: requests in flight")
        with pytest.raises(InferenceServerException) as refused:
            infer(server, "late")  # new requests no longer reach it
        assert refused.value.status() == "StatusCode.NOT_FOUND"
        request.join(300)
        assert not errors, errors
        (answer,) = answers
        assert answer.model_name == "late" and answer.model_version == "1"
        assert answer.n == 30_000_000 and sum(answer.counts) == 30_000_000
        assert answer.record and answer.record_signature and answer.radius >= 0
        wait_for(lambda: not any(name == "late" for name, _ in index(server)),
                 what="late closed and gone from the index")  # fmt: skip
        assert {m.name for m in native.list_models()} == {"resident"}

        # A new version folder: the latest (the default policy) replaces version 1.
        resident = repo / "resident"
        (resident / "2").mkdir()
        shutil.copy(resident / "1" / "model.onnx", resident / "2" / "model.onnx")
        wait_for(lambda: ("resident", "2") in index(server), what="version 2 served")
        wait_for(lambda: ("resident", "1") not in index(server), what="version 1 retired")
        assert infer(server, "resident").get_response().model_version == "2"
        with pytest.raises(InferenceServerException):
            infer(server, "resident", "1")

        # A changed config reloads the model.
        config = resident / "config.pbtxt"
        config.write_text(config.read_text().replace('string_value: "0.25"',
                                                     'string_value: "0.5"'))  # fmt: skip
        wait_for(lambda: native.model_info("resident").sigma == 0.5, what="sigma reloaded")
        assert json.loads(infer(server, "resident").get_response()
                          .parameters["record"].string_param)["config"]["sigma"] == 0.5
        log = server.log()
    assert "Traceback" not in log, log[-3000:]


def test_a_model_added_in_poll_mode_that_fails_is_listed_with_its_reason(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "resident")
    args = [*FAST, *POLL, "--exit-on-error", "false"]
    with ServerProcess(repo, args) as server:
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "config.pbtxt").write_text("name: 'broken'")
        copy_in(broken, repo)
        # listed at once, as a folder not loaded yet; then with why it failed to load
        wait_for(lambda: index(server).get(("broken", ""), ("", "not loaded"))[1] != "not loaded",
                 what="broken tried")  # fmt: skip
        state, reason = index(server)[("broken", "")]
        assert state == "UNAVAILABLE" and "broken/config.pbtxt" in reason
        assert grpc_client(server).is_model_ready("resident")


# -- version policy --------------------------------------------------------------------------


def test_version_policy_chooses_the_versions_served(tmp_path):
    repo = tmp_path / "repo"
    for name, policy in POLICIES.items():
        write_model(repo, name, policy, versions=("1", "2", "3"))
    with ServerProcess(repo, FAST) as server:
        served = index(server)
        for name, versions in SERVED.items():
            assert sorted(v for n, v in served if n == name) == versions, name
            assert all(served[(name, v)] == ("READY", "") for v in versions)
            assert http_client(server).get_model_metadata(name)["versions"] == versions
            latest = infer(server, name).get_response()
            assert latest.model_version == versions[-1]
            for version in versions:
                assert infer(server, name, version).get_response().model_version == version
            for version in {"1", "2", "3"} - set(versions):
                with pytest.raises(InferenceServerException) as refused:
                    infer(server, name, version)
                assert refused.value.status() == "StatusCode.NOT_FOUND"


def test_a_policy_that_selects_no_version_fails_its_model(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "ok")
    write_model(repo, "none_left", "version_policy { specific { versions: [7] } }")
    with ServerProcess(repo, [*FAST, "--exit-on-error", "false"]) as server:
        with SmoothServeClient(server.address) as native:
            failed = {m.name: m for m in native.list_models()}["none_left"]
        assert failed.state == "FAILED" and "selects none of the versions [1]" in failed.failure_reason
        assert index(server)[("none_left", "")][0] == "UNAVAILABLE"


def test_model_control_options_are_checked(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m")
    for args, message in [
        (["--load-model", "m"], "--load-model needs --model-control-mode explicit"),
        (["--model-control-mode", "poll", "--repository-poll-secs", "0"], "repository_poll_secs"),
    ]:
        server = ServerProcess(repo, args)
        with pytest.raises(RuntimeError):
            server.start()
        assert message in server.log()


def test_explicit_mode_with_a_load_model_that_is_not_there_fails_to_start(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m")
    server = ServerProcess(repo, ["--model-control-mode", "explicit", "--load-model", "nope"])
    with pytest.raises(RuntimeError):
        server.start()
    assert "nope" in server.log() and "not found in the repository" in server.log()


def test_native_errors_name_the_unloaded_model(tmp_path):
    repo = tmp_path / "repo"
    write_model(repo, "m")
    args = [*FAST, "--model-control-mode", "explicit", "--load-model", "m"]
    with ServerProcess(repo, args) as server, SmoothServeClient(server.address) as native:
        grpc_client(server).unload_model("m")
        with pytest.raises(SmoothServeError) as gone:
            native.predict("m", X, n0=10, n=100)
        assert gone.value.code == grpc.StatusCode.NOT_FOUND
        assert "'m' is not served" in gone.value.details
