"""ADP: Adaptive Diversity Promoting regularization (Pang et al., ICML 2019).

Loss on a batch (following the paper and the PyTorch port in DVERGE's repository)::

    L = sum_i CE(f_i(x), y) - alpha * H(mean_i softmax f_i(x)) - beta * log det(M M^T + 1e-6 I)

where ``H`` is the Shannon entropy of the ensemble's mean prediction (``log(p + 1e-20)``), and
the rows of ``M`` (one per member) are each member's predicted probabilities of the *non-true*
classes, L2-normalized; the log-determinant is averaged over the batch. Defaults: alpha 2.0,
beta 0.5, Adam lr 1e-3, weight decay 1e-4 (the authors' Adam also sets eps 1e-7; the shared loop
uses PyTorch's 1e-8). Optional adversarial term (``plus_adv``): cross-entropy of every member on
PGD examples crafted against the ensemble (mean logits), eps 8/255, step 2/255, 10 steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.defenses.base import DEFENSES, DefenseSpec, as_float, tsum
from robust_ens.defenses.distill import eval_mode, linf_pgd
from robust_ens.overrides import Count, PixelBudget, PixelStep, Weight, check_fields
from robust_ens.train import StepContext, StepFn, TrainConfig

LOG_OFFSET = 1e-20
DET_OFFSET = 1e-6


@dataclass
class ADPParams:
    """ADP hyperparameters.

    Attributes:
        alpha: Weight of the ensemble entropy.
        beta: Weight of the log-determinant (ensemble diversity).
        plus_adv: Add adversarial cross-entropy on PGD examples against the ensemble.
        adv_eps: PGD budget.
        adv_alpha: PGD step size.
        adv_steps: PGD steps.
    """

    alpha: Weight = 2.0
    beta: Weight = 0.5
    plus_adv: bool = False
    adv_eps: PixelBudget = 8 / 255
    adv_alpha: PixelStep = 2 / 255
    adv_steps: Count = 10

    def __post_init__(self) -> None:
        check_fields(self, "adp hyperparameter")


def adp_regularizer(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ensemble entropy and mean log-determinant of ADP from member logits ``[M, B, K]``.

    Returns:
        ``(entropy, log_det)``, both scalars (batch means).
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):  # logdet needs fp32
        return _adp_regularizer(as_float(logits), y)


def _adp_regularizer(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m, b, k = logits.shape
    probs = F.softmax(logits, dim=-1)  # [M, B, K]
    mean = probs.mean(0)
    entropy = -(mean * torch.log(mean + LOG_OFFSET)).sum(-1).mean()
    keep = ~F.one_hot(y, k).bool()  # [B, K]
    non_true = probs.permute(1, 0, 2)[keep.unsqueeze(1).expand(b, m, k)].view(b, m, k - 1)
    non_true = non_true / non_true.norm(p=2, dim=-1, keepdim=True)
    gram = non_true @ non_true.transpose(1, 2)  # [B, M, M]
    log_det = torch.logdet(gram + DET_OFFSET * torch.eye(m, device=gram.device, dtype=gram.dtype)).mean()
    return entropy, log_det


def adp_loss(
    members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, params: ADPParams,
    x_adv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ADP loss of ``members`` on a batch (plus the adversarial term when ``x_adv`` is given)."""
    logits = torch.stack([as_float(m(x)) for m in members])
    ce = tsum(F.cross_entropy(z, y) for z in logits)
    entropy, log_det = adp_regularizer(logits, y)
    loss = ce - params.alpha * entropy - params.beta * log_det
    metrics = {"ce": ce.detach(), "entropy": entropy.detach(), "log_det": log_det.detach(),
               "train_acc": (logits.mean(0).argmax(-1) == y).float().mean()}
    if x_adv is not None:
        adv = tsum(F.cross_entropy(as_float(m(x_adv)), y) for m in members)
        loss = loss + adv
        metrics["adv_ce"] = adv.detach()
    return loss, metrics


def make_step(members: Sequence[nn.Module], params: ADPParams, config: TrainConfig) -> StepFn:
    """Training step of ADP."""

    def ensemble(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([as_float(m(x)) for m in members]).mean(0)

    def step(x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_adv = None
        if params.plus_adv:
            with eval_mode(members):
                x_adv = linf_pgd(ensemble, x, y, eps=params.adv_eps, alpha=params.adv_alpha,
                                 steps=params.adv_steps, generator=ctx.generator)
        return adp_loss(members, x, y, params, x_adv)

    return step


DEFENSES.add(
    "adp",
    DefenseSpec(
        name="adp", params_cls=ADPParams, make_step=make_step, min_members=2,
        paper="Pang, Xu, Du, Chen, Zhu. Improving Adversarial Robustness via Promoting Ensemble Diversity. "
        "ICML 2019",
    ),
)
