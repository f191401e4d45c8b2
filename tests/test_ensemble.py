"""Issue 22: a composed smoothed model (denoised smoothing), declared in Triton's ensemble
convention: ``denoised`` runs the component ``denoiser`` (no smoothing parameters), then the
classifier; the smoothing parameters belong to the ensemble.

The denoiser here is exact (a 3x3 convolution with the identity kernel), so the ensemble's
smoothed classifier is its classifier's: the half-plane model of conftest, whose certified
radius is known exactly (test_linear_radius). The same seeded request must give the same
counts on the ensemble and on the bare classifier, on the embedded backend and on a real
Triton (the CPU twin: Triton's ensemble scheduler running Python-backend twins of the
components), through the batch path and through the Triton-side sampler.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
from conftest import LINEAR_SHAPE, LINEAR_SIGMA, linear_weights
from test_linear_radius import point_at, true_radius
from test_record_binding import key, verify  # noqa: F401, F811 (key: a fixture)
from triton_helpers import require_tritonserver, triton_args
from tritonclient.utils import InferenceServerException

from smoothcert.model_config import (
    ComponentConfig,
    EnsembleStep,
    SmoothModelConfig,
    ensemble_sha256,
    sha256_of,
)
from smoothserve import repository
from smoothserve.backends.onnxruntime import OnnxRuntimeBackend
from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_dev.models import (
    write_ensemble,
    write_identity_denoiser,
    write_linear_component,
    write_linear_model,
)
from smoothserve_dev.testing import ServerProcess
from smoothserve_dev.triton_twin import TritonProcess, build_twin_repository

pytestmark = pytest.mark.timeout(240)
SHAPE = LINEAR_SHAPE
ARGS = ["--batch-size", "1024", "--http-port", "0"]  # the same batches on every backend
X = point_at(0.2, 1)


def write_repo(repo: Path) -> Path:
    """``linear`` (the known-radius model, served on its own too), ``denoiser`` (a component),
    ``denoised`` (denoiser -> linear), ``denoised_cls`` (denoiser -> ``cls``, the classifier as a
    component) and ``denoised_sampled`` (a copy of ``denoised``: the Triton test gives it a
    sampler and leaves ``denoised`` on the batch path)."""
    w, b = linear_weights()
    write_linear_model(repo, "linear", w, b, LINEAR_SIGMA, SHAPE)
    write_identity_denoiser(repo, "denoiser", SHAPE)
    write_linear_component(repo, "cls", w, b, SHAPE)
    write_ensemble(repo, "denoised", "denoiser", "linear", LINEAR_SIGMA, SHAPE)
    write_ensemble(repo, "denoised_cls", "denoiser", "cls", LINEAR_SIGMA, SHAPE)
    write_ensemble(repo, "denoised_sampled", "denoiser", "linear", LINEAR_SIGMA, SHAPE)
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_repo(tmp_path_factory.mktemp("ensemble-repo"))


@pytest.fixture(scope="module")
def server(repo):
    with ServerProcess(repo, ARGS) as process:
        yield process


def composed_sha(repo: Path, *names: str) -> str:
    return ensemble_sha256([(n, sha256_of(repo / n / "1" / "model.onnx")) for n in names])


def ensemble_config(repo: Path, name: str) -> SmoothModelConfig:
    return SmoothModelConfig.from_pbtxt((repo / name / "config.pbtxt").read_text())


def rewrite_steps(repo: Path, name: str, **changes) -> None:
    """Replace the ensemble's steps (``steps=``) or other fields of its config."""
    config = ensemble_config(repo, name)
    values = {**config.__dict__, **changes}
    (repo / name / "config.pbtxt").write_text(SmoothModelConfig(**values).to_pbtxt())


# -- the config and the repository (no server) -------------------------------------------------


