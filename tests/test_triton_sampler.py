"""The Triton sampler path against a real tritonserver (the CPU twin with its samplers): the
noise is drawn inside Triton from keys SmoothServe derives from the request's generator, and
only vote counts come back."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
from conftest import LINEAR_SHAPE, LINEAR_SIGMA, linear_weights
from servers import metric
from test_linear_radius import point_at, true_radius
from triton_helpers import (
    SHAPE,
    check_hung_triton_gives_deadline_exceeded_then_recovers,
    near_boundary,
    require_tritonserver,
    triton_args,
    twin,
    weights,
    write_repo,
)

from smoothserve.backends.triton import TritonBackend
from smoothserve.errors import BadState
from smoothserve.triton_sampler.model import cpu_noise
from smoothserve_client.client import SmoothServeClient, SmoothServeError
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess
from smoothserve_dev.triton_twin import TritonProcess, scrape

pytestmark = pytest.mark.timeout(240)
X = near_boundary(SHAPE, weights(SHAPE, 1), margin=0.1)
SAMPLES_PER_CALL = 4096  # small calls, so that a cancelled request has calls left to skip
SAMPLES = "smoothserve_noisy_samples_total"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """triton_helpers' models, plus ``radius``: conftest's known-radius linear model."""
    repo = write_repo(tmp_path_factory.mktemp("repo"))
    w, b = linear_weights()
    write_linear_model(repo, "radius", w, b, LINEAR_SIGMA, LINEAR_SHAPE)
    return repo


@pytest.fixture(scope="module")
def triton(repo, tmp_path_factory):
    require_tritonserver()
    dest = twin(
        repo, tmp_path_factory.mktemp("twin"), only=("linear", "linear_small_batch", "radius"),
        samplers=True, sampler_options={"samples_per_call": SAMPLES_PER_CALL},
    )  # fmt: skip
    with TritonProcess(dest) as process:
        yield process



@pytest.fixture(scope="module")
def via_sampler(repo, triton):
    with ServerProcess(repo, triton_args(triton.url)) as server:
        yield server


def model_count(triton: TritonProcess, model: str) -> float:
    values = scrape(triton.metrics_url, "nv_inference_count")
    return sum(v for key, v in values.items() if f'model="{model}"' in key)


def onnx_counts(repo: Path, model: str, noisy: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"input": noisy})
    return np.bincount(logits.argmax(1), minlength=2)


def test_counts_follow_the_key_not_the_cut(repo, triton):
    """Backend level: the votes of samples [0, 3000) of a key are those of the documented noise
    (block b from SeedSequence(key, spawn_key=(b,)), PCG64), however the range is cut."""
    key = (11, 2**62 + 5, 7, 123456789)
    total = 3000

    async def scenario() -> list[list[np.ndarray]]:
        backend = TritonBackend([triton.url])
        try:
            model = (await backend.start()).ready["linear_small_batch"]["1"]
            remote = backend.remote_sampling(model)
            assert remote is not None and remote.block == 64  # the network's max_batch_size
            cuts = [(0, total), (0, 1000, total), (0, 137, 1000, 1001, 2999, total)]
            answers = []
            for cut in cuts:
                segments = [(X, key, a, b - a) for a, b in zip(cut[:-1], cut[1:], strict=True)]
                answers.append(await backend.count_noisy(model, segments))
            return answers
        finally:
            await backend.close()

    answers = asyncio.run(scenario())
    sums = [np.sum(votes, axis=0).tolist() for votes in answers]
    assert sums[0] == sums[1] == sums[2]
    noisy = cpu_noise(key, 0, total, 64, SHAPE) * np.float32(0.5) + X
    assert sums[0] == onnx_counts(repo, "linear_small_batch", noisy).tolist()
    assert 0 < sums[0][0] < total  # the noise really differs from sample to sample


def test_seeded_requests_repeat_alone_and_among_others(via_sampler, triton):
    before = model_count(triton, "linear_sampler")
    with SmoothServeClient(via_sampler.address, timeout=60) as client:
        assert sorted(m.name for m in client.list_models()) == [
            "linear", "linear_small_batch", "radius"
        ]  # the samplers are Triton's business, not models of SmoothServe
        first = client.predict("linear", X, n0=200, n=30_000, seed=5)
        again = client.predict("linear", X, n0=200, n=30_000, seed=5)
        results: list = [None] * 4

        def run(i: int) -> None:  # concurrent requests: other segment cuts for the seeded one
            seed = 5 if i == 0 else 100 + i
            results[i] = client.predict("linear", X, n0=200, n=30_000 + 777 * i, seed=seed)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        other = client.predict("linear", X, n0=200, n=30_000, seed=6)
    assert first.counts == again.counts == results[0].counts
    assert first.selection_counts == again.selection_counts == results[0].selection_counts
    assert first.radius == results[0].radius and sum(first.counts) == 30_000
    assert other.counts != first.counts
    assert 0 < first.counts[0] < 30_000
    # the sampler did the work: its calls carried every sample
    assert model_count(triton, "linear_sampler") > before


def test_known_radius_model_certifies_within_its_true_radius(via_sampler):
    with SmoothServeClient(via_sampler.address, timeout=60) as client:
        info = client.model_info("radius")  # the sampler sets the batch: one call's samples
        assert (info.batch_size_source, info.noise_generator) == ("backend", "remote")
        for side in (1, -1):
            for distance in (0.1, 0.35):
                x = point_at(distance, side)
                truth = true_radius(x)
                for seed in (None, 3):
                    r = client.predict("radius", x, n0=100, n=20_000, alpha=0.001, seed=seed)
                    assert r.prediction == (1 if side > 0 else 0)
                    assert 0.8 * truth < r.radius <= truth, (distance, r.radius, truth)


def test_sound_noise_is_refused_on_the_sampler_path(via_sampler):
    pixels = np.full(SHAPE, 128, np.uint8)  # on the 8-bit lattice, as sound noise needs
    with SmoothServeClient(via_sampler.address, timeout=30) as client:
        with pytest.raises(SmoothServeError) as refused:
            client.predict("linear", pixels, n0=10, n=100, sound_noise=True)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION, refused.value
        assert "floating-point-sound" in refused.value.details
        assert sum(client.predict("linear", pixels, n0=10, n=100).counts) == 100


def _assert_sampling_stopped(server: ServerProcess, before: float, n: int) -> None:
    time.sleep(0.5)  # a call already in Triton may still land
    settled = metric(server.metrics_url, SAMPLES)
    time.sleep(1.0)
    assert metric(server.metrics_url, SAMPLES) == settled, "samples still being drawn"
    assert settled - before < n / 2
    assert metric(server.metrics_url, "smoothserve_samples_abandoned_total") > 0


def test_deadline_and_cancel_stop_asking_the_sampler(via_sampler):
    n = 1_000_000  # the largest n allowed; over a second of sampling on this machine
    before = metric(via_sampler.metrics_url, SAMPLES)
    with SmoothServeClient(via_sampler.address) as client, pytest.raises(SmoothServeError) as info:
        client.predict("linear", X, mode="predict", n=n, timeout=0.3)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    _assert_sampling_stopped(via_sampler, before, n)

    from smoothserve_client.api.v1 import smoothserve_pb2 as pb
    from smoothserve_client.api.v1 import smoothserve_pb2_grpc as pb_grpc
    from smoothserve_client.client import encode_tensor

    before = metric(via_sampler.metrics_url, SAMPLES)
    request = pb.PredictRequest(
        model_name="linear", input=encode_tensor(X),
        options=pb.PredictOptions(mode=pb.MODE_PREDICT, n=n),
    )  # fmt: skip
    with grpc.insecure_channel(via_sampler.address) as channel:
        call = pb_grpc.SmoothServeStub(channel).Predict.future(request, timeout=60)
        deadline = time.monotonic() + 10
        while metric(via_sampler.metrics_url, SAMPLES) == before:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert call.cancel()
    _assert_sampling_stopped(via_sampler, before, n)
    with SmoothServeClient(via_sampler.address, timeout=30) as client:  # still serving
        assert sum(client.predict("linear", X, n0=10, n=1000).counts) == 1000


def test_the_sampler_refuses_requests_without_a_key(triton):
    with triton_grpc.InferenceServerClient(triton.url) as client:
        arrays = {
            "INPUT": ("FP32", X[None]),
            "KEY": ("UINT64", np.zeros((1, 4), np.uint64)),
            "RANGE": ("INT64", np.array([[0, 100]], np.int64)),
            "SIGMA": ("FP32", np.array([[0.5]], np.float32)),
        }

        def infer(names):
            inputs = []
            for name in names:
                datatype, array = arrays[name]
                inputs.append(triton_grpc.InferInput(name, list(array.shape), datatype))
                inputs[-1].set_data_from_numpy(array)
            return client.infer("linear_sampler", inputs)

        with pytest.raises(Exception, match="all-zero noise key"):
            infer(["INPUT", "KEY", "RANGE", "SIGMA"])
        with pytest.raises(Exception, match="KEY"):  # Triton's own check of required inputs
            infer(["INPUT", "RANGE", "SIGMA"])
        arrays["KEY"] = ("UINT64", np.array([[1, 2, 3, 4]], np.uint64))
        counts = infer(["INPUT", "KEY", "RANGE", "SIGMA"]).as_numpy("COUNTS")
        assert counts.shape == (1, 2) and counts.sum() == 100


SHORT_BY_ONE = '''

# A deliberately broken sampler (tests only): one vote short in every segment.
_honest_count_segment = TritonPythonModel.count_segment


async def _short_by_one(self, x, key, start, count, sigma):
    votes = await _honest_count_segment(self, x, key, start, count, sigma)
    votes[int(votes.argmax())] -= 1
    return votes


TritonPythonModel.count_segment = _short_by_one
'''


def test_votes_not_summing_to_the_samples_are_an_error(repo, tmp_path):
    require_tritonserver()
    dest = twin(repo, tmp_path / "broken", only=("linear",), samplers=True)
    model_py = dest / "linear_sampler" / "1" / "model.py"
    model_py.write_text(model_py.read_text() + SHORT_BY_ONE)

    async def backend_level(url: str) -> None:
        backend = TritonBackend([url])
        try:
            model = (await backend.start()).ready["linear"]["1"]
            with pytest.raises(BadState, match="no certificate"):
                await backend.count_noisy(model, [(X, (1, 2, 3, 4), 0, 500)])
        finally:
            await backend.close()

    with TritonProcess(dest) as triton:
        asyncio.run(backend_level(triton.url))
        with (
            ServerProcess(repo, triton_args(triton.url)) as server,
            SmoothServeClient(server.address, timeout=30) as client,
        ):
            for mode in ("certify", "predict"):
                with pytest.raises(SmoothServeError) as wrong:
                    client.predict("linear", X, mode=mode, n0=100, n=2000, seed=1)
                assert wrong.value.code == grpc.StatusCode.INTERNAL, wrong.value
            assert "returned votes" in server.log()
            assert metric(server.metrics_url, "smoothserve_requests_total", outcome="ok") == 0


def test_hung_triton_gives_deadline_exceeded_then_recovers(repo, triton):
    """Last: it stops the module's Triton for a while."""
    check_hung_triton_gives_deadline_exceeded_then_recovers(repo, triton, X)


