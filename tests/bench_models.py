"""Tiny models the engine's tests load through ``pkg.module:factory`` target specs."""

from __future__ import annotations

import torch
from torch import nn

from robust_ens import models


def tiny_cifar() -> nn.Module:
    """An untrained 3-channel small CNN (fixed seed): enough to run a CIFAR-10 suite's smoke tier."""
    torch.manual_seed(0)
    return models.create("small_cnn", num_classes=10, in_chans=3, width=8)


class _Randomized(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + 0.5 * torch.randn(x.shape[0], 10, device=x.device)


class _Rounded(nn.Module):
    """Rounds its input to 1/16 steps first: the gradient through round() is zero (gradient masking)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 16) / 16)


def randomized_digits() -> nn.Module:
    """A digits model whose forward pass adds fresh noise every call (a randomized defense)."""
    return _Randomized(models.load("zoo:digits_small_cnn_s2"))


def masked_digits() -> nn.Module:
    """A digits model with zero input gradients everywhere (masks gradients; transfer still works)."""
    return _Rounded(models.load("zoo:digits_small_cnn_s2"))


def flat_cifar() -> nn.Module:
    """A linear classifier on flattened 3x32x32 images (no declared channels): fails on other shapes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))


RAMP = torch.linspace(2.0, 60.0, 192 * 640, dtype=torch.float64).reshape(192, 640)


class RampDepth:
    """A depth 'model' that predicts the test tree's ground truth up to a scale (median scaling removes it)."""

    output = "depth"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (RAMP / 3.0).float().expand(x.shape[0], 1, -1, -1)


def ramp_depth() -> RampDepth:
    """Factory of :class:`RampDepth` for ``bench run kitti-c --target tests.bench_models:ramp_depth``."""
    return RampDepth()