def test_the_steps_round_trip_and_components_parse(repo):
    config = ensemble_config(repo, "denoised")
    assert config.is_ensemble and config.platform == "ensemble"
    assert [s.model_name for s in config.ensemble_steps] == ["denoiser", "linear"]
    assert config.ensemble_steps[1] == EnsembleStep(
        "linear", -1, (("input", "denoised"),), (("logits", "logits"),)
    )
    again = SmoothModelConfig.from_pbtxt(config.to_pbtxt())
    assert again.ensemble_steps == config.ensemble_steps
    assert "dynamic_batching" not in config.to_pbtxt()  # the ensemble scheduler: none
    assert "instance_group" not in config.to_pbtxt()
    component = ComponentConfig.from_pbtxt((repo / "denoiser" / "config.pbtxt").read_text())
    assert not component.smoothed and component.outputs[0].dims == SHAPE
    with pytest.raises(Exception, match="lacks parameters"):  # NotSmoothed, as before
        SmoothModelConfig.from_pbtxt((repo / "denoiser" / "config.pbtxt").read_text())


def test_the_repository_serves_ensembles_and_keeps_components_apart(repo):
    states = repository.scan(repo)
    assert sorted(states.ready) == ["denoised", "denoised_cls", "denoised_sampled", "linear"]
    assert states.failed == {}
    assert sorted(states.components) == ["cls", "denoiser"]
    assert "'denoised', 'denoised_cls', 'denoised_sampled'" in states.components["denoiser"]
    model = states.ready["denoised"]["1"]
    assert [(s.name, s.version) for s in model.steps] == [("denoiser", "1"), ("linear", "1")]
    assert model.path is None and model.sha256 == composed_sha(repo, "denoiser", "linear")
    assert model.sha256 != states.ready["linear"]["1"].sha256


