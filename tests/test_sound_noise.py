"""Floating-point-sound noise (``sound_noise.py``, after Voráček and Hein, ICLR 2023): the
threshold table against mpmath, the noise's moments, reproducibility however the samples are
batched, undecided draws, and the option end to end on a live server."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from fractions import Fraction

import grpc
import mpmath
import numpy as np
import pytest
from conftest import LINEAR_SHAPE, LINEAR_SIGMA, linear_weights
from test_linear_radius import point_at
from test_scheduler import make_scheduler

from smoothcert.model_config import ModelConfigError, SmoothModelConfig
from smoothserve import sampling
from smoothserve.errors import FailedPrecondition, Unavailable
from smoothserve.noise import NoiseStream, Pcg64Stream, noise_generator
from smoothserve.sound_noise import (
    LEVELS,
    check_sound_config,
    draw_offsets,
    fill_sound_copies,
    lattice_values,
    sound_lattice,
)
from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess

ONE = 2**64
# (sigma, low, high): the linear model's, Fashion-MNIST's larger sigma, and another range.
CASES = ((0.25, 0.0, 1.0), (0.5, 0.0, 1.0), (0.3, -1.0, 1.0))


def mp_step(sigma: float, low: float, high: float) -> mpmath.mpf:
    """Lattice step over sigma, from the exact binary64 values."""
    ratio = (Fraction(high) - Fraction(low)) / (LEVELS * Fraction(sigma))
    return mpmath.mpf(ratio.numerator) / ratio.denominator


@pytest.mark.parametrize("sigma, low, high", CASES)
def test_thresholds_are_the_exact_floors_of_the_gaussian_cdf(sigma, low, high) -> None:
    lattice = sound_lattice(sigma, low, high)
    table = [int(t) for t in lattice.thresholds]
    assert len(table) == 2 * lattice.bound and table == sorted(table)
    with mpmath.workdps(60):
        s = mp_step(sigma, low, high)
        expected = [
            int(mpmath.floor(mpmath.ncdf((j + mpmath.mpf(1) / 2) * s) * ONE))
            for j in range(-lattice.bound, lattice.bound)
        ]
    assert table == expected


@pytest.mark.parametrize("sigma, low, high", CASES[:2])
def test_bin_masses_are_the_gaussian_masses_of_their_cells(sigma, low, high) -> None:
    """Offset m stands for the cell [(m - 1/2) step, (m + 1/2) step) of N(0, sigma^2), the end
    offsets for the tails beyond: masses by quadrature of the density, not by the CDF."""
    lattice = sound_lattice(sigma, low, high)
    bounds = [0, *(int(t) for t in lattice.thresholds), ONE]
    widths = np.diff(np.array(bounds, dtype=object))  # 2M + 1 bins, in units of 2^-64
    m_bound = lattice.bound
    with mpmath.workdps(40):
        s = mp_step(sigma, low, high)
        density = mpmath.npdf
        for m in range(-40, 41):  # the cells that hold almost all the mass
            mass = mpmath.quad(density, [(m - 0.5) * s, (m + 0.5) * s])
            assert abs(widths[m + m_bound] - mass * ONE) < 1, m
        tail = mpmath.quad(density, [-mpmath.inf, (-m_bound + 0.5) * s])
        assert abs(widths[0] - tail * ONE) < 1  # far below 2^-64: no draw lands there
        assert abs(sum(widths) - ONE) == 0


def test_undecided_draws_are_counted() -> None:
    lattice = sound_lattice(0.25, 0.0, 1.0)
    t = lattice.thresholds
    m, at = lattice.bound, int(t[lattice.bound])  # the boundary between offsets 0 and 1
    uniforms = np.array([at, at + 1, at - 1, 0, 2**64 - 1, int(t[m + 3])], np.uint64)
    positions, undecided = draw_offsets(uniforms, lattice)
    assert undecided == 4  # t[m], 0 and 2^64 - 1 (tail thresholds), t[m + 3]
    assert positions[1] == m + 1 and positions[2] == m  # above and below the boundary


@pytest.mark.parametrize("sigma, low, high", CASES)
def test_the_guided_search_is_a_binary_search(sigma, low, high) -> None:
    """draw_offsets against np.searchsorted: random uniforms, every threshold and its
    neighbours, every bucket's edges, and a run of uniforms deep in each tail."""
    lattice = sound_lattice(sigma, low, high)
    t = [int(v) for v in lattice.thresholds]
    edges = [b << 48 for b in range(2**16)] + [(b << 48) - 1 for b in range(1, 2**16)]
    special = {u for v in t for u in (v - 1, v, v + 1) if 0 <= u < ONE}
    tails = [*range(0, 2**20, 997), *range(ONE - 2**20, ONE, 997)]
    rng = np.random.default_rng(3)
    uniforms = np.concatenate([
        rng.bit_generator.random_raw(200_000),
        np.array(sorted(special) + edges + tails, np.uint64),
    ])  # fmt: skip
    positions, undecided = draw_offsets(uniforms, lattice)
    assert np.array_equal(positions, np.searchsorted(lattice.thresholds, uniforms))
    ties = np.isin(uniforms, lattice.thresholds) | (uniforms == np.uint64(ONE - 1))
    assert undecided == np.count_nonzero(ties)


