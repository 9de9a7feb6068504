"""Deep-ensemble baseline: members trained independently with cross-entropy.

Full tier (as in DVERGE's baseline): SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128,
200 epochs, learning rate x0.1 at epochs 100 and 150. Member ``i`` uses seed ``seed + i`` for its
initialization, batch order and augmentation, so members differ in more than initialization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.defenses.base import DEFENSES, DefenseSpec, as_float, tsum
from robust_ens.train import StepContext, StepFn, TrainConfig


@dataclass
class BaselineParams:
    """The baseline has no hyperparameters beyond the training recipe."""


def baseline_loss(
    members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over members of the mean cross-entropy (each member's loss depends on its own weights)."""
    logits = [as_float(m(x)) for m in members]
    loss = tsum(F.cross_entropy(z, y, label_smoothing=label_smoothing) for z in logits)
    acc = torch.stack([(z.argmax(-1) == y).float().mean() for z in logits]).mean()
    return loss, {"train_acc": acc}


def make_step(members: Sequence[nn.Module], params: BaselineParams, config: TrainConfig) -> StepFn:
    """Joint cross-entropy step (used for DVERGE's warm-up when members share one loop)."""

    def step(x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return baseline_loss(members, x, y, config.label_smoothing)

    return step


DEFENSES.add(
    "baseline",
    DefenseSpec(
        name="baseline", params_cls=BaselineParams, make_step=make_step, min_members=1,
        paper="Lakshminarayanan et al., Simple and Scalable Predictive Uncertainty Estimation using Deep "
        "Ensembles, NeurIPS 2017 (independently trained members)",
        independent=True,
    ),
)
