"""DVERGE: Diversifying Vulnerabilities for Enhanced Robust Generation of Ensembles (Yang et al., NeurIPS 2020).

Per batch ``(x_s, y_s)`` with target images ``x_t``:

1. For every member ``j``: distill the features of ``x_t`` at the epoch's layer into ``x_s``
   (:func:`~robust_ens.defenses.distill.distill_features`: 10 sign steps of 0.007 within an
   L-inf ball of 0.07, momentum with L1-normalized gradients), giving ``x'_j``.
2. Train every member ``i`` on the other members' distilled images with the *source* labels::

       L_i = sum_{j != i} CE(f_i(x'_j), y_s)          (all pairs, the default)
       L_i = CE(f_i(x'_{j(i, t)}), y_s)                (round_robin: one partner per step,
                                                        j(i, t) = (i + 1 + t mod (N-1)) mod N)

   With ``plus_adv``: ``L_i <- coeff * L_i + CE(f_i(PGD_i(x_s)), y_s)`` where ``PGD_i`` attacks
   member ``i`` alone (eps 8/255, step 2/255, 10 steps, random start).

A new layer is drawn each epoch (uniformly from the candidates; the epoch generator makes it
reproducible on resume). Layers are module names (see :mod:`robust_ens.defenses.features`); the
default candidates for ResNet-20 are the authors' 20 pre-activation layers.

Authors' code: zjysteven/DVERGE, ``train/train_dverge.py`` (``DVERGE_Trainer.train``),
``distillation.py`` (``Linf_distillation``, ``gradient_wrt_feature``, ``Linf_PGD``) and
``arguments.py`` (the defaults above).

Fidelity switch (the rule: a default reproduces the authors' code unless the paper's text or batch
independence says otherwise; training couples the examples of a batch anyway, so batch
independence does not decide this one):

* ``distill_train_mode`` (default True, the authors' code): members stay in **train mode** while
  distilling and during plus_adv's PGD, as ``DVERGE_Trainer.train`` leaves them. BatchNorm then
  normalizes with the statistics of the batch being perturbed, and each distillation step runs
  two forward passes (the source images, then the target images, whose features
  ``gradient_wrt_feature`` recomputes at every step), so the running statistics move 2 x
  ``steps`` times per member and batch. Here the target features are recomputed at every step
  too in this mode, so the running statistics follow the authors' sequence (their values do
  not change between steps: train-mode BatchNorm does not read its running statistics).
  False puts the members in **eval mode** for distillation and PGD (this package's behaviour
  before issue 15): the distilled features are those of the deployed network and the running
  statistics only see the training passes. Training passes (step 2) are in train mode either way.

Departures from the authors' code, on purpose:

* Target images are the same augmented batch in another order (a random derangement drawn from
  the epoch generator) instead of a second, independently shuffled data loader; both pair every
  source with a random other training image.
* With ``init=None`` members first get a baseline warm-up: independent cross-entropy training
  with the recipe's ``[tier.warmup]`` settings (full tier: DVERGE's 200-epoch baseline recipe),
  see :func:`robust_ens.defenses.train_defense`. The authors start from such pre-trained
  baseline members, which ``init=`` also accepts directly.

All members' distillations run in lock step by default (``distill_mode="batched"``: one autograd
call per step for all members); ``"loop"`` is the straightforward per-member loop. Both give the
same images; ``suites/speed/bench_defenses.py`` times them against each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.defenses.base import DEFENSES, DefenseSpec, as_float, tsum
from robust_ens.defenses.distill import DistillMode, distill_features, eval_mode, linf_pgd
from robust_ens.defenses.features import check_layers, feature_layers
from robust_ens.overrides import Count, PixelBudget, PixelStep, Weight, check_fields
from robust_ens.train import StepContext, StepFn, TrainConfig


@dataclass
class DVERGEParams:
    """DVERGE hyperparameters.

    Attributes:
        eps: Distillation L-inf budget.
        alpha: Distillation step size.
        steps: Distillation steps.
        momentum: Momentum with L1-normalized gradients in distillation.
        layers: Candidate layers (module names, ``":in"`` for a module's input); empty: all
            pre-activation features and the logits (:func:`~.features.feature_layers`).
        layer: A fixed layer instead of a random one per epoch (``""``: random).
        round_robin: Each member learns from one other member per step instead of all of them.
        plus_adv: Add per-member PGD adversarial training.
        coeff: Weight of the diversity loss when ``plus_adv`` is on.
        adv_eps: PGD budget.
        adv_alpha: PGD step size.
        adv_steps: PGD steps.
        distill_mode: ``"batched"`` (all members in lock step) or ``"loop"`` (one after the other).
        distill_train_mode: Members in train mode while distilling and during plus_adv's PGD
            (default True, the authors' code; False: eval mode).
    """

    eps: PixelBudget = 0.07
    alpha: PixelStep = 0.007
    steps: Count = 10
    momentum: bool = True
    layers: list[str] = field(default_factory=list)
    layer: str = ""
    round_robin: bool = False
    plus_adv: bool = False
    coeff: Weight = 1.0
    adv_eps: PixelBudget = 8 / 255
    adv_alpha: PixelStep = 2 / 255
    adv_steps: Count = 10
    distill_mode: DistillMode = "batched"
    distill_train_mode: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "dverge hyperparameter")  # types (distill_mode is a Literal) and ranges
        self.layers = list(self.layers)


def candidate_layers(members: Sequence[nn.Module], params: DVERGEParams) -> list[str]:
    """The layers DVERGE draws from, checked to exist in every member."""
    layers = [params.layer] if params.layer else (list(params.layers) or feature_layers(members[0]))
    for m in members:
        check_layers(m, layers)
    return layers


def partners(i: int, n: int, step: int, round_robin: bool) -> list[int]:
    """The members whose distilled images member ``i`` trains on at global step ``step``."""
    if not round_robin:
        return [j for j in range(n) if j != i]
    return [(i + 1 + step % (n - 1)) % n]


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation with no fixed point (for ``n >= 2``): ``perm[k] != k``."""
    if n < 2:
        return torch.arange(n)
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


def dverge_loss(
    members: Sequence[nn.Module],
    distilled: Sequence[torch.Tensor],
    y: torch.Tensor,
    params: DVERGEParams,
    step: int = 0,
    adv: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sum over members of DVERGE's training loss, given every member's distilled images."""
    n = len(members)
    losses, diversity = [], []
    for i, m in enumerate(members):
        loss_i = tsum(F.cross_entropy(as_float(m(distilled[j])), y) for j in partners(i, n, step, params.round_robin))
        diversity.append(loss_i.detach())
        if adv is not None:
            loss_i = params.coeff * loss_i + F.cross_entropy(as_float(m(adv[i])), y)
        losses.append(loss_i)
    return tsum(losses), {"diversity_ce": tsum(diversity) / n}


def make_step(members: Sequence[nn.Module], params: DVERGEParams, config: TrainConfig) -> StepFn:
    """Training step of DVERGE (layer drawn at the first step of each epoch)."""
    layers = candidate_layers(members, params)

    def step(x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, Any]]:
        if "layer" not in ctx.state:
            ctx.state["layer"] = layers[int(torch.randint(len(layers), (1,), generator=ctx.generator))]
        layer = ctx.state["layer"]
        target = x[derangement(len(x), ctx.generator).to(x.device)]
        adv = None
        train_mode = params.distill_train_mode
        with contextlib.nullcontext() if train_mode else eval_mode(members):
            distilled = distill_features(
                members, x, target, layer, eps=params.eps, alpha=params.alpha, steps=params.steps,
                momentum=params.momentum, mode=params.distill_mode, recompute_target=train_mode,
            )
            if params.plus_adv:
                adv = [linf_pgd(m, x, y, eps=params.adv_eps, alpha=params.adv_alpha, steps=params.adv_steps,
                                generator=ctx.generator, keep_mode=train_mode) for m in members]
        loss, metrics = dverge_loss(members, distilled, y, params, ctx.step, adv)
        metrics["layer_index"] = float(layers.index(layer))
        return loss, metrics

    return step


DEFENSES.add(
    "dverge",
    DefenseSpec(
        name="dverge", params_cls=DVERGEParams, make_step=make_step, min_members=2,
        paper="Yang, Zhang, Dong, Inkawhich, Gardner, Touchet, Wilkes, Berry, Li. DVERGE: Diversifying "
        "Vulnerabilities for Enhanced Robust Generation of Ensembles. NeurIPS 2020",
        warm_start=True,
    ),
)
