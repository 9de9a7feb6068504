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
x0.1 every 40, from scratch). The CIFAR-10 values of the loss weights and of the PGD budget are
not in the authors' scripts (``utils/Empirical/script_train.py`` and the argparse defaults of
``train/Empirical/train_trs.py`` are MNIST's 2 / 2 / 5 and 0.1 -> 0.2): a maintainer gave them in
AI-secure/Transferability-Reduced-Smooth-Ensemble issue #1 (2022-08-19: "lambda_a = 40,
lambda_b = 2.5, delta_0 = 0.01, delta_m = 0.03" for CIFAR, with ``lambda_a = scale * coeff`` and
``lambda_b = scale * lamda``), and said they are the paper's. Like the authors' ``--resume``
(which loads vanilla members), TRS can start from trained members: ``init=``, or a
``[tier.warmup]`` baseline phase (the small tier has one, because its budget cannot learn from
scratch while ``coeff * |cos|`` dominates the cross-entropy). The authors' magnitude term uses
gradients of the batch-mean loss (so it scales with 1/batch^2); kept as is.

Fidelity switches (authors' code: ``train/Empirical/trainer.py``, ``PGD`` and ``TRS_Trainer``).
The rule: a default reproduces the authors' code unless the paper's text or batch independence
says otherwise. Training couples the examples of a batch anyway (BatchNorm in train mode, a
batch loss), so batch independence does not apply to these; every default is the authors'.

* ``pgd_accumulate`` (default True): the authors set ``requires_grad`` on the PGD tensor once and
  never clear its ``.grad``, so step ``t`` moves along ``sign(g_1 + ... + g_t)``. False takes a
  fresh gradient each step, ``sign(g_t)`` (this package before issue 15).
* ``pgd_train_mode`` (default True): the authors' PGD runs the members in train mode (BatchNorm
  on the statistics of the perturbed half batch, running statistics updated at every step).
  False runs it in eval mode (this package before issue 15).
* ``pgd_every_batch`` (default True): the authors run that PGD on every batch, also without
  ``plus_adv`` where its result is unused; in train mode it then only moves BatchNorm's running
  statistics. False skips it when ``plus_adv`` is off (saves ``adv_steps`` double-backward
  passes per member and batch).
* ``repeat_forwards`` (default True): without ``plus_adv`` the authors compute the smoothness
  gradients with a second forward pass on the clean batch, and measure accuracy with one more
  forward of the ensemble in train mode; both give the same values as the first pass and only
  update BatchNorm's running statistics again. False reuses the first pass's gradients and
  skips the accuracy pass (one BatchNorm update instead of three).

Loss values do not depend on ``pgd_train_mode``, ``pgd_every_batch`` or ``repeat_forwards``
(tested); the trained members' BatchNorm running statistics do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.defenses.base import DEFENSES, DefenseSpec, as_float, tsum
from robust_ens.defenses.distill import _project, eval_mode
from robust_ens.defenses.gal import input_gradients, pairwise_cosines
from robust_ens.overrides import PIXEL_BUDGET, Count, PixelBudget, Range, Weight, check_fields
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
        pgd_accumulate: Step along the sign of the accumulated PGD gradients (authors).
        pgd_train_mode: Members in train mode during the PGD (authors).
        pgd_every_batch: Run the PGD on every batch, also without ``plus_adv`` (authors).
        repeat_forwards: The authors' extra clean forward passes (BatchNorm statistics only).
    """

    coeff: Weight = 40.0
    lamda: Weight = 2.5
    scale: Weight = 1.0
    plus_adv: bool = False
    init_eps: Annotated[float, Range(0, 1, what="a pixel budget", note=PIXEL_BUDGET.note)] = 0.01  # a ramp may start at 0
    adv_eps: PixelBudget = 0.03
    adv_steps: Count = 6
    pgd_accumulate: bool = True
    pgd_train_mode: bool = True
    pgd_every_batch: bool = True
    repeat_forwards: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "trs hyperparameter")


def magnitude(g: torch.Tensor) -> torch.Tensor:
    """The authors' smoothness measure: twice the batch mean of the squared gradient norm."""
    return 2.0 * as_float(g).pow(2).sum(1).mean()


def current_eps(params: TRSParams, epoch: int, epochs: int) -> float:
    """The linearly ramped PGD budget of ``epoch`` (0-based) out of ``epochs``."""
    return params.init_eps + (params.adv_eps - params.init_eps) * epoch / max(1, epochs)


