"""The noise is sound: Gaussian at the configured sigma, independent, unpredictable without
a seed, and exactly reproducible with one, whatever the batching or concurrency; for both
generators, ARS-5 (the fastnoise extra) and PCG64."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy import stats

from smoothserve import noise
from smoothserve.noise import GENERATORS, fill_noisy_copies, noise_generator, noise_stream
from smoothserve_client.client import SmoothServeClient
from smoothserve_dev.models import write_histogram_model
from smoothserve_dev.testing import ServerProcess

SIGMA = 0.25
SHAPE = (1, 8, 8)
Z = 5.5  # standard errors allowed on a mean: a false alarm about once in 25 million runs
P_MIN = 1e-6  # smallest p-value a goodness-of-fit test may give
# Bins of width sigma/2 around 0 (on z - mean), the outer two open: z is binned exactly.
EDGES = np.arange(-8, 9) * SIGMA / 2
# Nearest-centre bins: each edge is the midpoint of the two centres around it.
CENTERS = np.concatenate(
    [[EDGES[0] - SIGMA / 4], (EDGES[:-1] + EDGES[1:]) / 2, [EDGES[-1] + SIGMA / 4]]
)


def _bin_probabilities(scale: float) -> np.ndarray:
    cdf = stats.norm.cdf(np.concatenate([[-np.inf], EDGES, [np.inf]]), scale=scale)
    return np.diff(cdf)


# fill_noisy_copies itself --------------------------------------------------------------------


def test_fill_noisy_copies_is_gaussian_at_sigma():
    rng = noise_generator()
    x = rng.uniform(0, 1, SHAPE).astype(np.float32)
    out = np.empty((65_536, *SHAPE), np.float32)  # 4.2 million draws
    fill_noisy_copies(out, x, SIGMA, rng)
    noise = (out.astype(np.float64) - x).ravel()
    count = noise.size
    assert abs(noise.mean()) < Z * SIGMA / np.sqrt(count)
    variance_se = SIGMA**2 * np.sqrt(2 / count)
    assert abs(noise.var() - SIGMA**2) < Z * variance_se
    assert stats.kstest(noise, stats.norm(scale=SIGMA).cdf).pvalue > P_MIN
    assert stats.normaltest(noise).pvalue > P_MIN  # skewness and kurtosis of a normal
    # Neighbouring pixels and consecutive rows are uncorrelated.
    rows = out.reshape(len(out), -1).astype(np.float64) - x.reshape(-1)
    for a, b in ((rows[:, :-1], rows[:, 1:]), (rows[:-1], rows[1:])):
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(r) < Z / np.sqrt(a.size)


def test_batching_does_not_change_a_seeded_stream():
    x = np.full(SHAPE, 0.5, np.float32)
    whole = np.empty((1000, *SHAPE), np.float32)
    fill_noisy_copies(whole, x, SIGMA, noise_generator(42))
    pieces, rng, start = np.empty_like(whole), noise_generator(42), 0
    for size in (7, 1, 256, 3, 733):
        fill_noisy_copies(pieces[start : start + size], x, SIGMA, rng)
        start += size
    assert np.array_equal(whole, pieces)


def test_unseeded_generators_never_repeat():
    first = {noise_generator().standard_normal(4).tobytes() for _ in range(10_000)}
    assert len(first) == 10_000
    entropy = [noise_generator().bit_generator.seed_seq.entropy for _ in range(100)]
    assert len(set(entropy)) == 100 and min(entropy) > 2**64  # 128 bits from the OS


def test_two_processes_draw_independent_noise():
    code = (
        "import sys; from smoothserve.noise import noise_generator; "
        "sys.stdout.buffer.write(noise_generator().standard_normal(200_000).tobytes())"
    )
    streams = [
        np.frombuffer(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                     check=True).stdout)
        for _ in range(2)
    ]  # fmt: skip
    assert len(streams[0]) == 200_000 and not np.array_equal(*streams)
    assert abs(np.corrcoef(*streams)[0, 1]) < Z / np.sqrt(200_000)


# The noise a live server adds ------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("noise")
    pixel = np.zeros(64)
    pixel[27] = 1.0  # z = x[27] + noise[27]
    write_histogram_model(repo, "pixel", pixel, CENTERS + 0.5, SIGMA, SHAPE)
    # z = mean(x) * 8 + sum(noise) / 8 ~ N(4, sigma^2) only if the 64 draws are independent
    write_histogram_model(repo, "sum", np.full(64, 1 / 8), CENTERS + 4.0, SIGMA, SHAPE)
    return repo


@pytest.fixture(scope="module", params=GENERATORS)
def servers(repo, request):
    generator = ["--noise-generator", request.param]
    with ServerProcess(repo, ["--batch-size", "1024", *generator]) as big, ServerProcess(
        repo, ["--batch-size", "7", "--pipeline-depth", "1", "--max-n", "20000", *generator]
    ) as small:
        for server in (big, small):
            with SmoothServeClient(server.address) as client:
                assert client.model_info("pixel").noise_generator == request.param
        yield big, small


GREY = np.full(SHAPE, 0.5, np.float32)


@pytest.mark.parametrize(("model", "n"), [("pixel", 1_000_000), ("sum", 500_000)])
def test_live_noise_is_gaussian_at_sigma(servers, model, n):
    with SmoothServeClient(servers[0].address, timeout=120) as client:
        result = client.predict(model, GREY, mode="predict", n=n)
    counts = np.array(result.counts)
    assert result.sigma == SIGMA and counts.sum() == n
    expected = _bin_probabilities(SIGMA) * n
    assert stats.chisquare(counts, expected).pvalue > P_MIN
    # Mean: half above the centre; variance: P(|z - mean| < sigma) = 68.27 %.
    for observed, p in ((counts[9:].sum() / n, 0.5), (counts[7:11].sum() / n, 0.6827)):
        assert abs(observed - p) < Z * np.sqrt(p * (1 - p) / n)
    # A sigma 10 % off would be rejected outright.
    assert stats.chisquare(counts, _bin_probabilities(1.1 * SIGMA) * n).pvalue < P_MIN


def _above(client: SmoothServeClient, n: int) -> int:
    return sum(client.predict("pixel", GREY, mode="predict", n=n).counts[9:])


def test_requests_and_processes_are_independent(servers):
    big, small = servers
    with SmoothServeClient(big.address) as a, SmoothServeClient(small.address) as b:
        runs_a = np.array([_above(a, 64) for _ in range(200)], float)
        runs_b = np.array([_above(b, 64) for _ in range(200)], float)
    bound = Z / np.sqrt(200)
    assert abs(np.corrcoef(runs_a[:-1], runs_a[1:])[0, 1]) < bound  # consecutive requests
    assert abs(np.corrcoef(runs_a, runs_b)[0, 1]) < bound  # two server processes
    assert not np.array_equal(runs_a, runs_b)
    # Each count is Binomial(64, 1/2), variance 16: no hidden reuse shrinks the spread.
    for runs in (runs_a, runs_b):
        statistic = (len(runs) - 1) * runs.var(ddof=1) / 16
        tail = stats.chi2.cdf(statistic, len(runs) - 1)
        assert P_MIN < tail < 1 - P_MIN


def test_no_seed_never_repeats(servers):
    with SmoothServeClient(servers[0].address) as client:
        results = [client.predict("pixel", GREY, n0=100, n=2000) for _ in range(30)]
    assert all(r.seed is None for r in results)
    assert len({(r.counts, r.selection_counts) for r in results}) == 30


def test_a_seed_reproduces_counts_across_batching_and_concurrency(servers):
    big, small = servers
    seed = 2**63 + 12345

    def seeded(address: str) -> tuple:
        with SmoothServeClient(address) as client:
            r = client.predict("pixel", GREY, n0=100, n=5000, seed=seed)
            assert r.seed == seed
            return r.counts, r.selection_counts

    reference = seeded(big.address)
    assert seeded(small.address) == reference  # batches of 7 samples instead of 1024
    with ThreadPoolExecutor(8) as pool, SmoothServeClient(big.address) as noisy:
        others = [pool.submit(noisy.predict, "sum", GREY, n0=50, n=3000) for _ in range(16)]
        concurrent = [pool.submit(seeded, big.address) for _ in range(4)]
        concurrent += [pool.submit(seeded, small.address) for _ in range(2)]
        assert all(f.result() == reference for f in concurrent)
        assert all(sum(f.result().counts) == 3000 for f in others)
    with SmoothServeClient(big.address) as client:
        other = client.predict("pixel", GREY, n0=100, n=5000, seed=seed + 1)
    assert (other.counts, other.selection_counts) != reference


# Job streams: the noise of a job as a function of the sample index, for each generator ------


def _fill_all(stream, out: np.ndarray, x: np.ndarray, start: int = 0, reverse: bool = False):
    pieces = stream.pieces(out, start)
    for rows, generator in reversed(pieces) if reverse else pieces:  # any order within a call
        stream.fill(rows, x, SIGMA, generator)


@pytest.mark.parametrize("generator", GENERATORS)
def test_stream_noise_is_gaussian_at_sigma(generator):
    x = noise_generator().uniform(0, 1, SHAPE).astype(np.float32)
    stream = noise_stream(noise_generator(), SHAPE, generator)
    assert stream.generator == generator
    out = np.empty((65_536, *SHAPE), np.float32)  # 4.2 million draws, in many pieces
    _fill_all(stream, out, x)
    eps = (out.astype(np.float64) - x).ravel()
    assert abs(eps.mean()) < Z * SIGMA / np.sqrt(eps.size)
    assert abs(eps.var() - SIGMA**2) < Z * SIGMA**2 * np.sqrt(2 / eps.size)
    assert stats.kstest(eps, stats.norm(scale=SIGMA).cdf).pvalue > P_MIN
    assert stats.normaltest(eps).pvalue > P_MIN
    rows = out.reshape(len(out), -1).astype(np.float64) - x.reshape(-1)
    for a, b in ((rows[:, :-1], rows[:, 1:]), (rows[:-1], rows[1:])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < Z / np.sqrt(a.size)


@pytest.mark.parametrize("generator", GENERATORS)
def test_stream_ignores_how_the_samples_are_cut(generator):
    shape = (1, 28, 28)  # 167 samples per chunk
    x = np.full(shape, 0.5, np.float32)
    whole = np.empty((1_000, *shape), np.float32)
    _fill_all(noise_stream(noise_generator(5), shape, generator), whole, x)
    cut = np.empty_like(whole)
    stream, start = noise_stream(noise_generator(5), shape, generator), 0
    for size in (7, 300, 1, 166, 526):
        _fill_all(stream, cut[start : start + size], x, start, reverse=True)
        start += size
    assert np.array_equal(whole, cut)
    # A stream that starts mid-job (its earlier samples went elsewhere) agrees too.
    late = noise_stream(noise_generator(5), shape, generator)
    tail = np.empty((500, *shape), np.float32)
    _fill_all(late, tail, x, start=500)
    assert np.array_equal(whole[500:], tail)


@pytest.mark.parametrize("generator", GENERATORS)
def test_stream_chunks_and_streams_are_independent(generator):
    shape = (1, 28, 28)
    rng = noise_generator(9)
    first, second = noise_stream(rng, shape, generator), noise_stream(rng, shape, generator)
    a = np.empty((2_000, *shape), np.float32)
    b = np.empty_like(a)
    zero = np.zeros(shape, np.float32)
    _fill_all(first, a, zero)
    _fill_all(second, b, zero)  # selection and estimation draws of one request
    chunk = first.chunk
    flat = a.reshape(len(a), -1)
    chunks = [flat[i : i + chunk].ravel() for i in range(0, len(a) - chunk, chunk)]
    # No chunk repeats another, and neighbouring chunks are uncorrelated.
    assert len({c[:16].tobytes() for c in chunks}) == len(chunks)
    for left, right in zip(chunks, chunks[1:], strict=False):
        assert abs(np.corrcoef(left, right[: len(left)])[0, 1]) < 0.01
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01


def test_ars5_keys_take_128_bits_from_the_request_generator():
    rng = noise_generator()
    keys = [noise_stream(rng, SHAPE, "ars5")._key for _ in range(2_000)]
    assert all(key.dtype == np.uint32 and key.shape == (4,) for key in keys)
    assert len({key.tobytes() for key in keys}) == len(keys)
    words = np.array(keys)
    # Every word spans 32 bits: its top bit is set about half the time.
    assert np.all(np.abs((words >> 31).mean(axis=0) - 0.5) < Z * 0.5 / np.sqrt(len(keys)))
    # Each of the four words changes the noise: the key is 128 bits, not one word.
    x = np.zeros(SHAPE, np.float32)
    base = noise_stream(noise_generator(3), SHAPE, "ars5")
    reference = np.empty((4, *SHAPE), np.float32)
    _fill_all(base, reference, x)
    for word in range(4):
        other = noise_stream(noise_generator(3), SHAPE, "ars5")
        other._key = base._key.copy()
        other._key[word] ^= 1
        out = np.empty_like(reference)
        _fill_all(other, out, x)
        assert not np.array_equal(out, reference)


def test_ars5_noise_differs_between_processes():
    code = (
        "import sys, numpy as np; from smoothserve.noise import noise_generator, noise_stream; "
        "s = noise_stream(noise_generator(), (1, 8, 8), 'ars5'); out = np.empty((4000, 1, 8, 8), "
        "np.float32); [s.fill(r, np.zeros((1, 8, 8), np.float32), 1.0, g) for r, g in "
        "s.pieces(out, 0)]; sys.stdout.buffer.write(out.tobytes())"
    )
    streams = [
        np.frombuffer(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                     check=True).stdout, np.float32)
        for _ in range(2)
    ]  # fmt: skip
    assert len(streams[0]) == 256_000 and not np.array_equal(*streams)
    assert abs(np.corrcoef(*streams)[0, 1]) < Z / np.sqrt(256_000)


def test_generator_choice(monkeypatch):
    assert noise.resolve_generator("auto") == "ars5"  # the dev install has the extra
    assert noise.resolve_generator("pcg64") == "pcg64"
    # Sound noise needs 64-bit uniforms: it always draws from PCG64.
    assert noise_stream(noise_generator(), SHAPE, "ars5", sound=True).generator == "pcg64"
    monkeypatch.setattr(noise, "mkl_random", None)
    assert noise.resolve_generator("auto") == "pcg64"
    with pytest.raises(ValueError, match="fastnoise extra"):
        noise.resolve_generator("ars5")


def test_a_server_asked_for_a_missing_generator_says_so(repo, monkeypatch, tmp_path):
    """Without the extra (hidden here by an import hook), --noise-generator ars5 stops the
    server with a one-line reason, and auto falls back to PCG64."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "mkl_random.py").write_text("raise ImportError('hidden for the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(hide))
    result = subprocess.run(
        [sys.executable, "-m", "smoothserve", "--model-repo", str(repo), "--port", "0",
         "--metrics-port", "-1", "--noise-generator", "ars5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "fastnoise extra" in result.stderr and "Traceback" not in result.stderr
    with (
        ServerProcess(repo, ["--noise-generator", "auto"]) as server,
        SmoothServeClient(server.address) as client,
    ):
        assert client.model_info("pixel").noise_generator == "pcg64"


def test_noise_threads_leave_the_cores_to_a_network_on_the_same_cpu(monkeypatch):
    from smoothserve.config import ServerConfig

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert ServerConfig().noise_threads_for(network_on_this_cpu=True) == 4
    assert ServerConfig().noise_threads_for(network_on_this_cpu=False) == 16
    assert ServerConfig(noise_threads=3).noise_threads_for(network_on_this_cpu=True) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert ServerConfig().noise_threads_for(network_on_this_cpu=True) == 1


# False certificates: what a noise source that broke independence would do to a radius ------


class _KeyedByCall(noise.Ars5Stream):
    """A broken stream: each call restarts at sample 0, so the batches of one job repeat."""

    def pieces(self, out, start):
        self._open = None
        return super().pieces(out, 0)


def _false_certificate_rate(make_stream, trials: int = 300) -> float:
    """CERTIFY on a linear classifier whose exact radius is known (tests/test_linear_radius.py),
    its samples drawn in calls of 10 as the scheduler cuts a job shared with other requests;
    the fraction of certificates whose radius exceeds the truth, at alpha = 0.1."""
    from smoothcert.families import FAMILIES
    from smoothcert.procedures.fixed_n import certify

    w = np.random.default_rng(1).normal(size=SHAPE)
    x = np.full(SHAPE, 0.5) + 0.15 * w / np.linalg.norm(w)  # 0.15 from the boundary w.(x - 0.5)
    truth = 0.15
    rng = noise_generator()
    false = 0
    for _ in range(trials):
        counts = []
        for num in (20, 200):  # selection, then estimation: one stream each
            stream, votes = make_stream(rng), np.zeros(2, int)
            for start in range(0, num, 10):
                out = np.empty((10, *SHAPE), np.float32)
                for rows, generator in stream.pieces(out, start):
                    stream.fill(rows, x.astype(np.float32), SIGMA, generator)
                score = (out.reshape(10, -1).astype(np.float64) - 0.5) @ w.reshape(-1)
                votes += np.bincount((score > 0).astype(int), minlength=2)
            counts.append(votes)
        result = certify(counts[0], counts[1], FAMILIES["gaussian"], SIGMA, 0.1)
        false += result.prediction == 1 and result.radius > truth
    return false / trials


# At most alpha = 0.1 of certificates may be false; Clopper-Pearson keeps it well below. The
# bound allows 4 standard errors above alpha.
FALSE_RATE_BOUND = 0.1 + 4 * np.sqrt(0.1 * 0.9 / 300)


@pytest.mark.parametrize("generator", GENERATORS)
def test_false_certificates_stay_within_alpha(generator):
    rate = _false_certificate_rate(lambda rng: noise_stream(rng, SHAPE, generator))
    assert rate <= FALSE_RATE_BOUND


def test_the_false_certificate_check_catches_noise_reused_across_batches():
    """The check above can fail: noise keyed by call instead of sample index (every batch of
    a job the same) certifies radii beyond the truth far more often than alpha."""
    rate = _false_certificate_rate(lambda rng: _KeyedByCall(rng, SHAPE))
    assert rate > FALSE_RATE_BOUND
