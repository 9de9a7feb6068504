"""Composable attack parts: input diversity (DI), scale copies (SI), translation smoothing (TI), SGM.

Any iterative attack accepts them through ``transforms=``::

    MIFGSM(eps=8/255, transforms=[DI(), TI()])          # TI-DIM
    PGD(eps=8/255, transforms=[SI(m=5)])                 # scale-invariant PGD
    MIFGSM(eps=8/255, transforms=[SGM(gamma=0.2)])       # skip-gradient method on a ResNet

Input transforms are applied in the order given, and the gradient is averaged over the product
of their copies; gradient transforms run after; model hooks are installed for the call only.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.overrides import Count, Positive, Probability, Range

from .parts import GradientTransform, InputTransform, ModelHook
from .run import AttackRun

log = logging.getLogger(__name__)

#: SGM's decay of the residual branches' gradient (1: no effect).
SGMGamma = Annotated[float, Range(0, 1, low_open=True, what="a residual-gradient decay")]


class DI(InputTransform):
    r"""Diverse inputs: random resize and pad, applied with probability ``diversity_prob``.

    Paper: Xie et al., "Improving Transferability of Adversarial Examples with Input Diversity",
    CVPR 2019 (https://arxiv.org/abs/1803.06978).

    With ``resize_rate < 1`` (torchattacks' default 0.9) the image is shrunk to a random size in
    ``[rate * H, H)`` and zero-padded back to ``H x W`` at a random offset, so the model sees its
    native size. With ``resize_rate > 1`` (the paper's 299 -> [299, 330)) it is enlarged and
    padded to ``rate * H``; use that only with models that accept other sizes (global pooling).
    One size and offset are drawn per call for the whole batch, as in the reference code.

    Args:
        resize_rate: Size ratio (default 0.9).
        diversity_prob: Probability of transforming (default 0.5).

    Example:
        >>> from robust_ens.attacks import MIFGSM, DI
        >>> MIFGSM(eps=8/255, transforms=[DI()])
        MIFGSM(eps=8/255, alpha=2/255, steps=10, random_start=False, norm='Linf', decay=1.0, transforms=[DI(resize_rate=0.9, diversity_prob=0.5)])
    """

    def __init__(self, *, resize_rate: Positive = 0.9, diversity_prob: Probability = 0.5) -> None:
        self.resize_rate = float(resize_rate)
        self.diversity_prob = float(diversity_prob)

    def apply(self, x: torch.Tensor, index: int, run: AttackRun) -> torch.Tensor:
        if float(torch.rand((), generator=run.generator, device=run.generator.device)) >= self.diversity_prob:
            return x
        h, w = x.shape[-2:]
        if self.resize_rate < 1:
            lo_h, out_h = int(h * self.resize_rate), h
        else:
            lo_h, out_h = h, int(h * self.resize_rate)
        rnd = run.randint(min(lo_h, out_h), max(lo_h, out_h))
        scale = rnd / h
        out_w = w if self.resize_rate < 1 else int(w * self.resize_rate)
        rnd_w = max(1, min(out_w, round(w * scale)))
        z = F.interpolate(x, size=(rnd, rnd_w), mode="bilinear", align_corners=False)
        top = run.randint(0, out_h - rnd + 1)
        left = run.randint(0, out_w - rnd_w + 1)
        return F.pad(z, [left, out_w - rnd_w - left, top, out_h - rnd - top], value=0.0)


class SI(InputTransform):
    r"""Scale invariance: gradients averaged over copies ``x / 2**i``, ``i = 0..m-1``.

    Paper: Lin et al., "Nesterov Accelerated Gradient and Scale Invariance for Adversarial
    Attacks", ICLR 2020 (https://arxiv.org/abs/1908.06281). Default ``m = 5`` as in the paper.

    Args:
        m: Number of scale copies.

    Example:
        >>> from robust_ens.attacks import NIFGSM, SI
        >>> NIFGSM(eps=8/255, transforms=[SI(m=5)]).transforms
        (SI(m=5),)
    """

    def __init__(self, *, m: Count = 5) -> None:
        self.m = int(m)

    @property
    def copies(self) -> int:  # type: ignore[override]
        return self.m

    def apply(self, x: torch.Tensor, index: int, run: AttackRun) -> torch.Tensor:
        return x / (2**index)


def ti_kernel_size(size: int) -> int:
    """TI's kernel size for images of side ``size``: 7 at 32 px, 15 at 224 px, odd, linear between.

    The TI paper uses 15 at ImageNet size (299/224); CIFAR-size reports use 7. Between and beyond
    the size is interpolated linearly and rounded to the nearest odd number (at least 3, at most
    the largest odd number <= ``size``).
    """
    k = 7 + 8 * (size - 32) / 192
    odd = 2 * math.floor((k - 1) / 2 + 0.5) + 1
    largest = size if size % 2 else size - 1
    return int(max(3, min(odd, max(largest, 3))))


def gaussian_kernel(size: int, nsig: float = 3.0) -> torch.Tensor:
    """Normalized 2-D Gaussian ``[size, size]`` sampled on ``linspace(-nsig, nsig, size)``."""
    t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    k1 = torch.exp(-0.5 * t * t)
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum()


class TI(GradientTransform):
    r"""Translation invariance: the gradient is smoothed with a Gaussian kernel (per channel).

    Paper: Dong et al., "Evading Defenses to Transferable Adversarial Examples by
    Translation-Invariant Attacks", CVPR 2019 (https://arxiv.org/abs/1904.02884).

    Args:
        len_kernel: Kernel side; ``None`` (default) scales with the image: 7 at 32 px, 15 at
            224 px (see :func:`ti_kernel_size`). torchattacks fixes 15.
        nsig: The kernel spans ``[-nsig, nsig]`` standard deviations (default 3).

    Example:
        >>> from robust_ens.attacks import TI, ti_kernel_size
        >>> ti_kernel_size(32), ti_kernel_size(224)
        (7, 15)
    """

    def __init__(self, *, len_kernel: Count | None = None, nsig: Positive = 3.0) -> None:
        self.len_kernel = None if len_kernel is None else int(len_kernel)
        self.nsig = float(nsig)

    def apply(self, g: torch.Tensor, run: AttackRun) -> torch.Tensor:
        k = self.len_kernel or ti_kernel_size(min(g.shape[-2:]))
        c = g.shape[1]
        w = gaussian_kernel(k, self.nsig).to(device=g.device, dtype=g.dtype).expand(c, 1, k, k)
        pad = k // 2
        out = F.conv2d(g, w, padding=pad, groups=c)
        if k % 2 == 0:  # even kernels grow the map by one pixel; crop back
            out = out[..., : g.shape[-2], : g.shape[-1]]
        return out


_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.ELU)


def _residual_blocks(model: nn.Module) -> list[nn.Module]:
    """Modules that look like residual blocks: they own a ``shortcut`` or ``downsample`` attribute."""
    return [m for m in model.modules() if m is not model and (hasattr(m, "shortcut") or hasattr(m, "downsample"))]


class SGM(ModelHook):
    r"""Skip Gradient Method: less gradient through residual branches, more through skips.

    Paper: Wu et al., "Skip Connections Matter: On the Transferability of Adversarial Examples
    Generated with ResNets", ICLR 2020 (https://arxiv.org/abs/2002.05990). DVERGE's
    transfer protocol uses it with ``gamma = 0.2``.

    During the attack, backward hooks scale the gradient flowing back through every activation
    of a residual branch (all activations a block calls except the one after the addition) by
    ``gamma ** (1 / k)``, ``k`` being the number of such activations per block, so each residual
    branch is down-weighted by ``gamma`` overall (the authors take ``sqrt(gamma)`` on the two
    ReLUs of a bottleneck, ``gamma`` on the one of a basic block). Residual blocks are found as
    modules owning a ``shortcut`` or ``downsample`` attribute (robust-ens, torchvision and timm
    ResNets).

    Authors' code: csdongxian/skip-connections-matter, ``utils_sgm.py``
    ``register_hook_for_resnet`` (and ``attack_sgm.py``, whose README runs ``--gamma 0.2`` on
    ResNet/DenseNet-201 and 0.5 on ResNet-152; the argparse default is 0.5). Compared with it:

    * ``decay_first_block`` (default False, the authors' code): the authors hook every module
      named ``*relu*`` except those whose name contains ``0.relu``, so the first block of every
      stage (``layer1.0``, ``layer2.0``, ...; the blocks with the projection shortcut) keeps
      its full residual gradient. Here the first block of a stage is the one whose module name
      ends in ``.0``; ``decay_first_block=True`` decays every block (this package's behaviour
      before issue 15). The name pattern also skips blocks ``10``, ``20``, ... of a stage with
      more than ten blocks (ResNet-152's ``layer3``), an accident of the pattern not reproduced.
    * The authors also scale the ReLU after the addition (torchvision reuses one ReLU module in
      a block) and the stem ReLU by the same factor, and divide each block's gradient by its
      standard deviation over the whole batch to avoid overflow. All of these multiply the
      whole gradient by one positive number, which changes neither a sign step nor an
      L1-normalized momentum, so they are left out (and the result stays batch independent).
    * TransferAttack's ``SGM`` (``model_related/sgm.py``, legacy ``register_backward_hook``) has the
      same net effect: ``MIFGSM(eps=16/255, alpha=1.6/255, transforms=[SGM(gamma=0.2)])`` agrees with
      its fixture to rounding (tests/test_transferattack_agreement.py).

    Args:
        gamma: Residual-gradient decay in (0, 1] (default 0.2; 1 = no effect).
        decay_first_block: Also decay the first block of every stage (default False).

    Example:
        >>> from robust_ens.attacks import MIFGSM, SGM
        >>> MIFGSM(eps=8/255, transforms=[SGM(gamma=0.2)]).transforms
        (SGM(gamma=0.2, decay_first_block=False),)
    """

    def __init__(self, *, gamma: SGMGamma = 0.2, decay_first_block: bool = False) -> None:
        self.gamma = float(gamma)
        self.decay_first_block = bool(decay_first_block)

    def decayed_blocks(self, model: nn.Module) -> list[str]:
        """Names of the residual blocks of ``model`` whose branch gradient SGM decays."""
        names = {id(m): n for n, m in model.named_modules()}
        blocks = [names[id(b)] for b in _residual_blocks(model)]
        if self.decay_first_block:
            return blocks
        return [n for n in blocks if n.rsplit(".", 1)[-1] != "0"]

    def attach(self, model: nn.Module) -> list[Any]:
        all_blocks = _residual_blocks(model)
        keep = set(self.decayed_blocks(model))
        names = {id(m): n for n, m in model.named_modules()}
        blocks = [b for b in all_blocks if names[id(b)] in keep]
        if not all_blocks:
            warnings.warn(
                f"SGM found no residual blocks in {type(model).__name__}; it has no effect on this surrogate",
                stacklevel=4,
            )
            return []
        handles: list[Any] = []
        gamma = self.gamma
        for block in blocks:
            skip_mods = {id(m) for name in ("shortcut", "downsample") if isinstance(getattr(block, name, None), nn.Module)
                         for m in getattr(block, name).modules()}
            acts = [m for m in block.modules() if isinstance(m, _ACTIVATIONS) and id(m) not in skip_mods]
            if not acts:
                continue
            record: list[torch.Tensor] = []

            def pre(_m: nn.Module, _inp: Any, record: list[torch.Tensor] = record) -> None:
                record.clear()

            def on_act(_m: nn.Module, _inp: Any, out: Any, record: list[torch.Tensor] = record) -> None:
                if isinstance(out, torch.Tensor) and out.requires_grad:
                    record.append(out)

            def post(_m: nn.Module, _inp: Any, _out: Any, record: list[torch.Tensor] = record) -> None:
                branch = record[:-1]  # the last activation call follows the addition
                if branch:
                    factor = gamma ** (1.0 / len(branch))
                    for t in branch:
                        t.register_hook(lambda g, f=factor: g * f)
                record.clear()

            handles.append(block.register_forward_pre_hook(pre))
            handles.append(block.register_forward_hook(post))
            handles.extend(a.register_forward_hook(on_act) for a in acts)
        return handles


__all__ = ["DI", "SGM", "SI", "TI", "gaussian_kernel", "ti_kernel_size"]
