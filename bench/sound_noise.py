"""What floating-point-sound noise costs on the host: noisy samples per second of the default
fill (x + sigma * N(0, I), float32 normals) against the sound fill (one 64-bit uniform per
pixel, the threshold table, the lattice's float32 values), for the Fashion-MNIST input shape
in batches of 1,024, one thread, measured in the same run.

    .venv/bin/python bench/sound_noise.py [--sigma 0.25] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from smoothserve.noise import fill_noisy_copies, noise_generator
from smoothserve.sound_noise import fill_sound_copies, sound_lattice

SHAPE = (1, 28, 28)
BATCH = 1024


def samples_per_second(fill, batches: int, rounds: int) -> float:
    """Median over ``rounds`` rounds of ``batches`` fills of one batch."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(batches):
            fill()
        rates.append(batches * BATCH / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    started = time.perf_counter()
    lattice = sound_lattice(args.sigma, 0.0, 1.0)
    built = time.perf_counter() - started
    k = np.random.default_rng(0).integers(0, 256, SHAPE).astype(np.int16)
    x = lattice.value_of(k)
    out = np.empty((BATCH, *SHAPE), np.float32)
    default_rng, sound_rng = noise_generator(1), noise_generator(2)

    def default() -> None:
        fill_noisy_copies(out, x, args.sigma, default_rng)

    def sound() -> None:
        fill_sound_copies(out, k, lattice, sound_rng)

    default(), sound()  # warm up
    base = samples_per_second(default, args.batches, args.rounds)
    sound_rate = samples_per_second(sound, args.batches, args.rounds)
    print(f"shape {SHAPE}, batch {BATCH}, sigma {args.sigma}, {len(lattice.thresholds)} "
          f"thresholds (table built in {built:.2f} s)")  # fmt: skip
    print(f"{'fill':<26}{'samples/s':>12}{'x default':>11}")
    print(f"{'default (float32 normals)':<26}{base:>12,.0f}{1.0:>11.2f}")
    print(f"{'sound (lattice, 64-bit)':<26}{sound_rate:>12,.0f}{sound_rate / base:>11.2f}")


if __name__ == "__main__":
    main()
