"""The corruption registry and the context handed to every corruption function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from robust_ens.corruptions._rng import ExampleRNG
from robust_ens.registry import Registry


@dataclass(frozen=True)
class Ctx:
    """What a corruption function needs besides the image and its parameters.

    Attributes:
        preset: ``"cifar10c"``, ``"imagenetc"`` or ``"kittic"`` (some operations differ by preset).
        severity: 1..5.
        rng: Per-example random streams.
    """

    preset: str
    severity: int
    rng: ExampleRNG


CorruptionFn = Callable[[torch.Tensor, Any, Ctx], torch.Tensor]

#: name -> function ``fn(x, params, ctx)``; metadata: ``family``, ``random``, ``source``, ``departures``.
CORRUPTIONS: Registry[CorruptionFn] = Registry("corruption")


def register(name: str, *, family: str, random: bool, source: str, departures: str = "none",
             on_grid: bool = False) -> Callable[[CorruptionFn], CorruptionFn]:
    """Register a corruption with its provenance (shown by ``describe``).

    ``on_grid=True`` marks functions whose output already lies on the 256 uint8 levels (the final
    truncation is then skipped).
    """
    return CORRUPTIONS.register(name, family=family, random=random, source=source, departures=departures,
                                on_grid=on_grid)
