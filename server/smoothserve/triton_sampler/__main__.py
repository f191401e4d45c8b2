"""python -m smoothserve.triton_sampler --model-repo model_repo --out triton_samplers --target gpu"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import TARGETS, write_samplers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write Triton sampler models (noise drawn next to the network, votes back)"
    )
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--out", type=Path, required=True, help="where the samplers go")
    parser.add_argument("--target", choices=sorted(TARGETS), default="gpu")
    parser.add_argument("--model", action="append", default=[], help="only these models")
    parser.add_argument("--instances", type=int, default=1, help="sampler instances per device")
    parser.add_argument("--samples-per-call", type=int, help="default: 16 network batches")
    args = parser.parse_args(argv)
    names = write_samplers(
        args.model_repo, args.out, args.target, tuple(args.model),
        instances=args.instances, samples_per_call=args.samples_per_call,
    )  # fmt: skip
    for name in names:
        print(args.out / name)


if __name__ == "__main__":
    main()