def test_noise_has_the_discretized_gaussian_moments() -> None:
    sigma = 0.25
    lattice = sound_lattice(sigma, 0.0, 1.0)
    k = np.full(LINEAR_SHAPE, 128, np.int16)
    out = np.empty((20_000, *LINEAR_SHAPE), np.float32)
    assert fill_sound_copies(out, k, lattice, noise_generator(1)) == 0
    offsets = np.rint(out.astype(np.float64) * LEVELS).astype(np.int64) - 128
    assert np.array_equal(lattice.value_of(offsets + 128), out)  # every value on the lattice
    step = 1 / LEVELS
    noise = offsets * step
    count = noise.size
    variance = sigma**2 + step**2 / 12  # Sheppard: the rounding adds step^2 / 12
    assert abs(noise.mean()) < 5 * np.sqrt(variance / count)
    # Var of the sample variance ~ 2 sigma^4 / count for a Gaussian.
    assert abs(noise.var() - variance) < 5 * np.sqrt(2 * variance**2 / count)
    zero = float(mpmath.ncdf(0.5 * step / sigma) - mpmath.ncdf(-0.5 * step / sigma))
    assert abs(np.mean(offsets == 0) - zero) < 5 * np.sqrt(zero / count)


def test_clipping_only_touches_the_far_tails() -> None:
    lattice = sound_lattice(0.25, 0.0, 1.0)
    assert lattice.clip == 2 * LEVELS and lattice.bound == LEVELS + lattice.clip
    assert lattice.values[0] == -2.0 and lattice.values[-1] == 3.0
    m = lattice.bound  # noisy[k + m + M]: clipped wherever k + m leaves [-L, 255 + L]
    assert np.array_equal(lattice.noisy[: m - lattice.clip + 1], np.full(m - lattice.clip + 1, -2))
    assert np.array_equal(lattice.noisy[m - lattice.clip : m + LEVELS + lattice.clip + 1],
                          lattice.values)  # fmt: skip
    assert lattice.noisy[-1] == 3.0 and len(lattice.noisy) == LEVELS + 2 * m + 1
    assert np.array_equal(lattice_values(0.0, 1.0, 0), (np.arange(256) / 255).astype(np.float32))


def test_a_stream_gives_the_same_sound_noise_however_it_is_cut() -> None:
    lattice = sound_lattice(0.25, 0.0, 1.0)
    shape = (1, 28, 28)
    k = np.random.default_rng(0).integers(0, 256, shape).astype(np.int16)

    def fill(stream: NoiseStream, out: np.ndarray, start: int) -> None:
        for rows, generator in stream.pieces(out, start):
            assert fill_sound_copies(rows, k, lattice, generator) == 0

    whole = np.empty((500, *shape), np.float32)
    fill(Pcg64Stream(noise_generator(5), shape, sound=True), whole, 0)
    cut, start = np.empty_like(whole), 0
    stream = Pcg64Stream(noise_generator(5), shape, sound=True)
    for size in (7, 300, 1, 166, 26):
        fill(stream, cut[start : start + size], start)
        start += size
    assert np.array_equal(whole, cut)
    # A stream asked for samples 250.. first skips the draws of 167..249 (within a chunk).
    late = np.empty((250, *shape), np.float32)
    fill(Pcg64Stream(noise_generator(5), shape, sound=True), late, 250)
    assert np.array_equal(late, whole[250:])


def lattice_input() -> np.ndarray:
    return np.rint(point_at(0.3, 1) * LEVELS).astype(np.int16)


def test_seeded_sound_counts_do_not_depend_on_batching(linear_repo) -> None:
    k = lattice_input()

    async def run(batch_size: int, others: int, threads: int = 1):
        scheduler, _ = await make_scheduler(linear_repo, batch_size, depth=2, noise_threads=threads)
        x = np.full(LINEAR_SHAPE, 0.5, np.float32)
        noise = [scheduler.count(x, 3_000, noise_generator(100 + i)) for i in range(others)]
        target = scheduler.count(k, 5_000, noise_generator(7), sound=True)
        *_, counts = await asyncio.gather(*noise, target)
        await scheduler.close()
        return counts.tolist()

    alone = asyncio.run(run(batch_size=4096, others=0))
    assert asyncio.run(run(batch_size=100, others=3)) == alone
    assert asyncio.run(run(batch_size=777, others=2, threads=2)) == alone


def test_an_undecided_draw_fails_its_job_alone(linear_repo, monkeypatch) -> None:
    def always_undecided(*args) -> int:
        fill_sound_copies(*args)
        return 1

    monkeypatch.setattr(sampling, "fill_sound_copies", always_undecided)

    async def main():
        scheduler, _ = await make_scheduler(linear_repo, 1024)
        x = np.full(LINEAR_SHAPE, 0.5, np.float32)
        gaussian = scheduler.count(x, 2_000, noise_generator(1))
        sound = scheduler.count(lattice_input(), 2_000, noise_generator(2), sound=True)
        results = await asyncio.gather(gaussian, sound, return_exceptions=True)
        await scheduler.close()
        return results

    counts, error = asyncio.run(main())
    assert int(counts.sum()) == 2_000
    assert isinstance(error, Unavailable) and "undecided" in str(error)


