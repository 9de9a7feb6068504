"""Tiny models the engine's tests load through ``pkg.module:factory`` target specs."""

from __future__ import annotations

from pathlib import Path

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


def synthetic_kitti_tree(root: Path, n: int = 2) -> Path:
    """A KITTI raw tree of ``n`` random frames, corrupted by ``robust-ens corrupt`` (gaussian noise and
    brightness at severity 3, with ``clean/``), plus ``gt_depths.npz`` holding :data:`RAMP` per image."""
    import numpy as np
    from PIL import Image

    from robust_ens import cli

    src = root / "kitti"
    g = np.random.default_rng(0)
    for i in range(n):
        p = src / f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{i:010d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((g.random((96, 320, 3)) * 255).astype(np.uint8)).save(p)
    tree = root / "kitti-c"
    if cli.main(["--quiet", "corrupt", "--preset", "kittic", "--src", str(src), "--split", "all", "--out", str(tree),
                 "--corruptions", "gaussian_noise,brightness", "--severities", "3", "--clean"]) != 0:
        raise RuntimeError("robust-ens corrupt failed on the synthetic KITTI tree")
    np.savez(tree / "gt_depths.npz", data=np.stack([RAMP.numpy()] * n))
    return tree
