"""Gaussian noise N(0, sigma^2 I) certifies L2 radii (Cohen, Rosenfeld and Kolter, ICML 2019,
Theorem 1): if p_A >= p_a_lower >= 1/2, g is constant within sigma * Phi^-1(p_a_lower)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm

from .base import NoiseFamily


class Gaussian(NoiseFamily):
    name = "gaussian"
    norm = "l2"
    scale_parameter = "sigma"
    supports_sound_noise = True

    def _radius(self, p_a_lower: float, scale: float) -> float:
        return scale * norm.ppf(p_a_lower)

    def threshold(self, radius: float, scale: float) -> float:
        return float(norm.cdf(radius / scale))

    def fill_host(
        self, generator_name: str, out: np.ndarray, x: np.ndarray, scale: float, generator: Any
    ) -> None:
        if generator_name == "ars5":  # MKL: inverse CDF, double precision, then float32
            eps = generator.standard_normal(out.size, method="ICDF").reshape(out.shape)
            np.multiply(eps, scale, out=out, casting="same_kind")
        else:  # NumPy's ziggurat in float32
            generator.standard_normal(out=out, dtype=np.float32)
            out *= np.float32(scale)
        out += x

    def skip_host(self, generator: np.random.Generator, values: int) -> None:
        generator.standard_normal(values, dtype=np.float32)

    def fill_torch(self, rows: Any, generator: Any) -> None:
        rows.normal_(0.0, 1.0, generator=generator)

    def fill_standard(self, out: np.ndarray, generator: np.random.Generator) -> None:
        generator.standard_normal(out=out, dtype=np.float32)


FAMILY = Gaussian()
