"""The gradient family: FGSM, I-FGSM/BIM, PGD, MI-FGSM, NI-FGSM, VMI-FGSM and their DI/TI/SI/SGM combos.

All of them are configurations of :class:`~robust_ens.attacks.base.Attack`'s one loop; they differ
in the update rule (:meth:`direction`), the point where the gradient is taken (NI) or extra
gradient samples (VMI), and the parts they add by default (DI, TI, SI, SGM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch

from robust_ens.overrides import L2_BUDGET, Count, Decay, Positive, Probability, Step

from .base import Attack, AttackRun, Part, register_attack
from .budget import _TINY, _l1_mean
from .transforms import DI, SGM, SI, TI, SGMGamma

L2Budget = Annotated[float, L2_BUDGET]


@register_attack("bim", family="gradient")
class BIM(Attack):
    r"""I-FGSM / BIM: iterated sign-gradient steps, clipped to the eps ball and [0, 1].

    Paper: Kurakin et al., "Adversarial Examples in the Physical World", ICLR workshop 2017
    (https://arxiv.org/abs/1607.02533).

    Distance measure: Linf (L2 also accepted: L2-normalized steps and projection).

    Args:
        eps: Maximum perturbation (default 8/255).
        alpha: Step size (default 2/255).
        steps: Iterations (default 10). torchattacks' ``steps=0`` heuristic is not supported.
        norm: ``"Linf"`` (default) or ``"L2"``.
        transforms: Extra parts (DI, SI, TI, SGM).

    Shape:
        - x: ``[N, C, H, W]`` in [0, 1]; y: ``[N]``; output ``x_adv``: like ``x``.

    Example:
        >>> import torch
        >>> from robust_ens import models
        >>> from robust_ens.attacks import BIM
        >>> m = models.create("small_cnn", in_chans=1)
        >>> res = BIM(eps=8/255, alpha=2/255, steps=10)(m, torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
        >>> res.x_adv.shape
        torch.Size([4, 1, 8, 8])
    """

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: Step = 2 / 255,
        steps: Count = 10,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        super().__init__(eps=eps, alpha=alpha, steps=steps, random_start=False, norm=norm, transforms=transforms)


register_attack("ifgsm", family="gradient")(lambda **kw: BIM(**kw))


@register_attack("pgd", family="gradient")
class PGD(Attack):
    r"""PGD: I-FGSM from a uniformly random start in the eps ball.

    Paper: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018 (https://arxiv.org/abs/1706.06083).

    Distance measure: Linf (default) or L2.

    Args:
        eps: Maximum perturbation (default 8/255).
        alpha: Step size (default 2/255).
        steps: Iterations (default 10).
        random_start: Uniform random start in the ball (default True, as torchattacks).
        norm: ``"Linf"`` or ``"L2"``.
        transforms: Extra parts (DI, SI, TI, SGM).

    Example:
        >>> import torch
        >>> from robust_ens import models
        >>> from robust_ens.attacks import PGD
        >>> m = models.create("small_cnn", in_chans=1)
        >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> res = PGD(eps=8/255, alpha=2/255, steps=10)(m, x, y, seed=0)
        >>> bool((res.x_adv - x).abs().max() <= 8/255 + 1e-7)
        True
    """

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: Step = 2 / 255,
        steps: Count = 10,
        random_start: bool = True,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        super().__init__(eps=eps, alpha=alpha, steps=steps, random_start=random_start, norm=norm, transforms=transforms)


@register_attack("pgdl2", family="gradient")
def pgdl2(
    *, eps: L2Budget = 1.0, alpha: Step = 0.2, steps: Count = 10, random_start: bool = True,
    transforms: Sequence[Part] = (),
) -> PGD:
    """PGD in the L2 norm with torchattacks' ``PGDL2`` defaults (eps 1.0, alpha 0.2, 10 steps)."""
    return PGD(eps=eps, alpha=alpha, steps=steps, random_start=random_start, norm="L2", transforms=transforms)


@register_attack("fgsm", family="gradient")
class FGSM(Attack):
    r"""FGSM: one sign-gradient step of size eps.

    Paper: Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015
    (https://arxiv.org/abs/1412.6572).

    Distance measure: Linf (L2: one L2-normalized step of length eps, i.e. FGM).

    Args:
        eps: Maximum perturbation (default 8/255).
        norm: ``"Linf"`` or ``"L2"``.
        transforms: Extra parts (DI, SI, TI, SGM).

    Example:
        >>> import torch
        >>> from robust_ens import models
        >>> from robust_ens.attacks import FGSM
        >>> m = models.create("small_cnn", in_chans=1)
        >>> FGSM(eps=8/255)(m, torch.rand(2, 1, 8, 8), torch.tensor([3, 4])).cost.backward
        1.0
    """

    def __init__(self, *, eps: float = 8 / 255, norm: str = "Linf", transforms: Sequence[Part] = ()) -> None:
        super().__init__(eps=eps, alpha=None, steps=1, random_start=False, norm=norm, transforms=transforms)
        self._names = [n for n in self._names if n not in ("alpha", "steps", "random_start")]

    @property
    def step_size(self) -> float:
        return self.eps


@register_attack("mifgsm", family="gradient")
class MIFGSM(Attack):
    r"""MI-FGSM: sign steps along an accumulated, L1-normalized gradient (momentum).

    Paper: Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018
    (https://arxiv.org/abs/1710.06081).

    Update: ``g = decay * g + grad / mean(|grad|)`` (per example), ``x += alpha * sign(g)``.

    Distance measure: Linf (L2: L2-normalized steps along ``g``).

    Args:
        eps: Maximum perturbation (default 8/255).
        alpha: Step size (default 2/255).
        steps: Iterations (default 10).
        decay: Momentum factor mu (default 1.0).
        random_start: Random start in the ball (default False).
        norm: ``"Linf"`` or ``"L2"``.
        transforms: Extra parts (DI, SI, TI, SGM): ``[DI()]`` is M-DI2-FGSM, ``[DI(), TI()]`` TI-DIM.

    Example:
        >>> import torch
        >>> from robust_ens import models, Ensemble
        >>> from robust_ens.attacks import MIFGSM
        >>> ens = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(2)])
        >>> res = MIFGSM(eps=8/255, alpha=2/255, steps=10)(ens, torch.rand(4, 1, 8, 8), torch.arange(4))
        >>> res.cost.forward  # 10 steps x 2 members
        20.0
    """

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: Step | None = 2 / 255,
        steps: Count = 10,
        decay: Decay = 1.0,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
        **extra: Any,
    ) -> None:
        super().__init__(
            eps=eps, alpha=alpha, steps=steps, random_start=random_start, norm=norm,
            decay=float(decay), transforms=transforms, **extra,
        )

    decay: float

    def direction(self, g: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        g = g / (_l1_mean(g) + _TINY)
        prev = state.get("momentum")
        m = g if prev is None else g + self.decay * prev
        state["momentum"] = m
        return m


@register_attack("nifgsm", family="gradient")
class NIFGSM(MIFGSM):
    r"""NI-FGSM: MI-FGSM with the gradient taken at the Nesterov look-ahead point.

    Paper: Lin et al., "Nesterov Accelerated Gradient and Scale Invariance for Adversarial
    Attacks", ICLR 2020 (https://arxiv.org/abs/1908.06281).

    The look-ahead is ``x_adv + alpha * decay * g`` (not clipped, as in the paper and torchattacks;
    it may leave [0, 1] for the gradient evaluation only).

    Distance measure: Linf.

    Args:
        eps: Maximum perturbation (default 8/255).
        alpha: Step size (default 2/255).
        steps: Iterations (default 10).
        decay: Momentum factor (default 1.0).
        transforms: Extra parts; ``[SI()]`` gives SI-NI-FGSM.

    Example:
        >>> from robust_ens.attacks import NIFGSM
        >>> NIFGSM(eps=8/255).decay
        1.0
    """

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: Step = 2 / 255,
        steps: Count = 10,
        decay: Decay = 1.0,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
        **extra: Any,
    ) -> None:
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start,
                         norm=norm, transforms=transforms, **extra)

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        m = state.get("momentum")
        point = x_adv if m is None else x_adv + self.step_size * self.decay * m
        return self.transform_gradient(run, self.input_gradient(run, point))


@register_attack("sinifgsm", family="gradient")
def sinifgsm(
    *, eps: float = 8 / 255, alpha: Step = 2 / 255, steps: Count = 10, decay: Decay = 1.0, m: Count = 5,
    transforms: Sequence[Part] = (),
) -> NIFGSM:
    """SI-NI-FGSM (Lin et al., ICLR 2020): NI-FGSM with ``m`` scale copies (torchattacks' ``SINIFGSM``)."""
    return NIFGSM(eps=eps, alpha=alpha, steps=steps, decay=decay, transforms=(SI(m=m), *transforms))


@register_attack("vmifgsm", family="gradient")
class VMIFGSM(MIFGSM):
    r"""VMI-FGSM: MI-FGSM with variance tuning from gradients sampled around the current point.

    Paper: Wang & He, "Enhancing the Transferability of Adversarial Attacks through Variance
    Tuning", CVPR 2021 (https://arxiv.org/abs/2103.15571).

    Each step uses ``grad + v`` where ``v`` is the mean gradient at ``N`` neighbors
    ``x_adv + U(-beta*eps, beta*eps)`` of the previous point minus its gradient there.

    Distance measure: Linf.

    Args:
        eps: Maximum perturbation (default 8/255).
        alpha: Step size (default 2/255).
        steps: Iterations (default 10).
        decay: Momentum factor (default 1.0).
        N: Neighbors sampled per step (default 20, the paper; torchattacks uses 5).
        beta: Neighborhood radius in units of eps (default 1.5).
        transforms: Extra parts.

    Example:
        >>> from robust_ens.attacks import VMIFGSM
        >>> VMIFGSM(eps=8/255, N=5).N
        5
    """

    N: int
    beta: float

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: Step = 2 / 255,
        steps: Count = 10,
        decay: Decay = 1.0,
        N: Count = 20,
        beta: Positive = 1.5,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start,
                         norm=norm, transforms=transforms, N=int(N), beta=float(beta))

    def gradient(self, run: AttackRun, x: torch.Tensor, x_adv: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        g = self.input_gradient(run, x_adv)
        v = state.get("variance")
        out = g if v is None else g + v
        radius = self.beta * self.eps
        total = torch.zeros_like(x_adv)
        for _ in range(self.N):
            nb = x_adv + (run.rand_like(x_adv) * 2 - 1) * radius
            total = total + self.input_gradient(run, nb)
        state["variance"] = total / self.N - g
        return self.transform_gradient(run, out)


@register_attack("difgsm", family="gradient")
class DIFGSM(MIFGSM):
    r"""DI2-FGSM / M-DI2-FGSM: (momentum) I-FGSM on randomly resized and padded inputs.

    Paper: Xie et al., "Improving Transferability of Adversarial Examples with Input Diversity",
    CVPR 2019 (https://arxiv.org/abs/1803.06978).

    Defaults follow torchattacks' ``DIFGSM`` (``decay=0``: DI2-FGSM); ``decay=1`` is M-DI2-FGSM
    (registered as ``"mdi2fgsm"``).

    Distance measure: Linf.

    Args:
        eps: Maximum perturbation (default 8/255).
        alpha: Step size (default 2/255).
        steps: Iterations (default 10).
        decay: Momentum factor (default 0.0).
        resize_rate: DI size ratio (default 0.9).
        diversity_prob: DI probability (default 0.5).
        random_start: Random start (default False).
        transforms: Extra parts after DI.

    Example:
        >>> from robust_ens.attacks import DIFGSM
        >>> DIFGSM(eps=8/255, decay=1.0).transforms
        (DI(resize_rate=0.9, diversity_prob=0.5),)
    """

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: Step = 2 / 255,
        steps: Count = 10,
        decay: Decay = 0.0,
        resize_rate: Positive = 0.9,
        diversity_prob: Probability = 0.5,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        di = DI(resize_rate=resize_rate, diversity_prob=diversity_prob)
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start,
                         norm=norm, transforms=(di, *transforms))