def broken(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A repository whose ``ens`` fails in one way, and the words its reason must hold."""
    repo = write_repo(tmp_path / case)
    w, b = linear_weights()
    steps = ensemble_config(repo, "denoised").ensemble_steps
    if case == "missing_component":
        shutil.rmtree(repo / "denoiser")
        return repo, "denoised/config.pbtxt: step 1 ('denoiser'): no model 'denoiser'"
    if case == "missing_file":
        (repo / "denoiser" / "1" / "model.onnx").unlink()
        return repo, "no <version>/model.onnx"
    if case == "shape_mismatch":  # the denoiser gives 1x4x4, the classifier takes 1x8x8
        shutil.rmtree(repo / "denoiser")
        write_identity_denoiser(repo, "denoiser", (1, 4, 4))
        rewrite_steps(repo, "denoised", input_shape=(1, 4, 4))
        return repo, "linear/config.pbtxt: input 'input' takes TYPE_FP32 [1, 8, 8], but step 1"
    if case == "not_linear":  # step 2 reads the ensemble's input, not the denoiser's output
        rewrite_steps(repo, "denoised", ensemble_steps=(
            steps[0], EnsembleStep("linear", -1, (("input", "input"),), (("logits", "logits"),)),
        ))  # fmt: skip
        return repo, "linear chain"
    if case == "cycle":
        rewrite_steps(repo, "denoised", ensemble_steps=(
            steps[0], EnsembleStep("denoised", -1, (("input", "denoised"),),
                                   (("logits", "logits"),)),
        ))  # fmt: skip
        return repo, "a cycle"
    if case == "outside":  # a step may not reach out of the repository
        (repo.parent / "elsewhere").mkdir(exist_ok=True)
        shutil.copytree(repo / "denoiser", repo.parent / "elsewhere" / "denoiser", dirs_exist_ok=True)
        rewrite_steps(repo, "denoised", ensemble_steps=(
            EnsembleStep("../elsewhere/denoiser", -1, steps[0].input_map, steps[0].output_map),
            steps[1],
        ))  # fmt: skip
        return repo, "a step names a model folder of the same repository"
    if case == "labels":  # three labels on the ensemble, two logits from its classifier
        rewrite_steps(repo, "denoised", labels=("a", "b", "c"))
        return repo, "one logit per label"
    if case == "nested":
        rewrite_steps(repo, "denoised", ensemble_steps=(
            steps[0], EnsembleStep("denoised_cls", -1, (("input", "denoised"),),
                                   (("logits", "logits"),)),
        ))  # fmt: skip
        return repo, "nested ensembles are not supported"
    if case == "no_version":
        rewrite_steps(repo, "denoised", ensemble_steps=(
            EnsembleStep("denoiser", 7, steps[0].input_map, steps[0].output_map), steps[1],
        ))  # fmt: skip
        return repo, "version 7 of 'denoiser' has no denoiser/7/model.onnx"
    if case == "batch_too_large":
        rewrite_steps(repo, "denoised", max_batch_size=4096)
        return repo, "max_batch_size 4096 is more than denoiser/config.pbtxt allows (1024)"
    if case == "graph_mismatch":  # the config says 1x8x8; unpadded, the graph gives 1x6x6
        model = onnx.load(repo / "denoiser" / "1" / "model.onnx")
        del model.graph.node[0].attribute[:]
        for axis in (2, 3):
            model.graph.output[0].type.tensor_type.shape.dim[axis].dim_value = 6
        onnx.checker.check_model(model)
        onnx.save(model, repo / "denoiser" / "1" / "model.onnx")
        return repo, "denoiser/1/model.onnx: the network gives 'denoised' of shape"
    raise AssertionError(case)


FAILURES = ("missing_component", "missing_file", "shape_mismatch", "not_linear", "cycle",
            "outside", "labels", "nested", "no_version", "batch_too_large")  # fmt: skip


@pytest.mark.parametrize("case", FAILURES)
def test_a_broken_ensemble_fails_naming_the_file(tmp_path, case):
    repo, words = broken(tmp_path, case)
    states = repository.scan(repo)
    assert "denoised" in states.failed and "denoised" not in states.ready, case
    assert words in states.failed["denoised"], states.failed["denoised"]
    assert "linear" in states.ready  # the others are served
    assert not set(states.components) & set(states.failed)


def load(repo: Path, merge: bool = True):
    """The embedded backend's start on ``repo``; ``merge=False``: as without the onnx package."""

    async def scenario():
        backend = OnnxRuntimeBackend(repo)
        if not merge:
            import smoothserve.backends.onnxruntime as ort_backend

            real = ort_backend.merge_ensemble
            ort_backend.merge_ensemble = lambda model: (_ for _ in ()).throw(ImportError("onnx"))
        try:
            states = await backend.start()
            votes = {}
            batch = np.random.default_rng(3).random((300, *SHAPE), dtype=np.float32)
            for name, versions in states.ready.items():
                votes[name] = (await backend.classify(versions["1"], batch)).tolist()
            kinds = {m.name: type(backend._sessions[m.key]).__name__
                     for vs in states.ready.values() for m in vs.values()}  # fmt: skip
            return states, votes, kinds
        finally:
            if not merge:
                ort_backend.merge_ensemble = real
            await backend.close()

    return asyncio.run(scenario())


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "sessions"])
def test_the_embedded_backend_composes_the_steps(repo, merge):
    states, votes, kinds = load(repo, merge)
    assert states.failed == {}
    assert kinds["denoised"] == ("_Network" if merge else "_Chain")
    assert votes["denoised"] == votes["denoised_cls"] == votes["linear"]
    assert 0 < sum(votes["linear"]) < 300


def test_the_graphs_are_checked_at_load(tmp_path):
    repo, words = broken(tmp_path, "graph_mismatch")
    assert repository.scan(repo).failed == {}  # the configs agree: the graph does not
    for merge in (True, False):
        states, _, _ = load(repo, merge)
        assert words in states.failed["denoised"], states.failed["denoised"]
        assert str(tmp_path) not in states.failed["denoised"]  # relative to the repository
        assert "linear" in states.ready


