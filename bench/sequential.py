"""Sequential certification against fixed-n CERTIFY, on the committed SmoothAdv models.

    .venv/bin/python bench/sequential.py --images 500 --out docs/sequential.md   # ~30 min
    .venv/bin/python bench/sequential.py --images 4 --fixed-n 2000               # smoke run

For each model, on the same Fashion-MNIST test images and at alpha = 0.001 with n0 = 100:
  1. fixed-n CERTIFY at n = --fixed-n (100,000): each image's radius, certified accuracy at
     every target radius, samples and wall time per certificate;
  2. the target-radius procedure at r = 0.25, 0.5, 0.75 and 1.0 (cap n = --fixed-n): mean
     and median samples per certificate (n0 + estimation samples), certified accuracy at r,
     wall time; the ratio of fixed-n samples to sequential samples;
  3. anytime certificates under a --deadline-ms deadline, next to fixed-n CERTIFY with the
     largest n that fits in the same time on this machine (measured here first): certified
     accuracy against radius.
Certificates run --clients at a time, as a dataset job would. Prints a Markdown report and,
with --out, writes it there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from smoothserve_client import SmoothServeClient, SmoothServeError
from smoothserve_client.datasets import load_fashion_mnist
from smoothserve_dev.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("fmnist_cnn_smoothadv_s025", "fmnist_cnn_smoothadv_s050")
TARGETS = (0.25, 0.5, 0.75, 1.0)
ALPHA, N0 = 0.001, 100


def run_all(client: SmoothServeClient, images, clients: int, **options) -> list:
    """One certificate per image, ``clients`` at a time: (result or None, seconds) each."""

    def one(image):
        started = time.perf_counter()
        try:
            result = client.predict(image=image, **options)
        except SmoothServeError as error:
            print(f"  error: {error}")
            result = None
        return result, time.perf_counter() - started

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, images))


def accuracy(results, labels, radius: float) -> float:
    hits = [
        r is not None and not r.abstain and r.prediction == y and r.radius >= radius
        for (r, _), y in zip(results, labels, strict=True)
    ]
    return 100 * float(np.mean(hits))


def samples(results) -> list[int]:
    return [r.n0 + r.n for r, _ in results if r is not None]


def fitting_n(client, model: str, image, seconds: float) -> int:
    """The largest fixed n whose certificate takes at most ``seconds`` here (one client)."""
    n = 1000
    client.predict(model, image, n0=N0, n=n, alpha=ALPHA)  # warm-up
    started = time.perf_counter()
    client.predict(model, image, n0=N0, n=20_000, alpha=ALPHA)
    per_sample = (time.perf_counter() - started) / (N0 + 20_000)
    return max(1, int(seconds / per_sample) - N0)


def report_model(server, model: str, dataset, args) -> list[str]:
    images, labels = dataset.images, dataset.labels
    lines = [f"### `{model}`", ""]
    with SmoothServeClient(server.address, timeout=600) as client:
        common = {"model_name": model, "n0": N0, "alpha": ALPHA}
        started = time.perf_counter()
        fixed = run_all(client, images, args.clients, n=args.fixed_n, **common)
        fixed_wall = time.perf_counter() - started
        print(f"{model}: fixed n = {args.fixed_n} in {fixed_wall:.0f} s")
        fixed_mean = statistics.mean(samples(fixed))
        lines += [
            f"Fixed-n CERTIFY (n = {args.fixed_n:,}): {fixed_mean:,.0f} samples per certificate, "
            f"{fixed_wall / len(images):.3f} s of wall time per certificate "
            f"({args.clients} at a time).",
            "",
            "| target r | fixed-n cert. acc. | sequential cert. acc. | mean samples | median "
            "samples | fixed ÷ sequential (mean) | wall s / cert. (seq.) |",
            "|---|---|---|---|---|---|---|",
        ]
        for target in TARGETS:
            started = time.perf_counter()
            seq = run_all(client, images, args.clients, n=args.fixed_n,
                          procedure="target_radius", target_radius=target, **common)  # fmt: skip
            wall = time.perf_counter() - started
            drawn = samples(seq)
            mean, median = statistics.mean(drawn), statistics.median(drawn)
            lines.append(
                f"| {target} | {accuracy(fixed, labels, target):.1f} % | "
                f"{accuracy(seq, labels, target):.1f} % | {mean:,.0f} | {median:,.0f} | "
                f"{fixed_mean / mean:.1f}× | {wall / len(images):.3f} |"
            )
            print(lines[-1])
        seconds = args.deadline_ms / 1000
        n_fit = fitting_n(client, model, images[0], seconds)
        anytime = run_all(client, images, 1, n=args.fixed_n, procedure="anytime",
                          timeout=seconds, **common)  # fmt: skip
        fitted = run_all(client, images, 1, n=n_fit, **common)
        radii = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
        lines += [
            "",
            f"Under a {args.deadline_ms:.0f} ms deadline (one request at a time): anytime "
            f"certificates (mean {statistics.mean(samples(anytime)):,.0f} samples, "
            f"{sum(r is None for r, _ in anytime)} missed the deadline) against fixed n = "
            f"{n_fit:,}, the largest that fits in {args.deadline_ms:.0f} ms here.",
            "",
            "| radius | " + " | ".join(f"{r}" for r in radii) + " |",
            "|---|" + "---|" * len(radii),
            "| anytime | " + " | ".join(f"{accuracy(anytime, labels, r):.1f} %" for r in radii)
            + " |",
            f"| fixed n = {n_fit:,} | "
            + " | ".join(f"{accuracy(fitted, labels, r):.1f} %" for r in radii)
            + " |",
            "",
        ]
        print("\n".join(lines[-5:]))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--fixed-n", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--deadline-ms", type=float, default=100.0)
    parser.add_argument("--model-repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    dataset = load_fashion_mnist().subset(slice(0, args.images))
    command = "bench/sequential.py " + " ".join(argv or __import__("sys").argv[1:])
    lines = [
        "## Sequential certification",
        "",
        f"Produced by `.venv/bin/python {command.strip()}` on {time.strftime('%Y-%m-%d')}: "
        f"{len(dataset)} Fashion-MNIST test images, alpha = {ALPHA}, n0 = {N0}; samples per "
        "certificate count n0 + the estimation samples drawn.",
        "",
    ]
    with ServerProcess(args.model_repo, ["--max-n", str(max(args.fixed_n, 100_000))]) as server:
        for model in args.models:
            lines += report_model(server, model, dataset, args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
