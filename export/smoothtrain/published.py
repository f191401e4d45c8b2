"""The randomized-smoothing literature's networks, in the layout their checkpoints were saved in.

Cohen et al.'s code (locuslab/smoothing, ICML 2019), SmoothAdv (Hadisalman/smoothing-adversarial,
NeurIPS 2019) and denoised smoothing (microsoft/denoised-smoothing, NeurIPS 2020) save
``torch.save({"epoch", "arch", "state_dict", "optimizer"})`` of
``torch.nn.Sequential(preprocessing, net)``, so the classifier's keys are ``1.<key of net>``
(``1.module.<key>`` where ``net`` is wrapped in DataParallel: their ResNet-50s). The
preprocessing layer keeps its constants as plain tensor attributes, so it has no keys, and a
checkpoint cannot tell which one it was trained with: see :data:`PREPROCESSING`.

The modules below are written here; only the attribute names, the layer order and the
hyperparameters (kernel, stride, padding, eps) follow the published code, since those are the
checkpoint format:

* ``cifar_resnet20``, ``cifar_resnet110``, ``imagenet32_resnet110``: the CIFAR ResNet that
  locuslab/smoothing took from bearpaw/pytorch-classification (``conv1``, ``bn1``, ``layer1`` to
  ``layer3`` of BasicBlocks with ``downsample.0``/``.1`` where the shape changes, an 8x8 average
  pool, ``fc``); 10 classes, or 1,000 for ImageNet32.
* ``resnet50``: torchvision's ResNet-50 key layout (``conv1``, ``bn1``, ``layer1`` to ``layer4``
  of Bottlenecks ``conv1``-``conv3``/``bn1``-``bn3``/``downsample.0``/``.1``, stride on the 3x3
  convolution, ``fc``).
* ``dncnn`` (and the published names ``cifar_dncnn``, ``imagenet_dncnn``,
  ``cifar_dncnn_wide``): :class:`smoothtrain.dncnn.DnCNN`, saved bare (no preprocessing layer;
  ``module.`` under DataParallel for ImageNet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .dncnn import DnCNN

# The published constants (datasets.py of locuslab/smoothing and Hadisalman/smoothing-adversarial).
# The CIFAR-10 standard deviations are the widely copied (0.2023, 0.1994, 0.2010), not the true
# per-channel ones that smoothtrain.models uses: the checkpoints were trained with these.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Dataset:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# SmoothAdv's ImageNet32 models normalise with the CIFAR-10 constants (its get_normalize_layer).
DATASETS = {
    "cifar10": Dataset("cifar10", (3, 32, 32), 10, CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": Dataset("imagenet", (3, 224, 224), 1000, IMAGENET_MEAN, IMAGENET_STD),
    "imagenet32": Dataset("imagenet32", (3, 32, 32), 1000, CIFAR10_MEAN, CIFAR10_STD),
}

# "normalize": (x - mean) / std, locuslab's NormalizeLayer (Cohen et al.'s models, denoised
# smoothing's classifiers, SmoothAdv's current code). "center": x - mean, SmoothAdv's
# InputCenterLayer, which the SmoothAdv release of 2019 (its first architectures.py) trained with.
PREPROCESSING = ("normalize", "center")
DEFAULT_PREPROCESSING = "normalize"


class NormalizeLayer(nn.Module):
    """(x - mean) / std per channel; the constants are plain attributes, so no state-dict keys."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class InputCenterLayer(nn.Module):
    """x - mean per channel (SmoothAdv's input centering); no state-dict keys either."""

    def __init__(self, mean: Sequence[float]) -> None:
        super().__init__()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


def preprocessing_layer(kind: str, dataset: Dataset) -> nn.Module:
    if kind == "normalize":
        return NormalizeLayer(dataset.mean, dataset.std)
    if kind == "center":
        return InputCenterLayer(dataset.mean)
    raise ValueError(f"unknown preprocessing {kind!r}; choose from {PREPROCESSING}")