def test_the_torch_backend_needs_each_components_twin(repo):
    pytest.importorskip("torch")
    from smoothserve.backends.torch_backend import TorchBackend

    async def scenario():
        backend = TorchBackend(repo, device="cpu")
        try:
            return await backend.start()
        finally:
            await backend.close()

    states = asyncio.run(scenario())
    assert "no model.pt beside denoiser/1/model.onnx" in states.failed["denoised"]
    assert "denoiser" not in states.failed  # a component, not a failed model


def test_the_torch_backend_composes_the_committed_twins(tmp_path):
    """The committed denoised ensemble on the torch backend (its components' TorchScript
    twins, composed) classifies noisy batches as the embedded backend does."""
    pytest.importorskip("torch")
    from smoothserve.backends.torch_backend import TorchBackend

    committed = Path(__file__).resolve().parents[1] / "model_repo"
    for name in ("fmnist_denoised_mse_s025", "fmnist_dncnn_mse_s025", "fmnist_cnn_plain"):
        shutil.copytree(committed / name, tmp_path / name)
    batch = np.clip(np.random.default_rng(4).random((256, 1, 28, 28), dtype=np.float32)
                    + np.float32(0.25) * np.random.default_rng(5).standard_normal(
                        (256, 1, 28, 28), dtype=np.float32), -1, 2)  # fmt: skip

    async def votes(backend):
        try:
            states = await backend.start()
            model = states.ready["fmnist_denoised_mse_s025"]["1"]
            return np.asarray(await backend.classify(model, batch))
        finally:
            await backend.close()

    eager = asyncio.run(votes(TorchBackend(tmp_path, device="cpu")))
    embedded = asyncio.run(votes(OnnxRuntimeBackend(tmp_path)))
    assert np.mean(eager == embedded) >= 0.99, np.mean(eager == embedded)


