"""Gaussian noise for smoothing, drawn on the host with NumPy's PCG64.

PCG64 has period 2**128, which no certificate comes near (ImageNet at n = 100,000 draws
about 1.5e10 normals). Without a seed, each request's generator is seeded from the
operating system's entropy, so the noise is unpredictable; a seed is only for audits.
"""

from __future__ import annotations

import numpy as np


def noise_generator(seed: int | None = None) -> np.random.Generator:
    """A fresh generator: OS entropy when ``seed`` is None, else reproducible from ``seed``."""
    return np.random.Generator(np.random.PCG64(seed))


def fill_noisy(out: np.ndarray, x: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    """Write x + N(0, sigma^2 I) into each row of ``out``, in the input's pixel space.

    Drawing k rows at a time gives the same stream as drawing them all at once, so a seeded
    request gets the same noise whatever batches the scheduler cuts it into.
    """
    rng.standard_normal(out=out, dtype=np.float32)
    out *= np.float32(sigma)
    out += x