def _conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
    )


class CifarBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + residual)


class CifarResNet(nn.Module):
    """The bearpaw/locuslab CIFAR ResNet with BasicBlocks (depth 6n + 2), for 32x32 inputs."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n + 2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        inplanes = 16
        for index, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = [CifarBasicBlock(inplanes, planes, stride)]
            blocks += [CifarBasicBlock(planes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AvgPool2d(8)  # as published: 32x32 inputs reach it at 8x8
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 convolution), with its attribute names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.downsample = _downsample(inplanes, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNet50(nn.Module):
    """ResNet-50 with torchvision's key layout (blocks 3-4-6-3), without torchvision."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        stages = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
        for index, (planes, count, stride) in enumerate(stages, start=1):
            blocks = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            blocks += [Bottleneck(inplanes, planes) for _ in range(count - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass(frozen=True)
class Arch:
    """A published architecture: how to build it, what it expects."""

    name: str
    kind: str  # "classifier" or "denoiser"
    datasets: tuple[str, ...]  # the datasets it was published for (the first is the default)
    prefixes: tuple[str, ...]  # the state-dict key prefixes accepted, most specific first

    @property
    def is_denoiser(self) -> bool:
        return self.kind == "denoiser"


CLASSIFIER_PREFIXES = ("1.module.", "1.")  # Sequential(preprocessing, [DataParallel](net))
DENOISER_PREFIXES = ("module.", "")  # the bare network, or DataParallel(network)

ARCHS = {
    "cifar_resnet20": Arch("cifar_resnet20", "classifier", ("cifar10",), CLASSIFIER_PREFIXES),
    "cifar_resnet110": Arch("cifar_resnet110", "classifier", ("cifar10",), CLASSIFIER_PREFIXES),
    "imagenet32_resnet110": Arch(
        "imagenet32_resnet110", "classifier", ("imagenet32",), CLASSIFIER_PREFIXES
    ),
    "resnet50": Arch("resnet50", "classifier", ("imagenet",), CLASSIFIER_PREFIXES),
    "dncnn": Arch("dncnn", "denoiser", ("cifar10", "imagenet", "imagenet32"), DENOISER_PREFIXES),
    "cifar_dncnn": Arch("cifar_dncnn", "denoiser", ("cifar10",), DENOISER_PREFIXES),
    "cifar_dncnn_wide": Arch("cifar_dncnn_wide", "denoiser", ("cifar10",), DENOISER_PREFIXES),
    "imagenet_dncnn": Arch("imagenet_dncnn", "denoiser", ("imagenet",), DENOISER_PREFIXES),
}


def build_net(arch: str, dataset: Dataset) -> nn.Module:
    """The network alone (no preprocessing), with random weights, in the published layout."""
    if arch in ("cifar_resnet20", "cifar_resnet110", "imagenet32_resnet110"):
        return CifarResNet(int(arch.rsplit("resnet", 1)[1]), dataset.num_classes)
    if arch == "resnet50":
        return ResNet50(dataset.num_classes)
    if arch in ("dncnn", "cifar_dncnn", "imagenet_dncnn"):
        return DnCNN(image_channels=dataset.input_shape[0], n_channels=64, depth=17)
    if arch == "cifar_dncnn_wide":
        return DnCNN(image_channels=dataset.input_shape[0], n_channels=128, depth=17)
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")


def build_model(
    arch: str, dataset: Dataset, preprocessing: str = DEFAULT_PREPROCESSING
) -> nn.Module:
    """The model as published: ``Sequential(preprocessing, net)`` for a classifier (its state
    dict's keys ``1.*``), the bare network for a denoiser (it works in [0, 1] pixels)."""
    net = build_net(arch, dataset)
    if ARCHS[arch].is_denoiser:
        return net
    return nn.Sequential(preprocessing_layer(preprocessing, dataset), net)