def test_an_ensemble_fingerprint_covers_its_components(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    before = repository.fingerprint(copy / "denoised")
    unchanged = repository.fingerprint(copy / "linear")
    model = onnx.load(copy / "denoiser" / "1" / "model.onnx")
    model.doc_string = "retrained"
    onnx.save(model, copy / "denoiser" / "1" / "model.onnx")
    assert repository.fingerprint(copy / "denoised") != before
    assert repository.fingerprint(copy / "linear") == unchanged


# -- a live server -------------------------------------------------------------------------------


def test_certifies_within_the_true_radius_and_counts_as_the_bare_model(server):
    with SmoothServeClient(server.address, timeout=60) as client:
        names = {m.name: m for m in client.list_models()}
        assert sorted(names) == ["denoised", "denoised_cls", "denoised_sampled", "linear"]
        assert all(m.state != "FAILED" for m in names.values())
        for side in (1, -1):
            x = point_at(0.2, side)
            truth = true_radius(x)
            bare = client.predict("linear", x, n0=100, n=20_000, alpha=0.001, seed=11)
            for name in ("denoised", "denoised_cls"):
                r = client.predict(name, x, n0=100, n=20_000, alpha=0.001, seed=11)
                assert r.prediction == (1 if side > 0 else 0)
                assert 0.8 * truth < r.radius <= truth, (name, r.radius, truth)
                # the identity denoiser changes nothing: the same noise gives the same votes
                assert r.counts == bare.counts and r.selection_counts == bare.selection_counts
                assert r.radius == bare.radius


def test_records_bind_the_composition(server, repo):
    with SmoothServeClient(server.address, timeout=60) as client:
        info = client.model_info("denoised")
        expected = composed_sha(repo, "denoiser", "linear")
        assert info.sha256 == expected and info.platform == "ensemble"
        result = client.predict("denoised", X, n0=100, n=1000, seed=2)
        assert result.model_sha256 == expected
        assert json.loads(result.record)["model"]["sha256"] == expected


def test_a_component_is_not_a_model_of_its_own(server):
    with SmoothServeClient(server.address, timeout=30) as client:
        with pytest.raises(SmoothServeError) as refused:
            client.predict("denoiser", X, n0=10, n=100)
        assert refused.value.code == grpc.StatusCode.NOT_FOUND, refused.value
        assert "a component of ensemble" in refused.value.details, refused.value
    index = triton_grpc.InferenceServerClient(server.address).get_model_repository_index()
    entries = {m.name: (m.state, m.reason) for m in index.models}
    assert entries["denoiser"][0] == "UNAVAILABLE"
    assert "a component of ensembles" in entries["denoiser"][1]
    assert "Traceback" not in server.log() and "not served:" not in server.log()


def test_explicit_load_of_a_component_says_what_it_is(repo):
    args = [*ARGS, "--model-control-mode", "explicit", "--load-model", "denoised"]
    with ServerProcess(repo, args) as server:
        client = triton_grpc.InferenceServerClient(server.address)
        assert client.is_model_ready("denoised")
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("denoiser")
        assert "a component of ensemble" in str(refused.value), refused.value
        assert "INVALID_ARGUMENT" in str(refused.value.status()), refused.value.status()


def test_failures_at_start_name_the_file_and_spare_the_others(tmp_path):
    repo, words = broken(tmp_path, "shape_mismatch")
    with (
        ServerProcess(repo, [*ARGS, "--exit-on-error", "false"]) as server,
        SmoothServeClient(server.address, timeout=30) as client,
    ):
        models = {m.name: m for m in client.list_models()}
        assert "denoiser" not in models and "cls" not in models  # components: not listed
        assert models["denoised"].state == "FAILED"
        assert words in models["denoised"].failure_reason
        assert sum(client.predict("linear", X, n0=10, n=100).counts) == 100


def test_a_changed_component_changes_the_model_sha256(tmp_path):
    repo = write_repo(tmp_path / "repo")
    args = [*ARGS, "--model-control-mode", "poll", "--repository-poll-secs", "1"]
    with (
        ServerProcess(repo, args) as server,
        SmoothServeClient(server.address, timeout=30) as client,
    ):
        before = client.predict("denoised", X, n0=10, n=100, seed=1)
        assert before.model_sha256 == composed_sha(repo, "denoiser", "linear")
        model = onnx.load(repo / "denoiser" / "1" / "model.onnx")
        model.doc_string = "retrained"  # another file, the same function
        staged = tmp_path / "model.onnx"
        onnx.save(model, staged)
        staged.rename(repo / "denoiser" / "1" / "model.onnx")
        expected = composed_sha(repo, "denoiser", "linear")
        assert expected != before.model_sha256
        deadline = time.monotonic() + 20
        while client.model_info("denoised").sha256 != expected:
            assert time.monotonic() < deadline, "the ensemble was not reloaded"
            time.sleep(0.2)
        after = client.predict("denoised", X, n0=10, n=100, seed=1)
        assert after.model_sha256 == expected
        assert json.loads(after.record)["model"]["sha256"] == expected
        assert after.counts == before.counts
        assert client.model_info("linear").sha256 == sha256_of(repo / "linear/1/model.onnx")


# -- a real Triton ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(repo, tmp_path_factory):
    """The twin: ``denoised`` on the batch path, ``denoised_sampled`` and ``linear`` sampled."""
    require_tritonserver()
    dest = tmp_path_factory.mktemp("twin")
    only = ("linear", "denoised", "denoised_sampled")
    build_twin_repository(repo, dest, only=only, samplers=True)
    shutil.rmtree(dest / "denoised_sampler")
    assert (dest / "denoised" / "config.pbtxt").read_text() == (
        repo / "denoised" / "config.pbtxt"
    ).read_text()
    assert (dest / "denoised" / "1" / ".keep").is_file()
    with TritonProcess(dest) as process:
        yield process


def test_triton_runs_the_ensemble_as_the_embedded_backend_does(repo, server, triton):
    with ServerProcess(repo, [*triton_args(triton.url), *ARGS]) as via_triton:
        with (
            SmoothServeClient(server.address, timeout=60) as embedded,
            SmoothServeClient(via_triton.address, timeout=60) as remote,
        ):
            names = sorted(m.name for m in remote.list_models())
            assert names == ["denoised", "denoised_sampled", "linear"]  # no component
            assert remote.model_info("denoised").noise_generator != "remote"  # batch path
            assert remote.model_info("denoised_sampled").noise_generator == "remote"
            expected = composed_sha(repo, "denoiser", "linear")
            assert remote.model_info("denoised").sha256 == expected
            for seed in (4, 5):
                here = embedded.predict("denoised", X, n0=100, n=10_000, seed=seed)
                there = remote.predict("denoised", X, n0=100, n=10_000, seed=seed)
                assert here.counts == there.counts
                assert here.selection_counts == there.selection_counts
                assert there.model_sha256 == expected
            truth = true_radius(X)
            sampled = remote.predict("denoised_sampled", X, n0=100, n=20_000, alpha=0.001, seed=6)
            bare = remote.predict("linear", X, n0=100, n=20_000, alpha=0.001, seed=6)
            assert sampled.counts == bare.counts  # the sampler's noise, the same votes
            assert sampled.prediction == 1 and 0.8 * truth < sampled.radius <= truth
        log = via_triton.log()
    assert "denoiser is a component of ensemble" in log, log[-3000:]


def test_the_verifier_recomputes_the_composition_from_the_repository(tmp_path, key):  # noqa: F811
    """``smoothserve-verify --model`` on an ensemble hashes its components' files as the
    server does: the honest record passes, and fails once a component's file changes."""
    repo = write_repo(tmp_path / "repo")
    args = [*ARGS, "--signing-key", str(key / "signing.pem")]
    with ServerProcess(repo, args) as server, SmoothServeClient(server.address) as client:
        client.predict("denoised", X, n0=100, n=1000).save_record(tmp_path / "r.json")
    code, out = verify(tmp_path / "r.json", key, "--model", repo)
    assert code == 0, out
    code, out = verify(tmp_path / "r.json", key, "--model", repo / "denoised")
    assert code == 0, out
    onnx_file = repo / "denoiser" / "1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")  # another file
    code, out = verify(tmp_path / "r.json", key, "--model", repo)
    assert code != 0 and "composition's SHA-256" in out, out


def test_a_component_is_refused_on_every_door(server):
    """Native gRPC (above), OIP gRPC and OIP REST all refuse a request naming a component with
    not-found and say what it is; the metrics page does not grow a label for it."""
    import tritonclient.http as triton_http

    grpc_tensor = triton_grpc.InferInput("input", [1, *X.shape], "FP32")
    grpc_tensor.set_data_from_numpy(X[None])
    with pytest.raises(InferenceServerException) as oip_grpc:
        triton_grpc.InferenceServerClient(server.address).infer("denoiser", [grpc_tensor])
    assert oip_grpc.value.status() == "StatusCode.NOT_FOUND", oip_grpc.value
    assert "a component of ensemble" in oip_grpc.value.message()
    rest_tensor = triton_http.InferInput("input", [1, *X.shape], "FP32")
    rest_tensor.set_data_from_numpy(X[None])
    rest = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    with pytest.raises(InferenceServerException) as oip_rest:
        rest.infer("denoiser", [rest_tensor])
    assert oip_rest.value.status() == "404", oip_rest.value
    assert "a component of ensemble" in oip_rest.value.message()
    with urllib.request.urlopen(server.metrics_url) as page:
        assert 'model="denoiser"' not in page.read().decode()
