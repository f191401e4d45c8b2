"""Command-line tools: certify one image file, or a dataset split."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from .client import SmoothServeClient, SmoothServeError
from .datasets import load_dataset, load_image
from .results import (
    DEFAULT_RADII,
    PlotUnavailableError,
    accuracy_table,
    plot_certified_accuracy,
    plot_subtitle,
    radius_limit_note,
    write_tsv,
)
from .types import PROCEDURES


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of SmoothServe")
    parser.add_argument("--model", default="", help="model name; empty: the server's default")
    parser.add_argument("--n0", type=int, help="selection samples (server default if unset)")
    parser.add_argument("--n", type=int, help="estimation samples (server default if unset)")
    parser.add_argument("--alpha", type=float, help="failure probability (server default if unset)")
    parser.add_argument("--seed", type=int, help="noise seed, for reproducible audits only")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--token", help="bearer token, if the server requires one")
    parser.add_argument(
        "--procedure", choices=tuple(PROCEDURES), default="fixed_n",
        help="fixed_n: exactly n estimation samples; target_radius: is the input certified at "
        "--target-radius (n is the cap); anytime: the best radius within --timeout (the "
        "deadline) and n samples",
    )  # fmt: skip
    parser.add_argument("--target-radius", type=float, help="radius for --procedure target_radius")
    parser.add_argument("--tolerance", type=float, help="anytime: stop when a look gains less")
    parser.add_argument(
        "--sound-noise", action="store_true",
        help="floating-point-sound noise on the 1/255 lattice (docs/security.md); unset: the "
        "model's config decides",
    )  # fmt: skip


def sequential_options(args: argparse.Namespace) -> dict:
    """The predict options besides n0, n, alpha and seed: the procedure and the noise."""
    return {"procedure": args.procedure, "target_radius": args.target_radius,
            "tolerance": args.tolerance,
            "sound_noise": True if args.sound_noise else None}  # fmt: skip


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


CLI_EXTRA = "install the cli extra: pip install './clients[cli]'"


def _missing_cli_extra(error: ModuleNotFoundError) -> int:
    """Pillow or tqdm absent: the client was installed without its ``cli`` extra."""
    if error.name not in ("PIL", "tqdm"):
        raise error
    return _fail(f"no module named {error.name!r}; {CLI_EXTRA}")


def certify_image_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smoothserve-certify",
        description="Certify one image (PNG, JPEG or .npy) and print the certificate as JSON.",
    )
    parser.add_argument("image", type=Path)
    parser.add_argument("--mode", choices=("certify", "predict"), default="certify")
    parser.add_argument("--save-record", type=Path,
                        help="save the signed certificate record here, for smoothserve-verify")  # fmt: skip
    _common(parser)
    args = parser.parse_args(argv)
    try:  # before connecting, so that a bad file fails at once and says so
        image = load_image(args.image)
    except ModuleNotFoundError as error:
        return _missing_cli_extra(error)
    except (OSError, ValueError) as error:
        return _fail(f"cannot read {args.image} as an image (PNG, JPEG, ... or .npy): {error}")
    with SmoothServeClient(args.server, timeout=args.timeout, token=args.token) as client:
        try:
            info = client.model_info(args.model)
            if image.shape[0] != info.input_shape[0]:
                image = load_image(args.image, channels=info.input_shape[0])
            result = client.predict(
                info.name, image, mode=args.mode, n0=args.n0, n=args.n, alpha=args.alpha,
                seed=args.seed, **sequential_options(args),
            )  # fmt: skip
        except SmoothServeError as error:
            return _fail(str(error), code=1)
    if args.save_record:
        result.save_record(args.save_record)
    shown = {k: v for k, v in result.__dict__.items() if k not in ("record", "record_signature")}
    print(json.dumps(shown, indent=2))
    return 0


def _dataset_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothserve-certify-dataset",
        description="Certify a dataset split through the server: writes the reference's TSV "
        "(idx label predict radius correct time) and a plot of certified accuracy against radius.",
    )
    parser.add_argument(
        "--dataset", choices=("fashion-mnist", "cifar10", "imagefolder"), default="fashion-mnist"
    )
    parser.add_argument(
        "--data-dir",
        help="dataset root; fashion-mnist without it: /usr/share/datasets/fashion-mnist (Debian's "
        "dataset-fashion-mnist), then data/fashion-mnist-slice of a checkout",
    )
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument(
        "--resize", type=int,
        help="imagefolder: shorter side before the center crop to the model's input size "
        "(default: the input size for images already that size, else size * 256 / 224, "
        "torchvision's Resize(256) + CenterCrop(224) for ImageNet)",
    )  # fmt: skip
    parser.add_argument("--skip", type=int, default=1, help="certify every skip-th image")
    parser.add_argument("--max", type=int, default=100, help="certify at most this many images")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--out", type=Path, default=Path("certify.tsv"), help="TSV to write")
    parser.add_argument("--plot", type=Path, help="PNG plot (default: next to the TSV)")
    parser.add_argument("--no-plot", action="store_true", help="write no plot")
    parser.add_argument("--records-dir", type=Path,
                        help="save each image's signed certificate record here (<index>.json)")  # fmt: skip
    _common(parser)
    return parser


def _load(args: argparse.Namespace, input_shape: tuple[int, ...] | None):
    """The dataset, or the exit status of a failure already reported."""
    try:
        return load_dataset(args.dataset, args.data_dir, args.split, input_shape, args.resize)
    except ModuleNotFoundError as error:
        return _missing_cli_extra(error)
    except (OSError, ValueError) as error:
        return _fail(str(error))


def certify_dataset_main(argv: list[str] | None = None) -> int:
    args = _dataset_parser().parse_args(argv)

    from .dataset import certify_dataset

    if sys.stderr.isatty() and importlib.util.find_spec("tqdm") is None:  # the progress bar
        return _fail(f"no module named 'tqdm'; {CLI_EXTRA}")
    # An image folder is read at the model's input shape, so after asking the server for it;
    # any other dataset is checked before connecting.
    dataset = None if args.dataset == "imagefolder" else _load(args, None)
    if isinstance(dataset, int):
        return dataset
    with SmoothServeClient(args.server, timeout=args.timeout, token=args.token) as client:
        try:
            info = client.model_info(args.model)
        except SmoothServeError as error:
            return _fail(str(error), code=1)
        if dataset is None:
            dataset = _load(args, info.input_shape)
            if isinstance(dataset, int):
                return dataset
        indices = np.arange(0, len(dataset), args.skip)[: args.max].tolist()
        try:
            rows = certify_dataset(
                client, info.name, dataset, indices, args.n0, args.n, args.alpha,
                concurrency=args.concurrency, seed=args.seed, options=sequential_options(args),
                records_dir=args.records_dir,
            )  # fmt: skip
        except (OSError, ValueError) as error:  # an unreadable image, found when certified
            return _fail(str(error))
        except SmoothServeError as error:
            return _fail(str(error), code=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tsv(rows, args.out)
    n, alpha = args.n or info.default_n, args.alpha or info.default_alpha
    curves = {info.name: rows}
    print(accuracy_table(curves, DEFAULT_RADII))
    print(radius_limit_note(n, alpha, [info.sigma]))
    written = [args.out]
    if not args.no_plot:
        plot = args.plot or args.out.with_suffix(".png")
        title = f"{info.name} on {args.dataset} {args.split}"
        subtitle = plot_subtitle(n, alpha, [info.sigma], len(rows))
        try:
            plot_certified_accuracy(curves, plot, title=title, subtitle=subtitle)
            written.append(plot)
        except PlotUnavailableError as error:
            print(f"warning: no plot written: {error}", file=sys.stderr)
    print("wrote " + " and ".join(str(path) for path in written))
    return 0
