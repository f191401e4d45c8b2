"""The training configuration: one dataclass, saved in every checkpoint and model card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from smoothcert.families import NoiseFamily, family


@dataclass
class TrainConfig:
    name: str
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    arch: str = "cnn"
    method: str = "gaussian"  # noise augmentation (Cohen et al.) or "smoothadv" (Salman et al.)
    attack: str = "pgd"  # SmoothAdv attack: "pgd" or "ddn"
    noise_family: str = "gaussian"  # smoothcert.families: "gaussian" (L2) or "uniform" (L1)
    sigma: float = 0.25  # the family's scale: Gaussian sigma, uniform lambda
    epsilon: float = 0.5  # L2 radius of the attack, [0, 1] pixel units
    num_steps: int = 2  # attack steps (k)
    num_noise_vec: int = 2  # noise draws per input for SmoothAdv (m)
    warmup: int = 1  # epochs over which epsilon rises linearly to its value
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.05
    lr_step_size: int = 10
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0: torch's default
    train_limit: int = 0  # use only the first N training images; 0: all
    max_batches: int = 0  # stop each epoch after N batches; 0: the whole epoch
    eval_limit: int = 1000  # test images for the per-epoch noisy accuracy

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def epsilon_at(self, epoch: int) -> float:
        """The SmoothAdv warm-up: epsilon * min(1, (epoch + 1) / warmup), epoch from 0."""
        if self.warmup <= 1:
            return self.epsilon
        return min(self.epsilon, (epoch + 1) * self.epsilon / self.warmup)

    @property
    def family(self) -> NoiseFamily:
        return family(self.noise_family)

    def noise_like(self, x: torch.Tensor) -> torch.Tensor:
        """The training transform: noise of the model's family at its scale, shaped like x
        (the family draws it: ``NoiseFamily.fill_torch``)."""
        eps = torch.empty_like(x)
        self.family.fill_torch(eps, None)
        return eps * self.sigma

    def describe(self) -> str:
        if self.method == "gaussian" and self.noise_family != "gaussian":
            scale = self.family.scale_parameter
            return f"{self.noise_family} noise augmentation, {scale}={self.sigma}"
        if self.method == "gaussian":
            return f"Gaussian augmentation, sigma={self.sigma}"
        return (
            f"SmoothAdv {self.attack.upper()}, sigma={self.sigma}, epsilon={self.epsilon}, "
            f"steps={self.num_steps}, m={self.num_noise_vec}, warm-up={self.warmup} epochs"
        )


def run_dir_for(root: Path, name: str) -> Path:
    return root / name
