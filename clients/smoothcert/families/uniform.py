"""Uniform noise on [-lambda, lambda]^d certifies L1 radii (Yang, Duan, Hu, Salman,
Razenshteyn and Li, ICML 2020, "Randomized Smoothing of All Shapes and Sizes", Table 1: the
uniform distribution's L1 radius lambda (2 p_A - 1)): if p_A >= p_a_lower >= 1/2, g is
constant within 2 lambda (p_a_lower - 1/2) in L1 norm.

Why: shifting U[-lambda, lambda]^d by delta moves at most sum_i |delta_i| / (2 lambda) of its
mass (the total variation distance, bounded coordinate by coordinate), so P[f(x + delta + U)
= c_A] >= p_A - ||delta||_1 / (2 lambda), which stays above 1/2, and so above every other
class, while ||delta||_1 < 2 lambda (p_A - 1/2). Tight for a half-plane classifier along a
coordinate axis: x_0 = t + d gives p_A = 1/2 + d / (2 lambda), and the radius d.

Its variance is lambda^2 / 3 per coordinate: lambda = sqrt(3) sigma matches Gaussian sigma."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import NoiseFamily


class Uniform(NoiseFamily):
    name = "uniform"
    norm = "l1"
    scale_parameter = "lambda"
    unbounded = False  # at p_A = 1 the radius is lambda, not infinite

    def _radius(self, p_a_lower: float, scale: float) -> float:
        return 2.0 * scale * (min(p_a_lower, 1.0) - 0.5)

    def threshold(self, radius: float, scale: float) -> float:
        return 0.5 + radius / (2.0 * scale)

    def fill_host(
        self, generator_name: str, out: np.ndarray, x: np.ndarray, scale: float, generator: Any
    ) -> None:
        if generator_name == "ars5":  # MKL: one 32-bit output per value, in double precision
            u = generator.uniform(-1.0, 1.0, out.size).reshape(out.shape)
            np.multiply(u, scale, out=out, casting="same_kind")
        else:
            self.fill_standard(out, generator)
            out *= np.float32(scale)
        out += x

    def skip_host(self, generator: np.random.Generator, values: int) -> None:
        generator.random(values, dtype=np.float32)

    def fill_torch(self, rows: Any, generator: Any) -> None:
        rows.uniform_(-1.0, 1.0, generator=generator)

    def fill_standard(self, out: np.ndarray, generator: np.random.Generator) -> None:
        """Uniform on [-1, 1): 2 u - 1 with u a float32 in [0, 1) (24 random bits)."""
        generator.random(out=out, dtype=np.float32)
        out *= np.float32(2.0)
        out -= np.float32(1.0)


FAMILY = Uniform()
