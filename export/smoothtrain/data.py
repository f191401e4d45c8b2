"""Datasets through the client's readers (uint8 (N, C, H, W)), as float tensors in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch

from smoothserve_client.datasets import Dataset, load_dataset


def load(kind: str, root: str | None, split: str, limit: int = 0) -> Dataset:
    dataset = load_dataset(kind, root, split)
    if limit and limit < len(dataset):
        dataset = dataset.subset(np.arange(limit))
    return dataset


def to_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(dataset.images)).float().div_(255.0)
    return images, torch.from_numpy(dataset.labels.astype(np.int64))
