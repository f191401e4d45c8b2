"""Image datasets as uint8 arrays (N, C, H, W) with integer labels, read from local files only.

Formats: Fashion-MNIST/MNIST idx files (``.gz`` or plain), CIFAR-10's ``cifar-10-batches-py``
folder, and an ImageFolder tree (``root/<class>/<image>``). Nothing is downloaded.

Fashion-MNIST without a directory is looked for, in this order (``fashion_mnist_search_path``):

1. ``/usr/share/datasets/fashion-mnist``: Debian's ``dataset-fashion-mnist`` package;
2. ``data/fashion-mnist-slice`` of the checkout this package was imported from (an editable
   install, or ``clients/`` on ``PYTHONPATH``);
3. ``data/fashion-mnist-slice`` under the current directory (a non-editable ``pip install .``
   run from the checkout's root).

When none holds the idx files, ``DatasetNotFoundError`` says where to get them.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SLICE = Path("data") / "fashion-mnist-slice"
# Only meaningful in a checkout: an installed copy has no data/ two levels up.
REPO_SLICE_DIR = Path(__file__).resolve().parents[2] / SLICE
FASHION_MNIST_HINT = (
    "pass the directory of its idx files (--data-dir DIR), or install Debian's "
    "dataset-fashion-mnist (apt install dataset-fashion-mnist: idx files in "
    f"{FASHION_MNIST_DIR}/)"
)
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # uint8, (N, C, H, W)
    labels: np.ndarray  # int64, (N,)
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> Dataset:
        return Dataset(self.images[indices], self.labels[indices], self.classes)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where they were looked for; the message says what to do."""


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_search_path() -> list[Path]:
    """Where ``load_fashion_mnist`` looks when given no directory, in order (module docstring)."""
    return list(dict.fromkeys([FASHION_MNIST_DIR, REPO_SLICE_DIR, Path.cwd() / SLICE]))


def _fashion_mnist_root(prefix: str) -> Path:
    candidates = fashion_mnist_search_path()
    for root in candidates:
        if _find(root, f"{prefix}-images-idx3-ubyte") is not None:
            return root
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found (looked in {looked}): {FASHION_MNIST_HINT}"
    )


def _require(root: Path, stem: str) -> Path:
    found = _find(root, stem)
    if found is None:
        raise DatasetNotFoundError(f"no {stem}[.gz] in {root}: {FASHION_MNIST_HINT}")
    return found


