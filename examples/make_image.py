"""Write one Fashion-MNIST test image as the README's examples read it.

    python examples/make_image.py              # image 0 (an ankle boot): the committed files
    python examples/make_image.py --index 7    # another one

Writes ``image.png`` (28x28, 8-bit grey) and ``image.npy`` ((1, 28, 28) uint8) into
``--out-dir`` (default: this folder). The images come from Fashion-MNIST's test split, found as
``smoothserve-certify-dataset`` finds it (``--data-dir``, Debian's ``dataset-fashion-mnist``, or
``data/fashion-mnist-slice`` of the checkout). Needs the client with the ``cli`` extra (Pillow).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from smoothserve_client.datasets import load_fashion_mnist

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, default=0, help="index in the test split")
    parser.add_argument("--data-dir", help="Fashion-MNIST's idx files (default: searched)")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where to write the files")
    args = parser.parse_args(argv)
    dataset = load_fashion_mnist(args.data_dir, "test")
    image = dataset.images[args.index]  # (1, 28, 28) uint8
    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.save(args.out_dir / "image.npy", image)
    Image.fromarray(image[0]).save(args.out_dir / "image.png")  # 2-D uint8: mode "L"
    label = dataset.classes[dataset.labels[args.index]]
    print(f"wrote {args.out_dir / 'image.png'} and image.npy: test image {args.index}, {label!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
