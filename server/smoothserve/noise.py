"""Smoothing noise drawn on the host, from one of two generators, in the model's noise family
(``smoothcert.families``: Gaussian by default, uniform; the family turns the generator's
output into noise, the stream positions the generator).

- ``ars5`` (the ``fastnoise`` extra, ``mkl-random``): MKL's ARS-5, a counter-based generator
  built on five AES rounds (Salmon et al., SC 2011). Its state is a 128-bit key and a 128-bit
  counter: output i is a function of the key and i alone, and the period is 2**130 32-bit
  words. Normals come from the inverse CDF of one 32-bit uniform each, in double precision
  (so the tails are cut at |z| = 6.3, a mass of 2e-10 per coordinate), rounded to float32
  after scaling; uniform noise, one 32-bit output per value, likewise. About 2.3-3x NumPy's normals per core on this project's machine.
- ``pcg64`` (NumPy, always installed): PCG64, period 2**128, ziggurat normals in float32
  (uniform noise: float32 uniforms, 24 random bits each).

Both periods dwarf a certificate's draws (ImageNet at n = 100,000 draws about 1.5e10
normals). Without a seed, each request's generator is seeded from 128 bits of the operating
system's entropy and each job's key is drawn from it, so the noise is unpredictable; a seed
is only for audits.

Each sampling job (the n0 selection draws, then the n estimation draws) gets a stream from
``noise_stream``. The noise of sample i is a function of the job's key and i alone, so
pieces of a batch can be drawn on several threads, and a seeded request gets the same noise
whatever batches the scheduler cuts it into (for a given generator: ARS-5 and PCG64 give
different noise for the same seed). An ARS-5 stream positions each piece by skipping ahead
to its first sample; a PCG64 stream cuts the job into chunks of about 2**17 normals, chunk c
drawn from the job's PCG64 jumped c times (each jump advances it by about 2**127 draws, so
chunks never overlap).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from smoothcert.families import FAMILIES, NoiseFamily

from .sound_noise import skip_sound_draws

try:  # the fastnoise extra
    import mkl_random
except ImportError:  # pragma: no cover - depends on the install
    mkl_random = None

GAUSSIAN = FAMILIES["gaussian"]
NORMALS_PER_CHUNK = 2**17
GENERATORS = ("ars5", "pcg64")


def noise_generator(seed: int | None = None) -> np.random.Generator:
    """A fresh request generator: OS entropy when ``seed`` is None, else reproducible from
    ``seed``. Jobs' keys are drawn from it."""
    return np.random.Generator(np.random.PCG64(seed))


def fast_generator_installed() -> bool:
    return mkl_random is not None


def resolve_generator(name: str) -> str:
    """The generator ``--noise-generator`` names: ``auto`` is ARS-5 when installed."""
    if name == "auto":
        return "ars5" if fast_generator_installed() else "pcg64"
    if name not in GENERATORS:
        raise ValueError(f"unknown noise generator {name!r}; choose one of {GENERATORS}")
    if name == "ars5" and not fast_generator_installed():
        raise ValueError(
            "--noise-generator ars5 needs the fastnoise extra (pip install 'smoothserve[fastnoise]')"
        )
    return name


def fill_noisy_copies(
    out: np.ndarray, x: np.ndarray, sigma: float, rng: np.random.Generator
) -> None:
    """Overwrite each row of ``out`` with a noisy copy x + sigma * eps of the clean input ``x``,
    eps ~ N(0, I) drawn from the NumPy generator ``rng``, in the input's pixel space.

    Drawing k rows at a time gives the same stream as drawing them all at once, so a seeded
    request gets the same noise whatever batches the scheduler cuts it into.
    """
    GAUSSIAN.fill_host("pcg64", out, x, sigma, rng)