def load_fashion_mnist(root: Path | str | None = None, split: str = "test") -> Dataset:
    """Fashion-MNIST from the idx files in ``root``; without ``root``, from the first directory
    of ``fashion_mnist_search_path()`` that holds them. Raises ``DatasetNotFoundError``."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = _fashion_mnist_root(prefix) if root is None else Path(root)
    images = read_idx(_require(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_require(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return Dataset(images[:, None, :, :].copy(), labels, FASHION_MNIST_LABELS)


def load_cifar10(root: Path | str, split: str = "test") -> Dataset:
    """CIFAR-10 from the standard ``cifar-10-batches-py`` folder (python pickles)."""
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    images, labels = [], []
    for name in names:
        with open(root / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    classes = CIFAR10_LABELS
    meta = root / "batches.meta"
    if meta.exists():
        with open(meta, "rb") as f:
            classes = tuple(n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"])
    return Dataset(np.concatenate(images), np.concatenate(labels), classes)


def load_image(path: Path | str, channels: int | None = None) -> np.ndarray:
    """One image file as uint8 (C, H, W): PNG/JPEG through Pillow, or a ``.npy`` array."""
    path = Path(path)
    if path.suffix == ".npy":
        array = np.load(path)
        return array if array.ndim == 3 else array[None]
    from PIL import Image

    with Image.open(path) as image:
        mode = {1: "L", 3: "RGB"}.get(channels or 0, "RGB" if image.mode != "L" else "L")
        array = np.asarray(image.convert(mode), dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()


class ImageFiles:
    """Images read from files when indexed, through ``transform``: a folder of 50,000 ImageNet
    images is never held in memory at once, only the ones certified."""

    def __init__(self, files: list[Path], channels: int | None, transform) -> None:
        self.files, self.channels, self.transform = files, channels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.transform(load_image(self.files[index], self.channels))
        picked = np.arange(len(self.files))[index]
        return np.stack([self[int(i)] for i in picked])


def load_image_folder(
    root: Path | str, channels: int | None = 3, size: int | None = None,
    resize: int | None = None,
) -> Dataset:  # fmt: skip
    """An ImageFolder tree: one sub-directory per class, sorted by name as torchvision does
    (the sorted folder names give the label indices: for ImageNet, the WordNet ids
    ``n01440764``... in sorted order are the usual class indices 0-999).

    With ``size``, each image goes through torchvision's evaluation transform
    (``eval_transform``): shorter side resized to ``resize`` (default: ``size`` when the images
    already have that size, else ``size * 256 / 224`` as ImageNet's ``Resize(256)`` /
    ``CenterCrop(224)``), then the central ``size`` x ``size`` crop. Images are read when
    indexed (``ImageFiles``)."""
    root = Path(root)
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    files, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES or file.suffix == ".npy":
                files.append(file)
                labels.append(index)
    if not files:
        raise FileNotFoundError(f"no images under {root}")
    if size is None:
        images = np.stack([load_image(f, channels) for f in files])
    else:
        images = ImageFiles(files, channels, lambda image: eval_transform(image, size, resize))
    return Dataset(images, np.asarray(labels, dtype=np.int64), classes)


def eval_transform(image: np.ndarray, size: int, resize: int | None = None) -> np.ndarray:
    """torchvision's evaluation transform, ``Resize(resize)`` then ``CenterCrop(size)``, on a
    uint8 (C, H, W) image: the shorter side becomes ``resize`` (bilinear, as torchvision on PIL
    images; the longer side ``int(resize * long / short)``), then the central crop, with
    torchvision's rounding of the offsets. ``resize`` defaults to ``size`` for an image that
    already has the size (CIFAR: no-op) and to ``round(size * 256 / 224)`` otherwise."""
    height, width = image.shape[1:]
    if resize is None:
        resize = size if (height, width) == (size, size) else round(size * 256 / 224)
    short, long = sorted((height, width))
    scaled_long = int(resize * long / short)
    new_h, new_w = (resize, scaled_long) if height <= width else (scaled_long, resize)
    if (new_h, new_w) != (height, width):
        image = _resize(image, (new_w, new_h))
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {size}x{size} out of a {new_h}x{new_w} image")
    return np.ascontiguousarray(image[:, top : top + size, left : left + size])


def _resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 (C, H, W) image to ``size`` (a side, or (width, height))."""
    from PIL import Image

    width, height = (size, size) if isinstance(size, int) else size
    mode = "L" if image.shape[0] == 1 else "RGB"
    pil = Image.fromarray(image[0] if mode == "L" else image.transpose(1, 2, 0), mode)
    array = np.asarray(pil.resize((width, height), Image.BILINEAR), dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy()


def load_dataset(
    kind: str, root: Path | str | None = None, split: str = "test",
    input_shape: tuple[int, ...] | None = None, resize: int | None = None,
) -> Dataset:  # fmt: skip
    """Dispatch on ``kind``: ``fashion-mnist``, ``cifar10`` or ``imagefolder``. An image
    folder with ``input_shape`` (C, H, W; square) is read as the model takes it: C channels,
    through ``eval_transform`` to H x H (``resize``: the shorter side before the crop)."""
    if kind == "fashion-mnist":
        return load_fashion_mnist(root, split)
    if root is None:
        raise ValueError(f"dataset {kind!r} needs a root directory")
    if kind == "cifar10":
        return load_cifar10(root, split)
    if kind == "imagefolder":
        folder = Path(root) / split if (Path(root) / split).is_dir() else Path(root)
        if input_shape is None:
            return load_image_folder(folder)
        channels, height, width = input_shape
        if height != width:
            raise ValueError(f"the model takes {height}x{width} inputs; only square crops are "
                             "implemented for image folders")  # fmt: skip
        return load_image_folder(folder, channels, height, resize)
    raise ValueError(f"unknown dataset kind {kind!r}")
