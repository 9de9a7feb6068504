"""LGV: collect surrogate weights along a high-learning-rate SGD trajectory, then attack them.

Paper: Gubri et al., "LGV: Boosting Adversarial Example Transferability from Large Geometric
Vicinity", ECCV 2022 (https://arxiv.org/abs/2207.13129).

Two parts:

* :func:`lgv_collect` fine-tunes a copy of a trained model with SGD at a constant high learning
  rate (paper: 4 epochs at 2x the original initial rate, 4 collected weights per epoch) and returns
  the collected models as an :class:`~robust_ens.Ensemble`;
* :class:`LGV` (registered ``"lgv"``) is I-FGSM where every iteration attacks one collected model,
  visiting them in a random order that is reshuffled after each cycle (paper: 50 iterations,
  alpha = eps / 10).

Example:
    >>> import torch
    >>> from robust_ens import models
    >>> from robust_ens.attacks.lgv import LGV, lgv_collect
    >>> base = models.create("small_cnn", in_chans=1)
    >>> x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    >>> ens = lgv_collect(base, x, y, epochs=1, samples_per_epoch=2, batch_size=16, lr=0.05)
    >>> len(ens)
    2
    >>> LGV(eps=8/255, steps=4)(ens, x[:4], y[:4], seed=0).cost.forward  # one member per step
    4.0
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError

from .base import Attack, AttackRun, Part, register_attack

log = logging.getLogger(__name__)


def lgv_collect(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 4,
    samples_per_epoch: int = 4,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    precision: str = "fp32",
) -> Ensemble:
    """Collect ``epochs * samples_per_epoch`` weights of ``model`` along a constant-LR SGD run.

    ``model`` itself is not changed (a copy is trained). Weights are collected at evenly spaced
    iterations of each epoch. Use the model's original training data ``(x, y)`` in [0, 1].

    Args:
        model: The trained surrogate.
        x: Training images.
        y: Training labels.
        epochs: Epochs of collection (paper: 4).
        samples_per_epoch: Weights collected per epoch (paper: 4).
        lr: Constant learning rate (paper: 2x the original initial rate; 0.05 for ImageNet ResNet-50).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: Batch size.
        seed: Seed of the data order.
        precision: Precision of the returned Ensemble.

    Returns:
        An Ensemble of the collected models (eval mode).
    """
    if epochs < 1 or samples_per_epoch < 1:
        raise RobustEnsError(f"epochs and samples_per_epoch must be >= 1, got {epochs} and {samples_per_epoch}")
    if len(x) != len(y) or len(x) == 0:
        raise RobustEnsError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
    net = copy.deepcopy(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    n_batches = max(1, -(-len(x) // batch_size))
    marks = {round((i + 1) * n_batches / samples_per_epoch) - 1 for i in range(samples_per_epoch)}
    collected: list[nn.Module] = []
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g).to(x.device)
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if b in marks:
                collected.append(copy.deepcopy(net).eval())
        log.debug("lgv_collect: epoch %d, %d models", epoch + 1, len(collected))
    return Ensemble(collected, combine="logits", precision=precision).eval()


@register_attack("lgv", family="ensemble", ensemble_only=True)
class LGV(Attack):
    r"""LGV attack: I-FGSM with one collected model per iteration (random order, reshuffled per cycle).

    Paper: Gubri et al., "LGV: Boosting Adversarial Example Transferability from Large Geometric
    Vicinity", ECCV 2022 (https://arxiv.org/abs/2207.13129). Build the surrogate with
    :func:`lgv_collect` (any Ensemble works).

    Distance measure: Linf (L2 accepted).

    Args:
        eps: Maximum perturbation (default 4/255, the paper's ImageNet budget).
        alpha: Step size (default ``None``: eps / 10).
        steps: Iterations (default 50).
        random_start: Random start (default False).
        norm: ``"Linf"`` or ``"L2"``.
        transforms: Extra parts (DI, SI, TI, SGM).

    Example:
        >>> from robust_ens.attacks.lgv import LGV
        >>> LGV().steps
        50
    """

    ensemble_only = True

    def __init__(
        self,
        *,
        eps: float = 4 / 255,
        alpha: float | None = None,
        steps: int = 50,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        super().__init__(eps=eps, alpha=alpha, steps=steps, random_start=random_start, norm=norm,
                         transforms=transforms)

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        order: list[int] = state.setdefault("order", [])
        if not order:
            dev = run.generator.device
            order.extend(torch.randperm(run.n_members, generator=run.generator, device=dev).tolist())
        k = order.pop(0)
        g = self.input_gradient(run, x_adv, lambda z: run.objective(run.member_logit(k, z)))
        return self.transform_gradient(run, g)


__all__ = ["LGV", "lgv_collect"]