@register_attack("mdi2fgsm", family="gradient")
def mdi2fgsm(**kw: Any) -> DIFGSM:
    """M-DI2-FGSM: :class:`DIFGSM` with momentum ``decay=1.0`` (Xie et al., CVPR 2019)."""
    kw.setdefault("decay", 1.0)
    return DIFGSM(**kw)


@register_attack("tifgsm", family="gradient")
class TIFGSM(MIFGSM):
    r"""TI-FGSM: gradients smoothed by a Gaussian kernel; with DI and momentum it is TI-DIM.

    Paper: Dong et al., "Evading Defenses to Transferable Adversarial Examples by
    Translation-Invariant Attacks", CVPR 2019 (https://arxiv.org/abs/1904.02884).

    Defaults follow torchattacks' ``TIFGSM`` (gaussian kernel, nsig 3, DI with probability 0.5,
    ``decay=0``) except ``len_kernel``: ``None`` scales with the image (7 at 32 px, 15 at 224 px).
    ``decay=1`` gives TI-DIM (registered as ``"tidim"``).

    Distance measure: Linf.

    Args:
        eps: Maximum perturbation (default 8/255).
        alpha: Step size (default 2/255).
        steps: Iterations (default 10).
        decay: Momentum factor (default 0.0).
        len_kernel: Kernel side (default ``None``: by image size).
        nsig: Kernel width in standard deviations (default 3).
        resize_rate: DI size ratio (default 0.9).
        diversity_prob: DI probability (default 0.5; 0 turns DI off).
        random_start: Random start (default False).
        transforms: Extra parts.

    Example:
        >>> from robust_ens.attacks import TIFGSM
        >>> TIFGSM(eps=8/255, decay=1.0).transforms
        (DI(resize_rate=0.9, diversity_prob=0.5), TI(len_kernel=None, nsig=3.0))
    """

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: Step = 2 / 255,
        steps: Count = 10,
        decay: Decay = 0.0,
        len_kernel: Count | None = None,
        nsig: Positive = 3.0,
        resize_rate: Positive = 0.9,
        diversity_prob: Probability = 0.5,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        parts: tuple[Part, ...] = (TI(len_kernel=len_kernel, nsig=nsig),)
        if diversity_prob > 0:
            parts = (DI(resize_rate=resize_rate, diversity_prob=diversity_prob), *parts)
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start,
                         norm=norm, transforms=(*parts, *transforms))