def magnitude_pgd(
    members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
    generator: torch.Generator | None, accumulate: bool = True,
) -> torch.Tensor:
    """PGD that maximizes the members' mean gradient magnitude (TRS's smoothness attack).

    Step size ``eps / 3`` from a uniform random start. With ``accumulate`` (the authors' code)
    step ``t`` moves along ``sign(g_1 + ... + g_t)``, the sum of every gradient so far (their
    ``adv.grad`` is never cleared); without it along ``sign(g_t)``. Members are used in the mode
    they are in.
    """
    alpha = eps / 3.0
    x_nat = x.detach()
    noise = torch.empty(x.shape, dtype=torch.float32).uniform_(-eps, eps, generator=generator)
    x_adv = (x_nat + noise.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)
    total: torch.Tensor | None = None
    for _ in range(steps):
        x_adv.requires_grad_(True)
        mags = []
        for m in members:
            (g,) = torch.autograd.grad(F.cross_entropy(as_float(m(x_adv)), y), x_adv, create_graph=True)
            mags.append(magnitude(g.flatten(1)))
        (grad,) = torch.autograd.grad(tsum(mags) / len(members), x_adv)
        total = grad if total is None or not accumulate else total + grad
        with torch.no_grad():
            x_adv = _project(x_adv.detach() + alpha * total.sign(), x_nat, eps)
    return x_adv.detach()


def trs_loss(
    members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, params: TRSParams,
    x_smooth: torch.Tensor | None = None,
    smooth_batch: Callable[[], torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRS loss; ``x_smooth`` (the PGD batch of ``plus_adv``) replaces ``x`` in the smoothness term.

    ``smooth_batch``, when given, is called after the first forward pass (where the authors run
    their PGD) and returns ``x_smooth``. Without ``x_smooth`` and with ``params.repeat_forwards``
    the smoothness gradients come from a second forward pass on ``x``, as in the authors' code
    (same values; one more BatchNorm update).
    """
    logits, grads = input_gradients(members, x, y, create_graph=True)
    ce = tsum(F.cross_entropy(z, y) for z in logits)
    cos = pairwise_cosines(grads).abs().mean(0)  # per pair, batch mean of |cos|
    cos_loss = cos.mean()
    if smooth_batch is not None:
        x_smooth = smooth_batch()
    if x_smooth is not None:
        _, smooth_grads = input_gradients(members, x_smooth, y, create_graph=True)
    elif params.repeat_forwards:
        _, smooth_grads = input_gradients(members, x, y, create_graph=True)
    else:
        smooth_grads = grads
    smooth = tsum(magnitude(g) for g in smooth_grads) / len(members)
    loss = ce + params.scale * (params.coeff * cos_loss + params.lamda * smooth)
    metrics: dict[str, Any] = {"ce": ce.detach(), "cos": cos_loss.detach(), "smooth": smooth.detach(),
                               "train_acc": (torch.stack(logits).mean(0).argmax(-1) == y).float().mean()}
    return loss, metrics


def make_step(members: Sequence[nn.Module], params: TRSParams, config: TrainConfig) -> StepFn:
    """Training step of TRS."""

    def smooth_batch(x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor | None:
        """The authors' PGD, run after the first forward pass; the smoothness batch (or None)."""
        if not (params.plus_adv or params.pgd_every_batch):
            return None
        half = len(x) // 2
        eps = current_eps(params, ctx.epoch, config.epochs)
        with contextlib.nullcontext() if params.pgd_train_mode else eval_mode(members):
            adv = magnitude_pgd(members, x[half:], y[half:], eps, params.adv_steps, ctx.generator,
                                accumulate=params.pgd_accumulate)
        return torch.cat([x[:half].detach(), adv]) if params.plus_adv else None

    def step(x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = trs_loss(members, x, y, params, smooth_batch=lambda: smooth_batch(x, y, ctx))
        if params.repeat_forwards:
            # the authors' accuracy pass: the ensemble's mean probability, a forward in train mode
            with torch.no_grad():
                probs = torch.stack([F.softmax(as_float(m(x)), dim=-1) for m in members]).mean(0)
            metrics["train_acc"] = (probs.argmax(-1) == y).float().mean()
        return loss, metrics

    return step


DEFENSES.add(
    "trs",
    DefenseSpec(
        name="trs", params_cls=TRSParams, make_step=make_step, min_members=2, warm_start=True,
        paper="Yang, Li, Xu, Zuo, Chen, Rubinstein, Zhou, Zhang, Li. TRS: Transferability Reduced Ensemble "
        "via Promoting Gradient Diversity and Model Smoothness. NeurIPS 2021",
    ),
)
