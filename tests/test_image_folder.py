"""Certifying a user's own images: an ImageFolder tree read at the model's input shape through
torchvision's evaluation transform (shorter side resized, central crop)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_newcomer import run_cli

from smoothserve_client.datasets import eval_transform, load_dataset
from smoothserve_dev.models import write_linear_model
from smoothserve_dev.testing import ServerProcess

SHAPE = (3, 32, 32)


def marked(height: int, width: int) -> np.ndarray:
    """A uint8 (3, H, W) image whose pixel (r, c) encodes r in red and c in green, so a crop's
    offsets can be read back from its corner."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows % 256, cols % 256, np.zeros_like(rows)]).astype(np.uint8)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 80), (90, 64)])
def test_crop_of_an_image_already_at_the_resize_side_takes_the_centre(height, width):
    # Shorter side already 64 = resize: no resampling, only torchvision's centre crop, whose
    # offsets are int(round((side - 32) / 2)).
    out = eval_transform(marked(height, width), 32, resize=64)
    assert out.shape == (3, 32, 32)
    top, left = int(round((height - 32) / 2)), int(round((width - 32) / 2))
    assert (out[0, 0, 0], out[1, 0, 0]) == (top, left)
    assert (out[0, -1, -1], out[1, -1, -1]) == (top + 31, left + 31)


def test_resize_keeps_the_aspect_ratio_as_torchvision_does():
    # 300 x 400 (h x w), Resize(256): 256 x int(256 * 400 / 300) = 256 x 341, then 224 crop.
    image = np.full((3, 300, 400), 200, np.uint8)
    out = eval_transform(image, 224)  # default resize: 224 * 256 / 224 = 256
    assert out.shape == (3, 224, 224) and np.all(out == 200)
    with pytest.raises(ValueError, match="cannot crop"):
        eval_transform(image, 224, resize=100)


def test_image_already_at_the_input_size_is_left_alone():
    image = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    assert np.array_equal(eval_transform(image, 32), image)


def write_folder(root, sizes) -> None:
    rng = np.random.default_rng(3)
    for klass, (height, width) in zip(("cat", "dog", "cat", "dog"), sizes, strict=True):
        (root / klass).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        index = len(list((root / klass).iterdir()))
        Image.fromarray(pixels, "RGB").save(root / klass / f"{index}.png")


def test_folder_is_read_lazily_at_the_model_shape(tmp_path):
    write_folder(tmp_path, [(40, 50), (60, 36), (32, 32), (100, 120)])
    dataset = load_dataset("imagefolder", tmp_path, input_shape=SHAPE)
    assert dataset.classes == ("cat", "dog") and dataset.labels.tolist() == [0, 0, 1, 1]
    assert dataset.images[1].shape == SHAPE and dataset.images[[0, 3]].shape == (2, *SHAPE)
    grey = load_dataset("imagefolder", tmp_path, input_shape=(1, 32, 32))
    assert grey.images[0].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="square"):
        load_dataset("imagefolder", tmp_path, input_shape=(3, 32, 48))


def test_certify_dataset_cli_certifies_a_folder_of_images_of_any_size(tmp_path):
    repo = tmp_path / "repo"
    w = np.random.default_rng(1).standard_normal(SHAPE)
    write_linear_model(repo, "linear3", w / np.linalg.norm(w), 0.0, 0.25, SHAPE)
    folder = tmp_path / "images"
    write_folder(folder, [(40, 50), (60, 36), (32, 32), (100, 120)])
    out = tmp_path / "certify.tsv"
    with ServerProcess(repo) as server:
        result = run_cli(
            "certify_dataset_main", "--server", server.address, "--model", "linear3",
            "--dataset", "imagefolder", "--data-dir", str(folder), "--n", "200", "--n0", "20",
            "--out", str(out), "--no-plot",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert [row[1] for row in rows] == ["0", "0", "1", "1"]  # labels from the folder names


def test_an_unreadable_image_is_a_clear_error_not_a_traceback(tmp_path):
    repo = tmp_path / "repo"
    write_linear_model(repo, "linear3", np.ones(SHAPE) / np.sqrt(np.prod(SHAPE)), 0.0, 0.25, SHAPE)
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "cat" / "broken.png").write_bytes(b"not a png")
    with ServerProcess(repo) as server:
        result = run_cli(
            "certify_dataset_main", "--server", server.address, "--model", "linear3",
            "--dataset", "imagefolder", "--data-dir", str(tmp_path / "images"), "--n", "100",
            "--out", str(tmp_path / "c.tsv"), "--no-plot",
        )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "broken.png" in result.stderr
