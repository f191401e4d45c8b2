"""The uniform family (L1 certificates) on the other backend paths: the torch backend, whose
noise is drawn on the device (``draw_noisy_segments`` with ``family.fill_standard`` on the
CPU), and the Triton backend, whose sampler draws Gaussian noise only, so a uniform model must
bypass it and send noisy copies drawn on the host.

The model is test_uniform_l1's half-plane: class 1 iff x[0, 0, 0] > T. Under uniform noise on
[-lambda, lambda]^d, at x[0, 0, 0] = T + d, p_A = 1/2 + |d| / (2 lambda) for |d| <= lambda and
p_A = 1 beyond lambda; its true L1 radius is |d|. Gaussian noise of the same scale would give
Phi(d / lambda) and never p_A = 1, so the vote shares tell the two families apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom, kstest
from triton_helpers import require_tritonserver, triton_args

from smoothcert.families import FAMILIES
from smoothcert.verify import recompute
from smoothserve.noise import noise_generator
from smoothserve_client import SmoothServeClient
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess

pytestmark = pytest.mark.timeout(240)

SHAPE = (1, 8, 8)
T, LAMBDA = 0.5, 0.4
GAUSS_SIGMA = 0.25
ALPHA = 0.1
TRIALS = 200
D = 0.15  # the distance of the binomial test's point
UNIFORM = FAMILIES["uniform"]
DEVICE = os.environ.get("SMOOTHSERVE_TORCH_DEVICE", "cpu")
SERVER_ARGS = ["--batch-size", "1024", "--max-n", "400000"]


def half_plane_point(d: float) -> np.ndarray:
    x = np.full(SHAPE, 0.5, np.float32)
    x[0, 0, 0] = T + d
    return x


def half_plane_weights() -> np.ndarray:
    w = np.zeros(SHAPE)
    w[0, 0, 0] = 1.0
    return w


def uniform_share(d: float) -> float:
    """P[class 1] at x[0, 0, 0] = T + d under uniform noise of scale LAMBDA."""
    return float(np.clip(0.5 + d / (2 * LAMBDA), 0.0, 1.0))


def most_false(trials: int, alpha: float) -> int:
    """The most false certificates a valid procedure shows with probability >= 0.999."""
    return int(binom.ppf(0.999, trials, alpha))


def check_false_rate(client: SmoothServeClient, model: str) -> None:
    """At distance D, the rate of certificates above the true L1 radius is within alpha; every
    answer is an L1 certificate that recomputes from its counts."""
    false = certified = 0
    for _ in range(TRIALS):
        r = client.predict(model, half_plane_point(D), n0=50, n=400, alpha=ALPHA)
        assert r.norm == "l1" and r.noise_family == "uniform"
        assert recompute(json.loads(r.record)) == []
        certified += not r.abstain
        false += (not r.abstain) and (r.prediction != 1 or r.radius > D)
    assert false <= most_false(TRIALS, ALPHA), (false, certified)
    assert certified > TRIALS // 4  # the test sees certificates at all


def check_vote_shares(client: SmoothServeClient, model: str, n: int = 40_000) -> None:
    """The votes follow the uniform law, not the Gaussian: 3/4 at d = lambda/2 (Gaussian:
    0.69), all of them just beyond lambda (Gaussian: 0.84), 1/4 at -lambda/2."""
    for d in (LAMBDA / 2, -LAMBDA / 2, 1.05 * LAMBDA):
        p = uniform_share(d)
        votes = client.predict(model, half_plane_point(d), n0=100, n=n).counts[1]
        if p == 1.0:
            assert votes == n, (d, votes)  # bounded support: no sample crosses
        else:
            assert abs(votes / n - p) < 5 * np.sqrt(p * (1 - p) / n), (d, votes / n)


# -- the torch backend: noise drawn on the device ---------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def half_plane_twin(torch, repo: Path, name: str, scale: float, family: str) -> None:
    """The half-plane as ONNX (smoothserve_dev.models) and as its TorchScript twin."""
    from smoothtrain import torchscript

    w = half_plane_weights()
    version = write_linear_model(repo, name, w, -T, scale, SHAPE, noise_family=family) / "1"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(w.size, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(np.stack([np.zeros(w.size), w.ravel()])))
        net[1].bias.copy_(torch.tensor([0.0, -T]))
    torchscript.write_torchscript(net, SHAPE, version / "model.pt")


@pytest.fixture(scope="module")
def torch_server(torch, tmp_path_factory):
    repo = tmp_path_factory.mktemp("uniform_torch_repo")
    half_plane_twin(torch, repo, "halfplane", LAMBDA, "uniform")
    half_plane_twin(torch, repo, "gauss", GAUSS_SIGMA, "gaussian")
    with ServerProcess(repo, ["--backend", "torch", *SERVER_ARGS]) as server:
        assert f"on {DEVICE}" in server.log()
        yield server


@pytest.fixture(scope="module")
def torch_client(torch_server):
    with SmoothServeClient(torch_server.address, timeout=120) as client:
        yield client


def test_torch_backend_answers_name_the_family_and_the_norm(torch_client):
    info = torch_client.model_info("halfplane")
    described = (info.backend, info.noise_family, info.norm, info.sigma)
    assert described == ("torch", "uniform", "l1", LAMBDA)
    assert info.noise_generator == "device"  # drawn by the torch backend, not on the host
    r = torch_client.predict("halfplane", half_plane_point(0.2), n=2000)
    assert (r.noise_family, r.norm, r.sigma) == ("uniform", "l1", LAMBDA)
    record = json.loads(r.record)
    assert (record["noise_family"], record["norm"]) == ("uniform", "l1")
    gauss = torch_client.predict("gauss", half_plane_point(0.2), n=2000)
    assert (gauss.noise_family, gauss.norm) == ("gaussian", "l2")


def test_torch_backend_false_l1_certificates_stay_within_alpha(torch_client):
    check_false_rate(torch_client, "halfplane")


def test_torch_backend_draws_uniform_noise(torch_client):
    check_vote_shares(torch_client, "halfplane")
    x = half_plane_point(LAMBDA / 2)
    first, again, other = (
        torch_client.predict("halfplane", x, n0=200, n=20_000, seed=s) for s in (21, 21, 22)
    )
    assert first.counts == again.counts and first.selection_counts == again.selection_counts
    assert first.counts != other.counts
    p, n = uniform_share(LAMBDA / 2), 20_000  # a seeded request's noise is uniform too
    assert abs(first.counts[1] / n - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_torch_backend_radius_approaches_the_truth(torch_client):
    for d in (0.1, -0.3):
        r = torch_client.predict("halfplane", half_plane_point(d), n0=2000, n=200_000, alpha=0.001)
        assert r.prediction == (d > 0) and abs(d) - 0.01 < r.radius <= abs(d), (d, r.radius)


def test_draw_noisy_segments_fills_uniform_noise(torch):
    """Unit test: each segment's rows lie in [x - lambda, x + lambda] with mean x and variance
    lambda^2 / 3, uniformly (Kolmogorov-Smirnov); on the CPU exactly x + lambda * the family's
    standard noise from ``noise_generator(seed)``."""
    from smoothserve.backends.torch_backend import draw_noisy_segments

    x0 = np.random.default_rng(3).random(SHAPE, dtype=np.float32)
    x1 = np.full(SHAPE, 0.5, np.float32)
    seed, rows = 2**62 + 2**40 + 9, 4000
    out = torch.empty((2 * rows, *SHAPE), device=DEVICE)
    draw_noisy_segments(out, [(x0, rows, seed), (x1, rows, seed + 1)], LAMBDA, UNIFORM)
    noisy = out.cpu().numpy()
    for x, block in ((x0, noisy[:rows]), (x1, noisy[rows:])):
        eps = (block - x) / LAMBDA
        assert eps.min() >= -1 - 1e-5 and eps.max() <= 1 + 1e-5
        assert eps.min() < -0.999 and eps.max() > 0.999  # the whole interval, not a part
        values = eps.size
        assert abs(eps.mean()) < 5 * np.sqrt(1 / 3 / values)
        assert abs((block - x).var() - LAMBDA**2 / 3) < 0.01 * LAMBDA**2 / 3
        assert kstest(eps.ravel()[:50_000], "uniform", args=(-1, 2)).pvalue > 1e-4
    assert not np.allclose(noisy[:rows] - x0, noisy[rows:] - x1)  # each seed its own noise
    if DEVICE == "cpu":
        expected = np.empty((rows, *SHAPE), np.float32)
        UNIFORM.fill_standard(expected, noise_generator(seed))
        np.testing.assert_allclose(noisy[:rows], x0 + LAMBDA * expected, atol=1e-6)


# -- the Triton backend: the sampler is Gaussian-only, so the uniform model bypasses it -------


@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("uniform_triton_repo")
    w = half_plane_weights()
    write_linear_model(repo, "halfplane", w, -T, LAMBDA, SHAPE, noise_family="uniform")
    write_linear_model(repo, "gauss", w, -T, GAUSS_SIGMA, SHAPE)
    return repo


@pytest.fixture(scope="module")
def triton(triton_repo, tmp_path_factory):
    """The CPU twin of both models, with the sampler ``python -m smoothserve.triton_sampler``
    writes for the Gaussian one (it skips the uniform one, saying why) and, written directly,
    one for the uniform model too, as a stale deployment might hold: the server must not use
    it."""
    require_tritonserver()
    from smoothserve_dev.triton_twin import TritonProcess, build_twin_repository

    dest = tmp_path_factory.mktemp("uniform_twin")
    build_twin_repository(triton_repo, dest)
    out = subprocess.run(
        [sys.executable, "-m", "smoothserve.triton_sampler", "--model-repo", str(triton_repo),
         "--out", str(dest), "--target", "cpu", "--samples-per-call", "4096"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "halfplane: uniform noise; the sampler draws Gaussian noise only" in out
    assert [Path(p).name for p in out.split() if p.endswith("_sampler")] == ["gauss_sampler"]
    from smoothserve.repository import scan
    from smoothserve.triton_sampler import write_sampler

    uniform = scan(triton_repo).ready["halfplane"]
    write_sampler(next(iter(uniform.values())).config, sorted(uniform), dest, "cpu",
                  samples_per_call=4096)  # fmt: skip
    with TritonProcess(dest) as process:
        yield process


@pytest.fixture(scope="module")
def via_triton(triton_repo, triton):
    with ServerProcess(triton_repo, [*triton_args(triton.url), *SERVER_ARGS]) as server:
        yield server


@pytest.fixture(scope="module")
def triton_client(via_triton):
    with SmoothServeClient(via_triton.address, timeout=120) as client:
        yield client


def sampler_calls(triton, sampler: str) -> float:
    from smoothserve_dev.triton_twin import scrape

    values = scrape(triton.metrics_url, "nv_inference_count")
    return sum(v for key, v in values.items() if f'model="{sampler}"' in key)


def test_triton_uniform_model_bypasses_the_gaussian_sampler(via_triton, triton_client, triton):
    log = via_triton.log()
    assert "halfplane uses uniform noise; Triton's sampler draws Gaussian noise only" in log
    assert "gauss version 1 sampled by gauss_sampler" in log
    assert "halfplane version 1 sampled by" not in log
    uniform, gauss = triton_client.model_info("halfplane"), triton_client.model_info("gauss")
    described = (uniform.backend, uniform.noise_family, uniform.norm, uniform.sigma)
    assert described == ("triton", "uniform", "l1", LAMBDA)
    assert uniform.noise_generator in ("pcg64", "ars5")  # host noise, not "remote"
    assert (gauss.noise_generator, gauss.noise_family, gauss.norm) == ("remote", "gaussian", "l2")
    before = {s: sampler_calls(triton, s) for s in ("halfplane_sampler", "gauss_sampler")}
    r = triton_client.predict("halfplane", half_plane_point(0.2), n0=100, n=5000)
    assert (r.noise_family, r.norm) == ("uniform", "l1")
    assert sampler_calls(triton, "halfplane_sampler") == before["halfplane_sampler"] == 0
    g = triton_client.predict("gauss", half_plane_point(0.2), n0=100, n=5000)
    assert g.norm == "l2" and sum(g.counts) == 5000
    assert sampler_calls(triton, "gauss_sampler") > before["gauss_sampler"]


def test_triton_uniform_noise_and_false_l1_certificates(triton_client):
    check_vote_shares(triton_client, "halfplane", n=20_000)
    check_false_rate(triton_client, "halfplane")