@register_attack("tidim", family="gradient")
def tidim(**kw: Any) -> TIFGSM:
    """TI-DIM: :class:`TIFGSM` with momentum ``decay=1.0`` and DI (Dong et al., CVPR 2019)."""
    kw.setdefault("decay", 1.0)
    return TIFGSM(**kw)


@register_attack("sgm", family="gradient")
def sgm(
    *, eps: float = 8 / 255, alpha: Step = 2 / 255, steps: Count = 10, gamma: SGMGamma = 0.2, decay: Decay = 0.0,
    decay_first_block: bool = False, random_start: bool = False, transforms: Sequence[Part] = (),
) -> MIFGSM:
    """SGM (Wu et al., ICLR 2020): I-FGSM (``decay=0``) or MI-FGSM with skip-gradient hooks, gamma 0.2.

    ``decay_first_block`` is :class:`~robust_ens.attacks.SGM`'s switch (default False: the first
    block of each stage keeps its residual gradient, as in the authors' ``utils_sgm.py``).
    """
    return MIFGSM(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start,
                  transforms=(SGM(gamma=gamma, decay_first_block=decay_first_block), *transforms))


__all__ = ["BIM", "DIFGSM", "FGSM", "MIFGSM", "NIFGSM", "PGD", "TIFGSM", "VMIFGSM"]
