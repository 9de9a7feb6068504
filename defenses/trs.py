"""TRS: Transferability Reduced Smooth ensemble (Yang et al., NeurIPS 2021).

Loss on a batch (paper, and the authors' ``TRS_Trainer``), generalized from the hard-coded three
members to any ``N >= 2``::

    L = sum_i CE(f_i(x), y) + scale * (coeff * mean_{i<j} mean_b |cos(g_i, g_j)|
                                       + lamda * mean_i 2 * mean_b ||g'_i||^2)

``g_i`` is the input gradient of member ``i``'s mean cross-entropy on ``x`` (``create_graph``).
The smoothness gradients ``g'_i`` are taken on ``x`` itself, or with ``plus_adv`` on a batch whose
first half is clean and whose second half is perturbed by a PGD that *maximizes* the members'
gradient magnitude (6 steps, step eps/3, random start), with eps ramping linearly per epoch from
``init_eps`` to ``adv_eps`` (0.01 -> 0.03 on CIFAR-10).

Defaults: coeff 40, lamda 2.5, scale 1, Adam lr 1e-3, weight decay 1e-4 (full tier: 120 epochs,
x0.1 every 40, from scratch). Like the authors' ``--resume`` (which loads vanilla members), TRS can
start from trained members: ``init=``, or a ``[tier.warmup]`` baseline phase (the small tier has one,
because its budget cannot learn from scratch while ``coeff * |cos|`` dominates the cross-entropy). The authors' magnitude term uses gradients of the batch-mean loss (so it scales
with 1/batch^2); kept as is. Departure: without ``plus_adv`` the authors recompute the same
gradients with a second forward pass; here the first pass's gradients are reused (same values,
one BatchNorm update instead of two). The authors' PGD runs members in train mode; here in eval
mode, as for every attack inside training in this package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.defenses.base import DEFENSES, DefenseSpec, as_float, tsum
from robust_ens.defenses.distill import _project, eval_mode
from robust_ens.defenses.gal import input_gradients, pairwise_cosines
from robust_ens.train import StepContext, StepFn, TrainConfig


@dataclass
class TRSParams:
    """TRS hyperparameters.

    Attributes:
        coeff: Weight of the gradient-similarity term.
        lamda: Weight of the smoothness (gradient magnitude) term.
        scale: Overall weight of both regularizers.
        plus_adv: Smoothness on gradient-magnitude PGD examples (second half of each batch).
        init_eps: PGD budget in the first epoch.
        adv_eps: PGD budget reached in the last epoch.
        adv_steps: PGD steps (authors: 6, with step size eps / 3).
    """

    coeff: float = 40.0
    lamda: float = 2.5
    scale: float = 1.0
    plus_adv: bool = False
    init_eps: float = 0.01
    adv_eps: float = 0.03
    adv_steps: int = 6


def magnitude(g: torch.Tensor) -> torch.Tensor:
    """The authors' smoothness measure: twice the batch mean of the squared gradient norm."""
    return 2.0 * as_float(g).pow(2).sum(1).mean()


def current_eps(params: TRSParams, epoch: int, epochs: int) -> float:
    """The linearly ramped PGD budget of ``epoch`` (0-based) out of ``epochs``."""
    return params.init_eps + (params.adv_eps - params.init_eps) * epoch / max(1, epochs)


def magnitude_pgd(
    members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """PGD that maximizes the members' mean gradient magnitude (TRS's smoothness attack)."""
    alpha = eps / 3.0
    x_nat = x.detach()
    noise = torch.empty(x.shape, dtype=torch.float32).uniform_(-eps, eps, generator=generator)
    x_adv = (x_nat + noise.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        mags = []
        for m in members:
            (g,) = torch.autograd.grad(F.cross_entropy(as_float(m(x_adv)), y), x_adv, create_graph=True)
            mags.append(magnitude(g.flatten(1)))
        (grad,) = torch.autograd.grad(tsum(mags) / len(members), x_adv)
        with torch.no_grad():
            x_adv = _project(x_adv.detach() + alpha * grad.sign(), x_nat, eps)
    return x_adv.detach()


def trs_loss(
    members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, params: TRSParams,
    x_smooth: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRS loss; ``x_smooth`` (the PGD batch of ``plus_adv``) replaces ``x`` in the smoothness term."""
    logits, grads = input_gradients(members, x, y, create_graph=True)
    ce = tsum(F.cross_entropy(z, y) for z in logits)
    cos = pairwise_cosines(grads).abs().mean(0)  # per pair, batch mean of |cos|
    cos_loss = cos.mean()
    if x_smooth is None:
        smooth_grads = grads
    else:
        _, smooth_grads = input_gradients(members, x_smooth, y, create_graph=True)
    smooth = tsum(magnitude(g) for g in smooth_grads) / len(members)
    loss = ce + params.scale * (params.coeff * cos_loss + params.lamda * smooth)
    metrics: dict[str, Any] = {"ce": ce.detach(), "cos": cos_loss.detach(), "smooth": smooth.detach(),
                               "train_acc": (torch.stack(logits).mean(0).argmax(-1) == y).float().mean()}
    return loss, metrics


def make_step(members: Sequence[nn.Module], params: TRSParams, config: TrainConfig) -> StepFn:
    """Training step of TRS."""

    def step(x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_smooth = None
        if params.plus_adv:
            half = len(x) // 2
            eps = current_eps(params, ctx.epoch, config.epochs)
            with eval_mode(members):
                adv = magnitude_pgd(members, x[half:], y[half:], eps, params.adv_steps, ctx.generator)
            x_smooth = torch.cat([x[:half].detach(), adv])
        return trs_loss(members, x, y, params, x_smooth)

    return step


DEFENSES.add(
    "trs",
    DefenseSpec(
        name="trs", params_cls=TRSParams, make_step=make_step, min_members=2, warm_start=True,
        paper="Yang, Li, Xu, Zuo, Chen, Rubinstein, Zhou, Zhang, Li. TRS: Transferability Reduced Ensemble "
        "via Promoting Gradient Diversity and Model Smoothness. NeurIPS 2021",
    ),
)
