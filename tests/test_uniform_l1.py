"""L1 certificates with uniform noise (Yang et al., ICML 2020), the second noise family, through
a live server against a half-plane model of known radius.

The model is class 1 iff x[0, 0, 0] > T. Under uniform noise on [-lambda, lambda]^d, at
x[0, 0, 0] = T + d, p_A = 1/2 + |d| / (2 lambda) for |d| <= lambda, so the family's radius
2 lambda (p_A - 1/2) is exactly the true L1 radius |d|: a certificate above |d| is false. Each
procedure's false certificates must stay within alpha (a binomial test), the radii must
recompute from the counts (the verifier's own recomputation), and approach the truth as n
grows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binom

from smoothcert.verify import recompute
from smoothserve_client import SmoothServeClient
from smoothserve_client.client import SmoothServeError
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess

SHAPE = (1, 8, 8)
T, LAMBDA = 0.5, 0.4
ALPHA = 0.1
TRIALS = 200


def half_plane_point(d: float) -> np.ndarray:
    x = np.full(SHAPE, 0.5, np.float32)
    x[0, 0, 0] = T + d
    return x


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("l1-repo")
    w = np.zeros(SHAPE)
    w[0, 0, 0] = 1.0
    write_linear_model(repo, "halfplane", w, -T, LAMBDA, SHAPE, noise_family="uniform")
    write_linear_model(repo, "gauss", w, -T, 0.25, SHAPE)
    with ServerProcess(repo, ["--batch-size", "1024", "--max-n", "400000"]) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    with SmoothServeClient(server.address, timeout=120) as c:
        yield c


def most_false(trials: int, alpha: float) -> int:
    """The largest count of false certificates a valid procedure shows with probability at
    least 0.999 (a one-sided binomial test at level 0.001)."""
    return int(binom.ppf(0.999, trials, alpha))


def test_the_answer_names_the_family_and_the_norm(client):
    info = client.model_info("halfplane")
    assert (info.noise_family, info.norm, info.sigma) == ("uniform", "l1", LAMBDA)
    r = client.predict("halfplane", half_plane_point(0.2), n=2000)
    assert (r.noise_family, r.norm, r.sigma) == ("uniform", "l1", LAMBDA)
    record = json.loads(r.record)
    assert (record["noise_family"], record["norm"]) == ("uniform", "l1")
    assert record["config"]["noise_family"] == "uniform" and record["config"]["sigma"] == LAMBDA
    assert client.predict("gauss", half_plane_point(0.2), n=2000).norm == "l2"


@pytest.mark.parametrize("procedure", ["fixed_n", "target_radius", "anytime"])
def test_false_l1_certificates_stay_within_alpha(client, procedure):
    """At the boundary case of each procedure, the rate of certificates above the true L1
    radius is at most alpha; every answer recomputes from its counts."""
    d = 0.15
    options = {"target_radius": d} if procedure == "target_radius" else {}
    false = certified = 0
    for _ in range(TRIALS):
        r = client.predict("halfplane", half_plane_point(d), n0=50, n=400, alpha=ALPHA,
                           procedure=procedure, **options)  # fmt: skip
        assert recompute(json.loads(r.record)) == []
        certified += not r.abstain
        false += (not r.abstain) and (r.prediction != 1 or r.radius > d)
    assert false <= most_false(TRIALS, ALPHA), (procedure, false, certified)
    assert certified > 0  # the test can see certificates at all


def test_l1_radius_approaches_the_truth(client):
    """n0 = 2,000: at d = 0.05, p_A = 0.5625, and 100 selection samples would pick the other
    class about one time in nine (an abstention, which is correct but not what is tested)."""
    for d in (0.05, 0.2, 0.35):
        r = client.predict("halfplane", half_plane_point(d), n0=2000, n=200_000, alpha=0.001)
        assert r.prediction == 1 and r.norm == "l1"
        assert d - 0.01 < r.radius <= d, (d, r.radius)
        low = client.predict("halfplane", half_plane_point(-d), n0=2000, n=200_000, alpha=0.001)
        assert low.prediction == 0 and d - 0.01 < low.radius <= d


def test_a_target_beyond_lambda_never_certifies(client):
    """The uniform radius is at most lambda, whatever p_A: a target above it cannot certify."""
    r = client.predict("halfplane", half_plane_point(LAMBDA), n=20_000,
                       procedure="target_radius", target_radius=LAMBDA * 1.01)  # fmt: skip
    assert r.abstain


def test_sound_noise_is_refused_for_uniform_noise(client):
    with pytest.raises(SmoothServeError) as refused:
        client.predict("halfplane", half_plane_point(0.2).round(2), n=100, sound_noise=True)
    assert refused.value.code.name == "FAILED_PRECONDITION" and "Gaussian" in refused.value.details
