"""L2 attacks on the soft smoothed classifier (SmoothAdv, Salman et al., NeurIPS 2019).

The smoothed soft classifier is G(x) = E_delta[softmax(f(x + delta))], delta ~ N(0, sigma^2 I),
estimated with m noise draws. Both attacks maximise the cross entropy of G, work on inputs in
[0, 1] pixel space, keep the adversarial point in [0, 1] and inside the L2 ball of radius
epsilon (pixel units), and add the noise in pixel space, as the reference implementation does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def smoothed_log_probs(model: nn.Module, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """log G(x) for x (B, C, H, W) and noise (B, m, C, H, W): log of the mean softmax."""
    batch, m = noise.shape[:2]
    logits = model((x.unsqueeze(1) + noise).flatten(0, 1))
    probs = F.softmax(logits, dim=1).view(batch, m, -1).mean(1)
    return torch.log(probs.clamp(min=1e-20))


def draw_noise(x: torch.Tensor, m: int, sigma: float, generator=None) -> torch.Tensor:
    """m Gaussian noise draws per input: (B, m, C, H, W)."""
    shape = (x.shape[0], m, *x.shape[1:])
    return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device) * sigma


def _unit(grad: torch.Tensor) -> torch.Tensor:
    """Per-example L2-normalised gradient; a random direction where the gradient vanishes."""
    norms = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.dim() - 1)))
    random = torch.randn_like(grad)
    random = random / random.flatten(1).norm(dim=1).view_as(norms)
    return torch.where(norms > 0, grad / norms.clamp(min=1e-12), random)


def _project(x: torch.Tensor, delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    delta = (x + delta).clamp(0, 1) - x
    return delta.renorm(p=2, dim=0, maxnorm=epsilon)


def pgd_l2(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    steps: int,
    noise: torch.Tensor | None = None,
    sigma: float = 0.0,
    m: int = 1,
) -> torch.Tensor:
    """SmoothAdv PGD: ``steps`` normalised-gradient steps of size 2 epsilon / steps.

    With ``noise`` (B, m, C, H, W) the same draws are used at every step (training, as in
    the reference); without, m fresh draws of N(0, sigma^2) are taken at every step.
    """
    if epsilon <= 0 or steps <= 0:
        return x.detach().clone()
    x = x.detach()
    delta = torch.zeros_like(x)
    step_size = 2 * epsilon / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        draws = noise if noise is not None else draw_noise(x, m, sigma)
        loss = F.nll_loss(smoothed_log_probs(model, x + delta, draws), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = _project(x, delta + step_size * _unit(grad), epsilon)
    return (x + delta).detach()


def ddn_l2(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    steps: int,
    noise: torch.Tensor,
    init_norm: float = 1.0,
    gamma: float = 0.05,
    levels: int = 256,
) -> torch.Tensor:
    """SmoothAdv DDN (Rony et al.'s decoupled direction and norm) on the smoothed classifier.

    The norm grows by (1 + gamma) while the majority vote of the noisy copies is still
    correct and shrinks by (1 - gamma) otherwise; the smallest adversarial perturbation
    found is kept, quantised to ``levels`` and projected onto the epsilon ball.
    """
    if epsilon <= 0 or steps <= 0:
        return x.detach().clone()
    x = x.detach()
    batch, m = noise.shape[:2]
    view = (-1, *([1] * (x.dim() - 1)))
    delta = torch.zeros_like(x)
    norm = torch.full((batch,), float(init_norm), device=x.device)
    worst = torch.maximum(x, 1 - x).flatten(1).norm(dim=1)
    best_l2, best_delta = worst.clone(), torch.zeros_like(x)
    for i in range(steps):
        lr = 0.01 + (1 - 0.01) * (1 + math.cos(math.pi * (i + 1) / steps)) / 2
        delta.requires_grad_(True)
        logits = model((x + delta).unsqueeze(1).add(noise).flatten(0, 1))
        votes = logits.argmax(1).view(batch, m).mode(1).values
        log_g = torch.log(F.softmax(logits, 1).view(batch, m, -1).mean(1).clamp(min=1e-20))
        (grad,) = torch.autograd.grad(F.nll_loss(log_g, labels), delta)
        with torch.no_grad():
            l2 = delta.flatten(1).norm(dim=1)
            is_adv = votes != labels
            better = is_adv & (l2 < best_l2)
            best_l2 = torch.where(better, l2, best_l2)
            best_delta[better] = delta[better]
            delta = delta + lr * _unit(grad)
            norm = torch.minimum(norm * (1 - (2 * is_adv.float() - 1) * gamma), worst)
            delta = delta * (norm / delta.flatten(1).norm(dim=1).clamp(min=1e-12)).view(view)
            delta = ((x + delta) * (levels - 1)).round() / (levels - 1)
            delta = delta.clamp(0, 1) - x
    best_delta = best_delta.renorm(p=2, dim=0, maxnorm=epsilon)
    adv = ((x + best_delta) * (levels - 1)).round() / (levels - 1)
    return adv.clamp(0, 1).detach()