def chunk_samples(sample_shape: tuple[int, ...]) -> int:
    """Samples per chunk for inputs of this shape: a fixed function of the shape."""
    return max(1, NORMALS_PER_CHUNK // math.prod(sample_shape))


class NoiseStream(ABC):
    """The noise of one sampling job, as a function of the sample index (see the module doc).

    ``pieces`` splits a batch's rows into (rows, generator) pairs that may be filled
    concurrently, each by ``fill``. Calls must come in sample order, each call's pieces filled
    before the next call (the scheduler fills one batch at a time)."""

    generator: str  # "ars5" or "pcg64"
    sound = False  # floating-point-sound noise (sound_noise.py): PCG64 streams only

    def __init__(self, sample_shape: tuple[int, ...], family: NoiseFamily) -> None:
        self.family = family
        self.chunk = chunk_samples(sample_shape)
        self.normals_per_sample = math.prod(sample_shape)
        self._open: tuple[int, Any] | None = None  # (next sample, its positioned generator)

    def pieces(self, out: np.ndarray, start: int) -> list[tuple[np.ndarray, Any]]:
        pieces, row = [], 0
        while row < len(out):
            index = start + row
            chunk, within = divmod(index, self.chunk)
            rows = min(self.chunk - within, len(out) - row)
            if self._open is not None and self._open[0] == index:
                generator = self._open[1]
            else:
                generator = self._positioned(chunk, within)
            pieces.append((out[row : row + rows], generator))
            row += rows
            self._open = (index + rows, generator) if within + rows < self.chunk else None
        return pieces

    @abstractmethod
    def _positioned(self, chunk: int, within: int) -> Any:
        """A generator whose next draws are the noise of sample chunk * self.chunk + within."""

    def fill(self, out: np.ndarray, x: np.ndarray, scale: float, generator: Any) -> None:
        """Overwrite the rows of ``out`` with x + scale * eps, eps of the family from
        ``generator``."""
        self.family.fill_host(self.generator, out, x, scale, generator)


class Pcg64Stream(NoiseStream):
    generator = "pcg64"

    def __init__(
        self, rng: np.random.Generator, sample_shape: tuple[int, ...], sound: bool = False,
        family: NoiseFamily = GAUSSIAN,
    ) -> None:  # fmt: skip
        super().__init__(sample_shape, family)
        self._base = np.random.PCG64(np.random.SeedSequence(rng.integers(2**63, size=4).tolist()))
        # Sound noise (sound_noise.py) takes one 64-bit output per coordinate, not normals.
        self.sound = sound

    def _positioned(self, chunk: int, within: int) -> np.random.Generator:
        generator = np.random.Generator(self._base.jumped(chunk))
        if within and self.sound:  # only if calls skipped samples: draw and drop
            skip_sound_draws(generator, within, self.normals_per_sample)
        elif within:
            self.family.skip_host(generator, within * self.normals_per_sample)
        return generator


class Ars5Stream(NoiseStream):
    generator = "ars5"

    def __init__(
        self, rng: np.random.Generator, sample_shape: tuple[int, ...],
        family: NoiseFamily = GAUSSIAN,
    ) -> None:  # fmt: skip
        super().__init__(sample_shape, family)
        # The 128-bit key, as four 32-bit words; the counter starts at 0.
        self._key = rng.integers(2**32, size=4, dtype=np.uint64).astype(np.uint32)

    def _positioned(self, chunk: int, within: int) -> Any:
        state = mkl_random.MKLRandomState(self._key, brng="ARS5")
        # One 32-bit output per value (a normal by its inverse CDF, or a uniform), so sample i
        # starts at output i * d.
        state.skipahead((chunk * self.chunk + within) * self.normals_per_sample)
        return state


def noise_stream(
    rng: np.random.Generator, sample_shape: tuple[int, ...], generator: str, sound: bool = False,
    family: NoiseFamily = GAUSSIAN,
) -> NoiseStream:  # fmt: skip
    """A new job's stream of ``family`` noise keyed from the request's generator ``rng``; sound
    noise always draws from PCG64 (it needs 64-bit uniforms, ``sound_noise.py``)."""
    if generator == "ars5" and not sound:
        return Ars5Stream(rng, sample_shape, family)
    return Pcg64Stream(rng, sample_shape, sound, family)
