"""Ghost networks: MI-FGSM on a ResNet whose skip connections are randomly eroded at every forward.

Paper: Li et al., "Learning Transferable Adversarial Examples via Ghost Networks", AAAI 2020
(https://arxiv.org/abs/1812.03413). Authors' code: LiYingwei/ghost-network (TensorFlow,
``nets/resnet_v2_*.py``: ``weight = tf.random_uniform((depth,), 1 - random_range, 1 + random_range)``,
``output = weight * shortcut + residual``; ``config.py``: I-FGSM, eps 8, step 1 (of 255), 10 steps).
TransferAttack ("TA"): ``model_related/ghost.py`` ``GhostNetwork_MIFGSM`` with
``ghost_networks/resnet.py`` (torchvision ResNets with ``out += identity * U(1 - r, 1 + r)``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import torch
from torch import nn

from robust_ens.overrides import Count, Decay, Range, Step

from .base import AttackRun, Part, register_attack
from .gradient import MIFGSM
from .transforms import _residual_blocks

GhostRange = Annotated[float, Range(0, 1, high_open=True, what="a skip-connection erosion range")]


class _ErodedSkip(nn.Module):
    """The skip branch of one residual block times a fresh per-channel U(1 - r, 1 + r) at every call."""

    def __init__(self, inner: nn.Module | None, random_range: float, generator: torch.Generator) -> None:
        super().__init__()
        self.inner = inner
        self.random_range = random_range
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.inner is None else self.inner(x)
        r = self.random_range
        u = torch.rand((1, identity.shape[1], 1, 1), generator=self.generator, device=identity.device,
                       dtype=identity.dtype)
        # (1 + r) - (1 - r) and + (1 - r) in this order: TA's ``uniform_random``, bit for bit
        return identity * (((1 + r) - (1 - r)) * u + (1 - r))


@contextlib.contextmanager
def ghost_skips(model: nn.Module, random_range: float, generator: torch.Generator) -> Iterator[int]:
    """Erode the skip connection of every residual block of ``model`` for the duration of the context.

    Residual blocks are modules owning a ``downsample`` (torchvision, timm) or ``shortcut``
    (robust-ens) attribute; that attribute is temporarily replaced by itself followed by the random
    per-channel scale (an absent ``downsample`` by the scale alone), so the block computes
    ``residual + u * skip`` before its own activation, with one ``u`` per block and forward, shared
    by the batch, drawn in forward order from ``generator``. Yields the number of blocks eroded.
    """
    swapped: list[tuple[nn.Module, str, Any]] = []
    try:
        for block in _residual_blocks(model):
            attr = "downsample" if hasattr(block, "downsample") else "shortcut"
            old = getattr(block, attr)
            if old is not None and not isinstance(old, nn.Module):
                continue
            setattr(block, attr, _ErodedSkip(old, random_range, generator))
            swapped.append((block, attr, old))
        yield len(swapped)
    finally:
        for block, attr, old in reversed(swapped):
            if attr in block._modules:
                del block._modules[attr]
            setattr(block, attr, old)


@register_attack("ghost", family="model")
class Ghost(MIFGSM):
    r"""Ghost networks: every iteration attacks a new "ghost" of the surrogate (longitudinal ensemble).

    Paper: Li et al., "Learning Transferable Adversarial Examples via Ghost Networks", AAAI 2020
    (https://arxiv.org/abs/1812.03413). Skip-connection erosion: at every forward, the skip branch of
    each residual block is multiplied by a random per-channel factor ``u ~ U(1 - r, 1 + r)``
    (shared by the batch, new for every block and forward), so each iteration differentiates a
    different ghost. The update is MI-FGSM (``decay=0`` gives the paper's I-FGSM). Works on any
    surrogate with residual blocks (a module owning ``downsample`` or ``shortcut``: torchvision,
    timm and robust-ens ResNets), including every member of an Ensemble; a surrogate without any
    is attacked unchanged, with a warning. Draws come from the call's generator.

    Defaults follow the authors' code (LiYingwei/ghost-network ``config.py`` and the ``optimal``
    ranges of ``nets/resnet_v2_*.py``): eps 8/255, step 1/255, 10 iterations, momentum 0 (I-FGSM;
    their README also runs MI-FGSM with momentum 1.0), ``random_range`` 0.22 (their value for
    ResNet-50; 0.16 for ResNet-101, 0.12 for ResNet-152).

    TransferAttack (``GhostNetwork_MIFGSM``) differs: eps 16/255, alpha 1.6/255, momentum 1.0 and
    r 0.16 (its ResNet-101 default; it accepts only resnet101/152), all reachable here as
    hyperparameters; the preset ``create_attack("ghost_ta")`` sets them. Its ghost scales the
    identity after ``downsample``, per channel, shared by the batch, drawn with ``torch.rand`` per
    block in forward order, exactly as here: on TA's own fixture (tests/fixtures/transferattack)
    the two agree to rounding (see tests/test_transferattack_agreement.py). Not implemented: the
    paper's dropout erosion for non-residual networks (TA declares ``ghost_keep_prob`` and never
    uses it); the authors' ResNet-v2 has no activation after the addition, torchvision's v1 has
    one, which is the architecture's, not the attack's.

    Distance measure: Linf (L2 accepted).

    Args:
        eps: Maximum perturbation (default 8/255).
        alpha: Step size (default 1/255).
        steps: Iterations (default 10).
        decay: Momentum (default 0.0: I-FGSM, the authors' default).
        random_range: Erosion range r in [0, 1) (default 0.22).
        random_start: Random start (default False).
        norm: ``"Linf"`` or ``"L2"``.
        transforms: Extra parts (DI, SI, TI, SGM).

    Example:
        >>> import torch
        >>> from robust_ens import models
        >>> from robust_ens.attacks import Ghost
        >>> m = models.create("resnet20", num_classes=10)
        >>> res = Ghost(steps=2)(m.eval(), torch.rand(2, 3, 32, 32), torch.tensor([1, 2]), seed=0)
        >>> res.x_adv.shape
        torch.Size([2, 3, 32, 32])
    """

    folds_batchnorm = False  # it rewires the residual blocks of the modules it is given

    random_range: float

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        alpha: Step = 1 / 255,
        steps: Count = 10,
        decay: Decay = 0.0,
        random_range: GhostRange = 0.22,
        random_start: bool = False,
        norm: str = "Linf",
        transforms: Sequence[Part] = (),
    ) -> None:
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=decay, random_start=random_start, norm=norm,
                         transforms=transforms, random_range=float(random_range))

    def direction(self, g: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return g if self.decay == 0 else super().direction(g, state)

    def perturb(self, run: AttackRun, x: torch.Tensor) -> torch.Tensor:
        with ghost_skips(run.surrogate, self.random_range, run.generator) as n_blocks:
            if n_blocks == 0:
                warnings.warn(f"Ghost found no residual blocks in {type(run.surrogate).__name__}; "
                              "it attacks the surrogate unchanged", stacklevel=4)
            return super().perturb(run, x)


@register_attack("ghost_ta", family="model")
def ghost_ta(
    *, eps: float = 16 / 255, alpha: Step = 1.6 / 255, steps: Count = 10, decay: Decay = 1.0,
    random_range: GhostRange = 0.16, random_start: bool = False, transforms: Sequence[Part] = (),
) -> Ghost:
    """Ghost with TransferAttack's ``GhostNetwork_MIFGSM`` defaults (eps 16/255, alpha 1.6/255, MI 1.0, r 0.16)."""
    return Ghost(eps=eps, alpha=alpha, steps=steps, decay=decay, random_range=random_range,
                 random_start=random_start, transforms=transforms)


__all__ = ["Ghost", "ghost_skips", "ghost_ta"]
