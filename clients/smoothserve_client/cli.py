"""Command-line tools: certify one image file, or a dataset split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .client import SmoothServeClient, SmoothServeError
from .datasets import load_dataset, load_image
from .results import DEFAULT_RADII, accuracy_table, plot_certified_accuracy, write_tsv


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of SmoothServe")
    parser.add_argument("--model", default="", help="model name; empty: the server's default")
    parser.add_argument("--n0", type=int, help="selection samples (server default if unset)")
    parser.add_argument("--n", type=int, help="estimation samples (server default if unset)")
    parser.add_argument("--alpha", type=float, help="failure probability (server default if unset)")
    parser.add_argument("--seed", type=int, help="noise seed, for reproducible audits only")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--token", help="bearer token, if the server requires one")


def certify_image_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smoothserve-certify",
        description="Certify one image (PNG, JPEG or .npy) and print the certificate as JSON.",
    )
    parser.add_argument("image", type=Path)
    parser.add_argument("--mode", choices=("certify", "predict"), default="certify")
    _common(parser)
    args = parser.parse_args(argv)
    with SmoothServeClient(args.server, timeout=args.timeout, token=args.token) as client:
        try:
            info = client.model_info(args.model)
            image = load_image(args.image, channels=info.input_shape[0])
            result = client.predict(
                info.name, image, mode=args.mode, n0=args.n0, n=args.n, alpha=args.alpha,
                seed=args.seed,
            )  # fmt: skip
        except SmoothServeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(json.dumps(result.__dict__, indent=2))
    return 0


def certify_dataset_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smoothserve-certify-dataset",
        description="Certify a dataset split through the server: writes the reference's TSV "
        "(idx label predict radius correct time) and a plot of certified accuracy against radius.",
    )
    parser.add_argument("--dataset", choices=("fashion-mnist", "cifar10", "imagefolder"), default="fashion-mnist")
    parser.add_argument("--data-dir", help="dataset root; fashion-mnist defaults to Debian's package")
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument("--skip", type=int, default=1, help="certify every skip-th image")
    parser.add_argument("--max", type=int, default=100, help="certify at most this many images")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--out", type=Path, default=Path("certify.tsv"), help="TSV to write")
    parser.add_argument("--plot", type=Path, help="PNG plot (default: next to the TSV)")
    _common(parser)
    args = parser.parse_args(argv)

    from .dataset import certify_dataset

    dataset = load_dataset(args.dataset, args.data_dir, args.split)
    indices = np.arange(0, len(dataset), args.skip)[: args.max].tolist()
    with SmoothServeClient(args.server, timeout=args.timeout, token=args.token) as client:
        try:
            model = client.model_info(args.model).name
            rows = certify_dataset(
                client, model, dataset, indices, args.n0, args.n, args.alpha,
                concurrency=args.concurrency, seed=args.seed,
            )  # fmt: skip
        except SmoothServeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(rows, args.out)
    plot = args.plot or args.out.with_suffix(".png")
    plot_certified_accuracy({model: rows}, plot, title=f"{model} on {args.dataset} {args.split}")
    print(accuracy_table({model: rows}, DEFAULT_RADII))
    print(f"wrote {args.out} and {plot}")
    return 0
