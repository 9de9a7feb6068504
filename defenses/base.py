"""What every defense provides: hyperparameters, a joint loss, and a step for the training loop."""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robust_ens.errors import RobustEnsError
from robust_ens.registry import Registry
from robust_ens.train import StepFn, TrainConfig


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense.

    Attributes:
        name: Registry name.
        params_cls: Dataclass of the defense's hyperparameters (recipe ``[tier.defense]`` keys).
        make_step: ``make_step(members, params, config) -> step_fn`` for :func:`robust_ens.train.fit`.
        min_members: Smallest ensemble the defense is defined for (2 for pairwise losses).
        paper: Citation.
        warm_start: True when the defense starts from trained members (DVERGE); with ``init=None``
            :func:`robust_ens.defenses.train.train_defense` first trains a baseline (warm-up).
        arch_kwargs: Architecture options the defense implies (GAL: leaky ReLU), from its params.
        independent: Members are trained one by one with their own seeds (baseline), not jointly.
    """

    name: str
    params_cls: type
    make_step: Callable[[Sequence[nn.Module], Any, TrainConfig], StepFn]
    min_members: int
    paper: str
    warm_start: bool = False
    arch_kwargs: Callable[[Any], dict[str, Any]] | None = None
    independent: bool = False


DEFENSES: Registry[DefenseSpec] = Registry("defense")


def list_defenses(pattern: str = "*") -> list[str]:
    """Names of the registered defenses matching an fnmatch ``pattern``."""
    return DEFENSES.list(pattern)


def param_names(cls: type) -> list[str]:
    """Field names of a hyperparameter dataclass."""
    return [f.name for f in dataclasses.fields(cls)]


def make_params(cls: type, values: Mapping[str, Any], defense: str) -> Any:
    """Build ``cls`` from ``values``; unknown keys raise naming the known ones."""
    unknown = sorted(set(values) - set(param_names(cls)))
    if unknown:
        raise RobustEnsError(
            f"unknown {defense} hyperparameter(s) {unknown}; known: {param_names(cls)}"
        )
    return cls(**dict(values))


def check_members(name: str, n_members: int, min_members: int) -> None:
    """Raise when an ensemble is too small for a defense."""
    if n_members < min_members:
        raise RobustEnsError(
            f"n_members must be >= {min_members} for defense {name!r} (its loss is defined on pairs of "
            f"members), got {n_members}"
        )


def as_float(t: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 results (autocast) to float32; keep float32 and float64 as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def tsum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of a non-empty iterable of tensors (typed, unlike ``sum``'s ``Tensor | int``)."""
    return functools.reduce(operator.add, terms)
