"""Feature distillation (DVERGE) and the L-inf PGD used inside defense training.

Distillation is its own procedure (momentum with L1-normalized gradients on a feature-matching
loss, the authors' setting); PGD is a call of the attack library's :class:`~robust_ens.attacks.PGD`
so there is one attack loop in the project.

Randomness (PGD's random start) comes from an explicit CPU ``torch.Generator`` so a training
step is reproducible and a resumed run retraces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.defenses.base import tsum
from robust_ens.defenses.features import get_features

DistillMode = Literal["batched", "loop"]


@contextlib.contextmanager
def eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block and restore each one's previous mode after."""
    states = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, s in zip(modules, states, strict=True):
            m.train(s)


def _l1_normalize(g: torch.Tensor) -> torch.Tensor:
    """Divide each sample's gradient by its L1 norm (the momentum normalization of MI-FGSM)."""
    flat = g.flatten(1).abs().sum(1).clamp_min(1e-12)
    return g / flat.view(-1, *([1] * (g.dim() - 1)))


def _project(x_adv: torch.Tensor, x_nat: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.minimum(torch.maximum(x_adv, x_nat - eps), x_nat + eps).clamp_(0.0, 1.0)


def distill_features(
    models: Sequence[nn.Module],
    source: torch.Tensor,
    target: torch.Tensor,
    layer: str,
    *,
    eps: float = 0.07,
    alpha: float = 0.007,
    steps: int = 10,
    momentum: bool = True,
    mu: float = 1.0,
    mode: DistillMode = "batched",
    recompute_target: bool = False,
) -> list[torch.Tensor]:
    """DVERGE feature distillation of ``target`` into ``source`` for every model.

    For each model ``m``: starting from ``source``, take ``steps`` sign steps of size ``alpha``
    that *decrease* ``MSE(f_m(x), f_m(target))`` where ``f_m`` is the feature at ``layer``,
    projecting onto the L-inf ball of radius ``eps`` around ``source`` and onto [0, 1]. With
    ``momentum`` the step direction is the sign of the accumulated L1-normalized gradients
    (``g <- mu * g + grad / ||grad||_1``), as in the authors' ``Linf_distillation``.

    The models are used in whatever mode they are in; DVERGE training leaves them in train mode
    by default, as the authors do (see :mod:`robust_ens.defenses.dverge`). Parameter gradients
    are never touched.

    Args:
        models: The members (each distills its own copy of ``source``).
        source: Source images ``[B, C, H, W]`` in [0, 1].
        target: Target images, same shape.
        layer: Feature layer (module name, optionally ``":in"``; see :mod:`.features`).
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        momentum: Accumulate L1-normalized gradients.
        mu: Momentum decay.
        mode: ``"batched"`` advances all models in lock step (one autograd call and one vectorized
            update per step for all models); ``"loop"`` distills one model after the other, like
            the authors' code. Both give the same images.
        recompute_target: Recompute the target features at every step, after the source
            forward pass, as the authors' ``gradient_wrt_feature`` does. The features are the
            same (in train mode BatchNorm uses batch statistics); what changes is that
            BatchNorm's running statistics are updated in the authors' order and number.
            Otherwise they are computed once, before the first step.

    Returns:
        One distilled batch per model, detached.
    """
    src = source.detach()
    tgt = target.detach()

    def target_features(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return get_features(m, tgt, layer).detach()

    feats_t: list[torch.Tensor | None] = [None if recompute_target else target_features(m) for m in models]
    if mode == "loop":
        return [_distill_one(m, src, ft0, target_features, layer, eps, alpha, steps, momentum, mu)
                for m, ft0 in zip(models, feats_t, strict=True)]
    if mode != "batched":
        raise ValueError(f"mode must be 'batched' or 'loop', got {mode!r}")
    return _distill_batched(models, src, feats_t, target_features, layer, eps, alpha, steps, momentum, mu)


def _distill_one(
    m: nn.Module, src: torch.Tensor, ft0: torch.Tensor | None, target_features: Callable[[nn.Module], torch.Tensor],
    layer: str, eps: float, alpha: float, steps: int, momentum: bool, mu: float,
) -> torch.Tensor:
    """:func:`distill_features` for one model (``mode="loop"``); ``ft0=None`` recomputes the target per step."""
    x = src.clone()
    g = torch.zeros_like(x)
    for _ in range(steps):
        x.requires_grad_(True)
        fs = get_features(m, x, layer)
        ft = target_features(m) if ft0 is None else ft0
        loss = F.mse_loss(fs.float(), ft.float())
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            if momentum:
                g = mu * g + _l1_normalize(grad)
                direction = g
            else:
                direction = grad
            x = _project(x.detach() - alpha * direction.sign(), src, eps)
    return x.detach()


def _distill_batched(
    models: Sequence[nn.Module], src: torch.Tensor, feats_t: list[torch.Tensor | None],
    target_features: Callable[[nn.Module], torch.Tensor], layer: str, eps: float, alpha: float, steps: int,
    momentum: bool, mu: float,
) -> list[torch.Tensor]:
    """:func:`distill_features` for all models in lock step (``mode="batched"``)."""
    k = len(models)
    xs = src.unsqueeze(0).repeat(k, *([1] * src.dim()))  # [K, B, ...]
    g = torch.zeros_like(xs)
    src_k = src.unsqueeze(0).expand_as(xs)
    for _ in range(steps):
        xs.requires_grad_(True)
        terms = []
        for i, m in enumerate(models):
            fs = get_features(m, xs[i], layer)
            ft_i = feats_t[i]
            ft = target_features(m) if ft_i is None else ft_i
            terms.append(F.mse_loss(fs.float(), ft.float()))
        loss = tsum(terms)
        (grad,) = torch.autograd.grad(loss, xs)  # member i's loss depends on xs[i] only
        with torch.no_grad():
            if momentum:
                flat = grad.flatten(2).abs().sum(2).clamp_min(1e-12)
                g = mu * g + grad / flat.view(k, -1, *([1] * (src.dim() - 1)))
                direction = g
            else:
                direction = grad
            xs = _project(xs.detach() - alpha * direction.sign(), src_k, eps)
    return list(xs.detach().unbind(0))


class _Callable(nn.Module):
    """Expose a ``f(x) -> logits`` closure (e.g. a joint ensemble forward) as a module for the attack.

    The closure's modules are not submodules, so the attack's eval-mode switch does not reach
    them (how ``linf_pgd(keep_mode=True)`` keeps a member in train mode).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], num_classes: int | None = None) -> None:
        super().__init__()
        self.fn = fn
        if num_classes is not None:
            self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def linf_pgd(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    keep_mode: bool = False,
) -> torch.Tensor:
    """Untargeted L-inf PGD (Madry et al. 2018) for training-time adversarial terms.

    A thin call of :class:`robust_ens.attacks.PGD`, so defenses and the benchmark share the one
    attack loop (and its budget enforcement). Inputs outside [0, 1] (GAL's unclipped Gaussian
    noise) are clipped to the box first, since adversarial images live in it.

    Args:
        model: Maps [0, 1] images to logits (a module or a closure).
        x: Images ``[B, C, H, W]``.
        y: Labels ``[B]``.
        eps: L-inf budget.
        alpha: Step size.
        steps: Number of steps.
        random_start: Start from a uniform point in the eps-ball.
        generator: CPU generator for the random start (``None``: a fixed seed of 0).
        keep_mode: Attack ``model`` in the mode it is in (a member in train mode stays in train
            mode, as in DVERGE's ``Linf_PGD``); by default the attack runs it in eval mode.

    Returns:
        Adversarial images, detached, within ``eps`` of the clipped ``x`` and in [0, 1].
    """
    from robust_ens.attacks import PGD

    x_box = x.detach().float().clamp(0.0, 1.0)
    if keep_mode and isinstance(model, nn.Module):
        with eval_mode([model]), torch.no_grad():  # class count without touching BatchNorm statistics
            k = int(model(x_box[:1].to(next(model.parameters()).dtype)).shape[-1])
        member = model
        module: nn.Module = _Callable(lambda z: member(z), num_classes=k)  # a closure: not a submodule
    else:
        module = model if isinstance(model, nn.Module) else _Callable(model)
    atk = PGD(eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    if generator is not None:
        res = atk(module, x_box, y, generator=generator)
    else:
        res = atk(module, x_box, y, seed=0)
    return res.x_adv.detach().to(x.dtype)