def test_device_noise_refuses_sound_jobs(linear_repo) -> None:
    async def main():
        scheduler, _ = await make_scheduler(linear_repo, 256, device=True)
        try:
            with pytest.raises(FailedPrecondition, match="sound"):
                await scheduler.count(lattice_input(), 100, noise_generator(1), sound=True)
        finally:
            await scheduler.close()

    asyncio.run(main())


def test_config_parameter_round_trips_and_is_checked() -> None:
    config = SmoothModelConfig("m", 0.25, ("a", "b"), (1, 8, 8), sound_noise=True)
    text = config.to_pbtxt()
    assert 'key: "smoothserve_sound_noise"' in text
    assert SmoothModelConfig.from_pbtxt(text).sound_noise is True
    plain = replace(config, sound_noise=False).to_pbtxt()
    assert SmoothModelConfig.from_pbtxt(plain).sound_noise is False
    with pytest.raises(ModelConfigError, match="smoothserve_sound_noise"):
        SmoothModelConfig.from_pbtxt(text.replace('"true"', '"yes"'))
    with pytest.raises(ModelConfigError, match="sound noise supports sigma"):
        check_sound_config(replace(config, sigma=50.0).check())  # the server's check at load
    with pytest.raises(ModelConfigError, match="needs Gaussian noise"):
        replace(config, noise_family="uniform").check()


# A live server -------------------------------------------------------------------------------


def true_distance(k: np.ndarray) -> float:
    w, b = linear_weights()
    return abs(float(np.sum(w.astype(np.float64) * (k / LEVELS))) + b) / float(np.linalg.norm(w))


def test_sound_certificates_stay_within_the_true_radius(client) -> None:
    """The linear model's known radius (test_linear_radius.py), on uint8 lattice points: the
    rounding adds step^2 / 12 to the noise's variance, which lowers p_A by ~1e-5 relative."""
    gaps = []
    for side in (1, -1):
        for distance in (0.1, 0.35):
            k = np.rint(point_at(distance, side) * LEVELS).astype(np.uint8)
            truth = true_distance(k)
            r = client.predict("linear", k, n0=100, n=100_000, alpha=0.001, sound_noise=True,
                               seed=int(distance * 100) + side)  # fmt: skip
            assert r.sound_noise and r.prediction == (1 if side > 0 else 0)
            assert r.radius <= truth, (distance, side, r.radius, truth)
            gaps.append(truth - r.radius)
    assert max(gaps) < 0.02, gaps


def test_lattice_floats_equal_uint8_and_off_lattice_floats_are_refused(client) -> None:
    k = np.rint(point_at(0.2, 1) * LEVELS).astype(np.uint8)
    as_uint8 = client.predict("linear", k, n=2_000, seed=11, sound_noise=True)
    as_float = client.predict(
        "linear", (k / 255).astype(np.float32), n=2_000, seed=11, sound_noise=True
    )
    assert as_float.counts == as_uint8.counts and as_float.sound_noise
    with pytest.raises(SmoothServeError) as refused:
        client.predict("linear", point_at(0.2, 1), n=2_000, sound_noise=True)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "lattice" in refused.value.details


def test_the_signed_record_says_whether_the_noise_was_sound(client) -> None:
    k = np.rint(point_at(0.2, 1) * LEVELS).astype(np.uint8)
    sound = client.predict("linear", k, n=1_000, sound_noise=True)
    plain = client.predict("linear", k, n=1_000)
    assert json.loads(sound.record)["sound_noise"] is True
    assert json.loads(plain.record)["sound_noise"] is False and not plain.sound_noise


@pytest.fixture(scope="module")
def sound_client(tmp_path_factory):
    """A server whose model's config turns sound noise on for every request."""
    repo = tmp_path_factory.mktemp("sound_repo")
    w, b = linear_weights()
    model_dir = write_linear_model(repo, "linear_sound", w, b, LINEAR_SIGMA, LINEAR_SHAPE)
    config = SmoothModelConfig.from_pbtxt((model_dir / "config.pbtxt").read_text())
    replace(config, sound_noise=True).write(model_dir)
    with ServerProcess(repo) as server, SmoothServeClient(server.address, timeout=60) as c:
        yield c


def test_a_model_configured_sound_is_sound_for_every_request(sound_client) -> None:
    k = np.rint(point_at(0.2, 1) * LEVELS).astype(np.uint8)
    assert sound_client.predict("linear_sound", k, n=1_000).sound_noise
    with pytest.raises(SmoothServeError) as off:
        sound_client.predict("linear_sound", k, n=1_000, sound_noise=False)
    assert off.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(SmoothServeError) as floats:
        sound_client.predict("linear_sound", point_at(0.2, 1), n=1_000)
    assert floats.value.code == grpc.StatusCode.INVALID_ARGUMENT
