"""Gaussian noise for smoothing, drawn on the host with NumPy's PCG64.

PCG64 has period 2**128, which no certificate comes near (ImageNet at n = 100,000 draws
about 1.5e10 normals). Without a seed, each request's generator is seeded from the
operating system's entropy, so the noise is unpredictable; a seed is only for audits.

Each sampling job (the n0 selection draws, then the n estimation draws) gets a
``NoiseStream`` keyed from the request's generator. A stream cuts the job's samples into
chunks of about 2**17 normals; chunk c is drawn from the stream's PCG64 jumped c times
(each jump advances it by about 2**127 draws, so chunks never overlap). The noise of sample
i is thus a function of the key and i alone: chunks can be drawn on several threads, and a
seeded request gets the same noise whatever batches the scheduler cuts it into.
"""

from __future__ import annotations

import math

import numpy as np

from .sound_noise import skip_sound_draws

NORMALS_PER_CHUNK = 2**17


def noise_generator(seed: int | None = None) -> np.random.Generator:
    """A fresh generator: OS entropy when ``seed`` is None, else reproducible from ``seed``."""
    return np.random.Generator(np.random.PCG64(seed))


def fill_noisy_copies(
    out: np.ndarray, x: np.ndarray, sigma: float, rng: np.random.Generator
) -> None:
    """Overwrite each row of ``out`` with a noisy copy x + sigma * eps of the clean input ``x``,
    eps ~ N(0, I) drawn from ``rng``, in the input's pixel space.

    Drawing k rows at a time gives the same stream as drawing them all at once, so a seeded
    request gets the same noise whatever batches the scheduler cuts it into.
    """
    rng.standard_normal(out=out, dtype=np.float32)
    out *= np.float32(sigma)
    out += x


def chunk_samples(sample_shape: tuple[int, ...]) -> int:
    """Samples per chunk for inputs of this shape: a fixed function of the shape."""
    return max(1, NORMALS_PER_CHUNK // math.prod(sample_shape))


class NoiseStream:
    """The noise of one sampling job, as a function of the sample index (see the module doc)."""

    def __init__(
        self, rng: np.random.Generator, sample_shape: tuple[int, ...], sound: bool = False
    ) -> None:
        key = np.random.SeedSequence(rng.integers(2**63, size=4).tolist())
        self._base = np.random.PCG64(key)
        self.chunk = chunk_samples(sample_shape)
        # Sound noise (sound_noise.py) takes one 64-bit output per coordinate, not normals.
        self.sound = sound
        self._open: tuple[int, np.random.Generator] | None = None  # (next sample, generator)

    def pieces(self, out: np.ndarray, start: int) -> list[tuple[np.ndarray, np.random.Generator]]:
        """Split ``out``, the rows of samples start, start + 1, ..., into (rows, generator) pieces
        that may be filled concurrently. Calls must come in sample order, each call's pieces
        filled before the next call (the scheduler fills one batch at a time)."""
        pieces, row = [], 0
        while row < len(out):
            index = start + row
            chunk, within = divmod(index, self.chunk)
            rows = min(self.chunk - within, len(out) - row)
            if self._open is not None and self._open[0] == index:
                generator = self._open[1]
            else:
                generator = np.random.Generator(self._base.jumped(chunk))
                if within and self.sound:  # only if calls skipped samples: draw and drop
                    skip_sound_draws(generator, within, math.prod(out.shape[1:]))
                elif within:
                    generator.standard_normal((within, *out.shape[1:]), dtype=np.float32)
            pieces.append((out[row : row + rows], generator))
            row += rows
            self._open = (index + rows, generator) if within + rows < self.chunk else None
        return pieces
