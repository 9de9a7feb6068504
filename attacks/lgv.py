"""LGV: collect surrogate weights along a high-learning-rate SGD trajectory, then attack them.

Paper: Gubri et al., "LGV: Boosting Adversarial Example Transferability from Large Geometric
Vicinity", ECCV 2022 (https://arxiv.org/abs/2207.13129).

Authors' code: Framartin/lgv-geometric-transferability (``lgv/imagenet/train_cSGD.sh`` and
``train_swag_imagenet.py`` for the collection, ``attack_csgld_pgd_torch.py`` with
``utils/attacks.py`` ``ExtendedProjectedGradientDescentPyTorch`` for the attack,
``lgv/imagenet/attack_inter_arch.sh`` for the settings).

Two parts:

* :func:`lgv_collect` fine-tunes a copy of a trained model with SGD at a constant high learning
  rate (authors: 10 epochs at 0.05 for an ImageNet ResNet-50, momentum 0.9, weight decay 1e-4,
  4 collected weights per epoch) on the project's one training loop (the epochs of
  :func:`robust_ens.train.train_epoch`) and returns the collected models as an
  :class:`~robust_ens.Ensemble`;
* :class:`LGV` (registered ``"lgv"``) is I-FGSM where every iteration attacks one collected model
  (authors: 50 iterations, alpha = eps / 10), visiting them in one random order repeated cyclically
  (``reshuffle=True`` draws a new order for every cycle).

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
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.overrides import Count, Decay, Step, check_call
from robust_ens.train import StepContext, TrainConfig, cross_entropy_step, make_optimizer, train_epoch

from .base import AttackRun, Part, register_attack
from .gradient import MIFGSM

log = logging.getLogger(__name__)


def lgv_collect(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: Count = 10,
    samples_per_epoch: Count = 4,
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
        epochs: Epochs of collection (default 10: ``EPOCHS=10`` in the authors'
            ``lgv/imagenet/train_cSGD.sh``; this package used 4 before issue 15).
        samples_per_epoch: Weights collected per epoch (authors: ``--swa_freq=4``).
        lr: Constant learning rate (authors: ``LR=0.05`` for ImageNet ResNet-50 at batch 256;
            choose it relative to the model's own training rate for other setups).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: Batch size.
        seed: Seed of the data order.
        precision: Precision of the returned Ensemble.

    Returns:
        An Ensemble of the collected models (eval mode).
    """
    check_call(lgv_collect, {"epochs": epochs, "samples_per_epoch": samples_per_epoch})
    if len(x) != len(y) or len(x) == 0:
        raise RobustEnsError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
    # The one training loop's epoch (robust_ens.train.train_epoch) at a constant rate, without
    # augmentation, in fp32; one generator orders the batches of every epoch.
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr, momentum=momentum, nesterov=False,
        weight_decay=weight_decay, schedule="constant", crop_padding=0, flip=False, precision="fp32", seed=seed,
    )
    net = copy.deepcopy(model).train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    g = torch.Generator().manual_seed(seed)
    n_batches = math.ceil(len(x) / batch_size)
    marks = {round((i + 1) * n_batches / samples_per_epoch) - 1 for i in range(samples_per_epoch)}
    collected: list[nn.Module] = []

    def collect(ctx: StepContext, batch: int) -> None:
        if batch in marks:
            collected.append(copy.deepcopy(net).eval())

    step = 0
    for epoch in range(epochs):
        _, step = train_epoch({"model": net}, cross_entropy_step(net), optimizer, params, x, y, config,
                              epoch=epoch, step=step, generator=g, device=x.device, on_step=collect)
        log.debug("lgv_collect: epoch %d, %d models", epoch + 1, len(collected))
    return Ensemble(collected, combine="logits", precision=precision).eval()


@register_attack("lgv", family="ensemble", ensemble_only=True)
class LGV(MIFGSM):
    r"""LGV attack: I-FGSM with one collected model per iteration (random order, reshuffled per cycle).

    Paper: Gubri et al., "LGV: Boosting Adversarial Example Transferability from Large Geometric
    Vicinity", ECCV 2022 (https://arxiv.org/abs/2207.13129). Build the surrogate with
    :func:`lgv_collect` (any Ensemble works).

    Order of the models (``reshuffle``, default False, the authors' code): the authors shuffle the
    list of collected models once (``--shuffle`` in ``attack_csgld_pgd_torch.py``) and iteration
    ``t`` attacks model ``t mod M`` of that list (``ExtendedProjectedGradientDescentPyTorch``),
    so the order repeats every ``M`` iterations. Here the permutation is drawn once per call from
    the attack's generator; ``reshuffle=True`` draws a new one after every cycle (this package's
    behaviour before issue 15).

    TransferAttack (``ensemble/lgv.py``) differs: MI-FGSM (``decay=1.0`` here; the authors and the
    default: I-FGSM, ``decay=0``), eps 16/255, alpha 1.6/255, 10 iterations and a random start; its
    order is Python's ``random.shuffle`` of the checkpoints in sorted file order, and its
    ``LightEnsemble.f_count`` is never reset, so a second batch continues the cycle where the
    first stopped (not reproduced: every call starts a new cycle, batch independent). With its
    recorded order injected (:meth:`member_order`), TA's fixture agrees to rounding
    (tests/test_transferattack_agreement.py).

    Distance measure: Linf (L2 accepted).

    Args:
        eps: Maximum perturbation (default 4/255, the paper's ImageNet budget).
        alpha: Step size (default ``None``: eps / 10).
        steps: Iterations (default 50).
        decay: Momentum (default 0.0: I-FGSM, the authors' attack; TransferAttack: 1.0).
        reshuffle: New random order after every cycle over the models (default False).
        random_start: Random start (default False).
        norm: ``"Linf"`` or ``"L2"``.
        transforms: Extra parts (DI, SI, TI, SGM).

    Example:
        >>> from robust_ens.attacks.lgv import LGV
        >>> LGV().steps
        50
    """

    ensemble_only = True
    code_version = 2  # issue 15: one random order repeated cyclically by default
    reshuffle: bool

    def __init__(
        self,
        *,
        eps: float = 4 / 255,
        alpha: Step | None = None,
        steps: Count = 50,
        decay: Decay = 0.0,
        reshuffle: bool = False,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start, norm=norm,
                         transforms=transforms, reshuffle=bool(reshuffle))

    def direction(self, g: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return g if self.decay == 0 else super().direction(g, state)

    def member_order(self, run: AttackRun, state: dict[str, Any]) -> int:
        """The member attacked at this iteration (``state`` keeps the permutation between steps)."""
        t = int(state.get("t", 0))
        m = run.n_members
        if "perm" not in state or (self.reshuffle and t % m == 0 and t > 0):
            dev = run.generator.device
            state["perm"] = torch.randperm(m, generator=run.generator, device=dev).tolist()
        perm: list[int] = state["perm"]
        return perm[t % m]

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        k = self.member_order(run, state)
        g = self.input_gradient(run, x_adv, lambda z: run.objective(run.member_logit(k, z)))
        return self.transform_gradient(run, g)


__all__ = ["LGV", "lgv_collect"]
