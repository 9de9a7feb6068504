"""The model wrapper that owns input normalization, so every model takes [0, 1] images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class Normalized(nn.Module):
    """Wrap ``net`` so it takes images in [0, 1] and normalizes them itself.

    Attacks and evaluation never normalize; they pass [0, 1] images to this wrapper
    (RobustBench and foolbox follow the same rule).

    Args:
        net: The network, which expects normalized inputs.
        mean: Per-channel mean (``None``: no shift).
        std: Per-channel std (``None``: no scaling).
        arch: Registry name used to build ``net`` (recorded in checkpoints).
        arch_kwargs: Keyword arguments used to build ``net``.
        num_classes: Number of outputs.
        in_chans: Number of input channels.

    Attributes:
        net: The wrapped network; layer names for hooks are ``net.<name>``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        arch: str = "custom",
        arch_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})
        self.num_classes = num_classes if num_classes is not None else getattr(net, "num_classes", None)
        self.in_chans = in_chans
        self.checkpoint: dict[str, Any] | None = None  # the sidecar record, when loaded from one
        c = in_chans or (len(mean) if mean is not None else 1)
        m = torch.tensor(list(mean) if mean is not None else [0.0] * c, dtype=torch.float32)
        s = torch.tensor(list(std) if std is not None else [1.0] * c, dtype=torch.float32)
        if (s <= 0).any():
            raise ValueError(f"std must be positive, got {s.tolist()}")
        self.register_buffer("mean", m.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", s.view(1, -1, 1, 1), persistent=False)

    @property
    def normalization(self) -> dict[str, list[float]]:
        """Mean and std as lists (recorded in checkpoint sidecars)."""
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(dtype=x.dtype)
        std = self.std.to(dtype=x.dtype)
        return self.net((x - mean) / std)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, normalization={self.normalization}"
