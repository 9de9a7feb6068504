"""GAL: Gradient Alignment Loss (Kariyappa & Qureshi, 2019).

Loss on a batch (paper, and the PyTorch port in DVERGE's repository)::

    L = (1/N) sum_i CE(f_i(x), y) + lambda * mean_b log sum_{i<j} exp(cos(g_i(x_b), g_j(x_b)))

with ``g_i = d CE(f_i(x), y) / dx`` computed with ``create_graph=True`` so the coherence term is
differentiated through (second order). Defaults: lambda 0.5, members with leaky ReLU (slope 0.1),
Adam lr 1e-3, weight decay 1e-4, and Gaussian noise augmentation: each training image, with
probability 0.5, gets N(0, 0.045^2) noise (not clipped to [0, 1], as in the authors' port).

Departure: the authors' port runs a second forward pass on ``x.detach()`` for the cross-entropy;
that pass gives the same logits, so one forward pass serves both terms here (BatchNorm running
statistics get one update per step instead of two).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.defenses.base import DEFENSES, DefenseSpec, as_float, tsum
from robust_ens.defenses.distill import eval_mode, linf_pgd
from robust_ens.overrides import Count, PixelBudget, PixelStep, Probability, Range, Weight, check_fields
from robust_ens.train import StepContext, StepFn, TrainConfig

LOG_OFFSET = 1e-20


@dataclass
class GALParams:
    """GAL hyperparameters.

    Attributes:
        lam: Weight of the gradient-coherence term (the paper's lambda).
        leaky_relu: Negative slope of the members' activations (applied when members are built
            from scratch and the architecture has a ``leaky_relu`` option); 0 keeps ReLU.
        noise_std: Std of the Gaussian noise augmentation.
        noise_p: Probability that an image gets noise.
        plus_adv: Add the adversarial cross-entropy (PGD against the ensemble), averaged over members.
        adv_eps: PGD budget.
        adv_alpha: PGD step size.
        adv_steps: PGD steps.
    """

    lam: Weight = 0.5
    leaky_relu: Annotated[float, Range(0, 1, high_open=True, what="a negative slope")] = 0.1
    noise_std: Annotated[float, Range(0, 1, what="a noise std", note="on images in [0, 1]")] = 0.045
    noise_p: Probability = 0.5
    plus_adv: bool = False
    adv_eps: PixelBudget = 8 / 255
    adv_alpha: PixelStep = 2 / 255
    adv_steps: Count = 10

    def __post_init__(self) -> None:
        check_fields(self, "gal hyperparameter")


def input_gradients(
    members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, create_graph: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Logits and flattened input gradients of each member's mean cross-entropy.

    Args:
        members: Models.
        x: Inputs; a leaf that requires grad is made from them.
        y: Labels.
        create_graph: Keep the graph of the gradients (needed to train through them).

    Returns:
        ``(logits, grads)``: per member, logits ``[B, K]`` and gradients ``[B, D]``.
    """
    x = x.detach().requires_grad_(True)
    logits, grads = [], []
    for m in members:
        z = as_float(m(x))
        (g,) = torch.autograd.grad(F.cross_entropy(z, y), x, create_graph=create_graph)
        logits.append(z)
        grads.append(g.flatten(1))
    return logits, grads


def pairwise_cosines(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-example cosine similarity of every member pair ``i < j``: ``[B, P]``."""
    n = len(grads)
    return torch.stack(
        [F.cosine_similarity(as_float(grads[i]), as_float(grads[j]), dim=-1) for i in range(n) for j in range(i + 1, n)],
        dim=-1,
    )


def gal_loss(
    members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, params: GALParams,
    x_adv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GAL loss of ``members`` on a (noise-augmented) batch ``x``."""
    logits, grads = input_gradients(members, x, y, create_graph=True)
    ce = tsum(F.cross_entropy(z, y) for z in logits)
    cos = pairwise_cosines(grads)
    coherence = torch.log(cos.exp().sum(-1) + LOG_OFFSET).mean()
    n = len(members)
    loss = ce / n + params.lam * coherence
    metrics: dict[str, Any] = {"ce": ce.detach() / n, "coherence": coherence.detach(),
                               "mean_cos": cos.detach().mean(),
                               "train_acc": (torch.stack(logits).mean(0).argmax(-1) == y).float().mean()}
    if x_adv is not None:
        adv = tsum(F.cross_entropy(as_float(m(x_adv)), y) for m in members)
        loss = loss + adv / n
        metrics["adv_ce"] = adv.detach() / n
    return loss, metrics


def add_noise(x: torch.Tensor, std: float, p: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise on a random subset (probability ``p`` each) of the batch (not clipped, as the authors)."""
    if std <= 0 or p <= 0:
        return x
    pick = torch.rand(len(x), generator=generator) < p
    noise = torch.randn(x.shape, generator=generator) * std
    noise = noise * pick.view(-1, *([1] * (x.dim() - 1)))
    return x + noise.to(device=x.device, dtype=x.dtype)


def make_step(members: Sequence[nn.Module], params: GALParams, config: TrainConfig) -> StepFn:
    """Training step of GAL (noise augmentation drawn from the epoch generator)."""

    def ensemble(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([as_float(m(x)) for m in members]).mean(0)

    def step(x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = add_noise(x, params.noise_std, params.noise_p, ctx.generator)
        x_adv = None
        if params.plus_adv:
            with eval_mode(members):
                x_adv = linf_pgd(ensemble, x, y, eps=params.adv_eps, alpha=params.adv_alpha,
                                 steps=params.adv_steps, generator=ctx.generator)
        return gal_loss(members, x, y, params, x_adv)

    return step


DEFENSES.add(
    "gal",
    DefenseSpec(
        name="gal", params_cls=GALParams, make_step=make_step, min_members=2,
        paper="Kariyappa, Qureshi. Improving Adversarial Robustness of Ensembles with Diversity Training. "
        "arXiv:1901.09981, 2019",
        arch_kwargs=lambda p: {"leaky_relu": p.leaky_relu} if p.leaky_relu else {},
    ),
)
