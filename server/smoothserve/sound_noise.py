"""Floating-point-sound noise: randomized smoothing on the 1/255 lattice, after Voráček and
Hein, "Sound Randomized Smoothing in Floating-Point Arithmetic" (ICLR 2023).

**The problem.** Cohen et al.'s certificate is a theorem about x + ε with ε a real Gaussian.
The server feeds the network float32(x + float32 noise) instead, and a network can read the
rounding: which float32 values occur next to x depends on x itself, so a classifier can
behave differently on the noisy copies of x than on those of a point 0.8 away, and CERTIFY
certifies a radius of 1.26 there (their example). The certificate is then false.

**The construction.** Inputs lie on the lattice of the model's 8-bit pixels,
``low + k (high - low) / 255`` for integer k (uint8 inputs always do). Let q round every
coordinate to the nearest lattice point and clip it to ``[-L, 255 + L]`` (in lattice steps;
L = 255 c with c = max(1, ceil(6 σ / (high - low))) value ranges). The base classifier is
h = f ∘ q, and its smoothed classifier g(z) = argmax_c P[h(z + ε) = c] is certified as
usual, with the radius formula unchanged: σ Φ⁻¹(p̲A), for every perturbation in R^d, on or off
the lattice. For x on the lattice, q(x + ε) = x + q(ε) coordinate-wise, so h(x + ε) only needs
the integer m = q(ε) / step of each coordinate: m has the *discretized Gaussian* law

    P[m] = Φ((m + ½) s) - Φ((m - ½) s),   s = step / σ,

and every m beyond ±M, M = 255 + L, clips to the same value for every k in [0, 255], so the
tails are lumped into ±M without changing h(x + ε). The network sees a deterministic
function of the integer k + m (``SoundLattice.values``): no floating-point noise is ever added.

**Sampling with 64-bit uniforms.** P[m] is irrational, so no fixed number of coin flips draws
it exactly. Inversion against the exact CDF does: with V = (U + R) / 2^64, U the 64-bit
uniform drawn and R ∈ [0, 1) the bits after it, m is the number of boundaries Φ((j + ½) s) at
or below V. The table holds T_j = floor(2^64 Φ((j + ½) s)) exactly. If U differs from every
T_j, the count of T_j < U *is* that number (T_j < U implies 2^64 Φ_j < T_j + 1 <= U <= U + R;
T_j > U implies 2^64 Φ_j >= T_j >= U + 1 > U + R), so the draw equals exact inversion. If U
equals some T_j (probability at most 2M / 2^64 ≈ 2^-53 per coordinate at σ = 0.25 on [0, 1]),
the draw is *undecided*: the fill reports it and the server refuses the request (UNAVAILABLE)
instead of guessing. A certificate is only issued when every draw was decided, i.e. when its
counts equal those of exact sampling, so P[a wrong certificate] <= α exactly as before, with
no correction to the bound. (Their code keeps 60-bit thresholds, shrinks every bin by one
unit so that each bin's mass stays below the true one, and treats the left-over mass as a
failure; refusing on ties is the same idea with nothing to shrink.) Each coordinate takes
exactly one 64-bit output of the generator, so sample i's noise still depends only on the
stream's key and i.

**Precision of the table.** The thresholds are computed with :mod:`decimal` at 100
significant digits (every operation correctly rounded; π from Machin's formula with integer
arithmetic), so the server needs no extra package; ``threshold_table`` refuses (SoundNoiseError)
any threshold whose 2^64 Φ lies within 10^-30 of an integer, where that precision could not
settle the floor. For |z| >= 10, Φ(-z) < φ(10) / 10 < 10^-23 < 2^-64 (Mills' ratio), so those
thresholds are 0 and 2^64 - 1 without computing. tests/test_sound_noise.py checks the table
against mpmath independently.

**What this does not cover.** Off-lattice float inputs (refused), the network's own
floating-point evaluation (h is whatever the network computes on those exact inputs, which
is fine: it is a deterministic function), and noise drawn on a device (refused).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

from smoothcert.model_config import ModelConfigError, SmoothModelConfig

LEVELS = 255  # lattice steps across the value range: 8-bit pixels
ONE = 2**64  # the uniforms are 64-bit
DIGITS = 100  # working precision of the table, in significant decimal digits
MARGIN = Decimal("1e-30")  # how far from an integer 2^64 Phi must be for its floor to stand
TAIL_Z = 10  # beyond: Phi(-z) < 2^-64, thresholds 0 and 2^64 - 1 (see the module doc)
MAX_CLIP_RANGES = 24  # c <= 24, i.e. sigma <= 4 value ranges: at most 12,750 thresholds
GUIDE_BITS = 16  # the guide table splits [0, 2^64) into 2^16 buckets by the top bits


class SoundNoiseError(ValueError):
    """A model whose sound lattice cannot be built (sigma too large for the table, or a
    threshold the working precision cannot settle)."""


def clip_ranges(sigma: float, low: float, high: float) -> int:
    """c: the lattice is clipped to [low - c (high - low), high + c (high - low)]."""
    return max(1, math.ceil(6 * sigma / (high - low)))


def _pi() -> Decimal:
    """π to the context's precision (plus guard digits), by Machin's formula on integers."""
    with localcontext() as ctx:
        digits = ctx.prec + 20
        unit = 10**digits

        def arctan_inverse(x: int) -> int:  # arctan(1/x) * unit, each term truncated
            total, power, k = 0, unit // x, 0
            while power:
                term = power // (2 * k + 1)
                total += -term if k % 2 else term
                power //= x * x
                k += 1
            return total

        ctx.prec = digits
        pi = Decimal(16 * arctan_inverse(5) - 4 * arctan_inverse(239)) / Decimal(unit)
    return +pi


def _scaled_cdf(z: Fraction, sqrt_two_pi: Decimal) -> Decimal:
    """2^64 Φ(z) for 0 <= z < TAIL_Z: Φ(z) = ½ + φ(z) Σ_k z^(2k+1) / (2k+1)!!, a series of
    positive terms (no cancellation)."""
    zd = Decimal(z.numerator) / Decimal(z.denominator)
    square, term, total, k = zd * zd, zd, Decimal(0), 0
    while True:
        total += term
        k += 1
        term = term * square / (2 * k + 1)
        if term < total.scaleb(-DIGITS - 5):
            break
    density = (-square / 2).exp() / sqrt_two_pi
    return (Decimal(1) / 2 + density * total) * ONE


def threshold_table(step_over_sigma: Fraction, bound: int) -> list[int]:
    """T_j = floor(2^64 Φ((j + ½) s)) for j = -bound .. bound - 1, s = ``step_over_sigma``:
    the 2 bound boundaries between the lattice offsets -bound .. bound (see the module doc)."""
    with localcontext() as ctx:
        ctx.prec = DIGITS
        sqrt_two_pi = (2 * _pi()).sqrt()
        upper = []  # T for the boundaries (j + ½) s with j = 0 .. bound - 1
        for j in range(bound):
            z = (j + Fraction(1, 2)) * step_over_sigma
            if z >= TAIL_Z:
                upper.append(ONE - 1)
                continue
            scaled = _scaled_cdf(z, sqrt_two_pi)
            floor = int(scaled)
            if not MARGIN < scaled - floor < 1 - MARGIN:
                raise SoundNoiseError(f"2^64 Phi({float(z)}) is too close to an integer")
            upper.append(floor)
    # Φ(-z) = 1 - Φ(z), and 2^64 Φ(z) is not an integer: floor(2^64 - y) = 2^64 - 1 - floor(y).
    lower = [ONE - 1 - t for t in reversed(upper)]
    return lower + upper


@dataclass(frozen=True, eq=False)
class SoundLattice:
    """Everything the sound fill needs for one model (sigma and value range).

    ``thresholds``: T_j as uint64 (2M of them). ``values``: the float32 the network sees for
    each clipped lattice index n = -L .. 255 + L, at position n + L. ``noisy``: the same with
    the clipping folded in, at position k + (m + M) for k in [0, 255] and m in [-M, M]:
    values[clip(k + m) + L]. ``guide``: for each bucket of ``GUIDE_BITS`` top bits, how many
    thresholds lie below it (an indexed search, Chen and Asau 1974), then the total, so bucket
    b holds thresholds guide[b] .. guide[b + 1] - 1; ``search`` is ``thresholds`` followed by
    the sentinel 2^64 - 1, so that the first threshold at or after any bucket can be read."""

    sigma: float
    low: float
    high: float
    bound: int  # M: offsets run over -M .. M
    clip: int  # L
    thresholds: np.ndarray
    values: np.ndarray
    noisy: np.ndarray
    guide: np.ndarray
    search: np.ndarray

    def value_of(self, k: np.ndarray) -> np.ndarray:
        """The float32 of lattice indices k (in [-L, 255 + L]): the canonical encoding."""
        return self.values[np.asarray(k, np.int64) + self.clip]


def lattice_values(low: float, high: float, clip: int) -> np.ndarray:
    """float32 of the float64 nearest to low + n (high - low) / 255, n = -clip .. 255 + clip:
    exact rationals, rounded once to float64 (``float(Fraction)``), then to float32; for the
    value range [0, 1] this is ``np.float32(n / 255)``."""
    width = Fraction(high) - Fraction(low)
    exact = [Fraction(low) + n * width / LEVELS for n in range(-clip, LEVELS + clip + 1)]
    return np.array([float(v) for v in exact], np.float64).astype(np.float32)


@functools.lru_cache(maxsize=16)
def sound_lattice(sigma: float, low: float, high: float) -> SoundLattice:
    """The lattice and threshold table of a model (cached: building it takes ~0.1-2 s)."""
    if not (math.isfinite(sigma) and sigma > 0 and math.isfinite(low) and low < high):
        raise SoundNoiseError(f"no sound lattice for sigma {sigma} on [{low}, {high}]")
    c = clip_ranges(sigma, low, high)
    if c > MAX_CLIP_RANGES:
        raise SoundNoiseError(
            f"sound noise supports sigma up to {MAX_CLIP_RANGES / 6:g} value ranges "
            f"({MAX_CLIP_RANGES / 6 * (high - low):g}), got {sigma}"
        )
    clip = LEVELS * c
    bound = LEVELS + clip
    step_over_sigma = (Fraction(high) - Fraction(low)) / (LEVELS * Fraction(sigma))
    thresholds = np.array(threshold_table(step_over_sigma, bound), np.uint64)
    values = lattice_values(low, high, clip)
    noisy_index = np.arange(LEVELS + 2 * bound + 1) - bound  # k + m, k in [0, 255], |m| <= M
    noisy = values[np.clip(noisy_index, -clip, LEVELS + clip) + clip]
    starts = np.arange(2**GUIDE_BITS, dtype=np.uint64) << np.uint64(64 - GUIDE_BITS)
    guide = np.append(np.searchsorted(thresholds, starts), len(thresholds)).astype(np.int32)
    search = np.append(thresholds, np.uint64(ONE - 1))
    return SoundLattice(sigma, low, high, bound, clip, thresholds, values, noisy, guide, search)


def lattice_indices(x: np.ndarray, lattice: SoundLattice) -> np.ndarray | None:
    """The lattice indices k in [0, 255] of float32 pixels ``x``, or None unless every pixel is
    exactly the canonical float32 of its lattice point (``lattice_values``)."""
    width = lattice.high - lattice.low
    k = np.rint((x.astype(np.float64) - lattice.low) * (LEVELS / width))
    if k.min() < 0 or k.max() > LEVELS:
        return None
    k = k.astype(np.int16)
    return k if np.array_equal(lattice.value_of(k), x) else None


def draw_offsets(uniforms: np.ndarray, lattice: SoundLattice) -> tuple[np.ndarray, int]:
    """Table positions (offset m + M) of 64-bit ``uniforms``, i.e. how many thresholds lie
    below each (``np.searchsorted(thresholds, uniforms)``), and how many uniforms were
    undecided (equal to a threshold: see the module doc). Positions are only meaningful when
    that count is 0.

    Most buckets of the guide table hold at most one threshold (all within about 3.5 sigma of
    0), so a position is the bucket's first threshold plus one comparison with it: in a bucket
    without thresholds the next one (or the sentinel) lies above every uniform of the bucket.
    Uniforms in buckets of several thresholds (the far tails, about 0.04% at sigma = 0.25 on
    [0, 1]) take a binary search. The sentinel 2^64 - 1 can only "equal" the uniform
    2^64 - 1 beyond every threshold: a false undecided draw, which only refuses."""
    search, guide = lattice.search, lattice.guide
    bucket = (uniforms >> np.uint64(64 - GUIDE_BITS)).astype(np.intp)
    first = guide.take(bucket)
    several = np.flatnonzero(guide.take(bucket + 1) - first > 1)
    candidate = search.take(first)
    positions = first.astype(np.intp)
    positions += candidate < uniforms
    undecided = np.count_nonzero(candidate == uniforms)
    if len(several):
        tail = uniforms[several]
        candidate = candidate[several]
        undecided -= np.count_nonzero(candidate == tail)  # counted again below
        positions[several] = found = np.searchsorted(lattice.thresholds, tail)
        undecided += np.count_nonzero(search.take(found) == tail)
    return positions, int(undecided)


def fill_sound_copies(
    out: np.ndarray, k: np.ndarray, lattice: SoundLattice, rng: np.random.Generator
) -> int:
    """Overwrite each row of ``out`` with a sound noisy copy of the lattice point ``k``
    (integers in [0, 255]): values[clip(k + m)], m drawn from the discretized Gaussian with one
    64-bit output of ``rng``'s bit generator per coordinate, row after row (so rows drawn in
    pieces equal rows drawn at once). Returns how many draws were undecided: the rows are then
    not exact samples and must not be counted (the caller refuses the request)."""
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous: its rows are written through a flat view")
    rows, size = len(out), k.size
    uniforms = rng.bit_generator.random_raw(rows * size)
    positions, undecided = draw_offsets(uniforms, lattice)
    positions = positions.reshape(rows, size)
    positions += k.reshape(1, size).astype(np.intp)
    # Positions lie in [0, 255 + 2M] by construction; mode "clip" only spares NumPy's buffer.
    np.take(lattice.noisy, positions, out=out.reshape(rows, size), mode="clip")
    return undecided


def skip_sound_draws(rng: np.random.Generator, samples: int, size: int) -> None:
    """Advance ``rng`` past ``samples`` sound samples of ``size`` coordinates each."""
    rng.bit_generator.random_raw(samples * size)


def check_sound_config(config: SmoothModelConfig) -> SmoothModelConfig:
    """``config``, or ModelConfigError when it asks for sound noise the lattice cannot give
    (checked at load, so such a model fails with the reason instead of its first request)."""
    if config.sound_noise:
        try:
            sound_lattice(config.sigma, *config.value_range)
        except SoundNoiseError as exc:
            raise ModelConfigError(str(exc)) from None
    return config
