"""Inference copies of a network with each BatchNorm folded into the convolution before it.

In eval mode a BatchNorm after a convolution is an affine map per channel, so it can be folded
into the convolution's weight and bias: ``W' = W * g / sqrt(v + e)``, ``b' = (b - m) * g / sqrt(v + e) + beta``.
The folded network computes the same function (to rounding) with one pass fewer per
convolution in the forward and in the backward. On a 2-core CPU the BatchNorm passes were about
16% of a bf16 PGD step on ResNet-20 (16-64 channels at 32 px, where every elementwise pass costs
almost as much memory traffic as the convolution's arithmetic), so attacks in bf16 use a folded
copy (:meth:`robust_ens.Ensemble.folded`). The fp32 reference precision never does, so the
committed numbers are untouched.

The pairs are found by :func:`torch.fx.experimental.optimization.fuse` (a conv whose output feeds
only a BatchNorm). A network fx cannot trace, one with no such pair, or one whose folded copy does
not compute the same logits on a probe batch is returned as ``None``: the caller keeps the
original.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Largest relative difference of the probe logits (fp32) a folded copy may show.
PROBE_TOLERANCE = 1e-4


def _count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer (nothing to fold otherwise)."""
    return _count_batchnorms(model) > 0


def fold_batchnorm(model: nn.Module, probe: torch.Tensor | None = None) -> nn.Module | None:
    """A frozen eval-mode copy of ``model`` with every conv -> BatchNorm pair folded, or ``None``.

    Args:
        model: A network (its own weights and mode are left as they are).
        probe: One small input batch; the folded copy must give the original's fp32 logits on it
            within :data:`PROBE_TOLERANCE` (relative). ``None`` skips the check.

    Returns:
        The folded copy (parameters with ``requires_grad=False``), or ``None`` when nothing was
        folded, fx could not trace ``model``, or the probe disagreed.
    """
    if not has_batchnorm(model):
        return None
    from torch.fx.experimental.optimization import fuse

    source = copy.deepcopy(model).eval()
    try:
        folded = fuse(source, inplace=True)  # source is already a copy
    except Exception as err:  # noqa: BLE001 - any tracing failure: keep the original network
        log.debug("BatchNorm folding skipped for %s: %s", type(model).__name__, err)
        return None
    if _count_batchnorms(folded) == _count_batchnorms(model):
        return None  # no conv -> BatchNorm pair matched
    folded.eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    if probe is not None and not _agrees(source, folded, probe):
        log.debug("BatchNorm folding skipped for %s: its probe logits differ", type(model).__name__)
        return None
    return folded


def _agrees(model: nn.Module, folded: nn.Module, probe: torch.Tensor) -> bool:
    with torch.no_grad():
        ref = model(probe).float()
        out = folded(probe).float()
    if ref.shape != out.shape or not bool(torch.isfinite(out).all()):
        return False
    scale = float(ref.abs().max()) or 1.0
    return float((ref - out).abs().max()) <= PROBE_TOLERANCE * scale


def weights_signature(modules: list[nn.Module]) -> tuple[tuple[int, int, str], ...]:
    """Identity, in-place version and device of every parameter and buffer: any training step, load
    or move changes it (so a cache keyed on it is never stale)."""
    sig: list[tuple[int, int, str]] = []
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            sig.append((id(t), t._version, str(t.device)))
    return tuple(sig)


__all__ = ["PROBE_TOLERANCE", "fold_batchnorm", "has_batchnorm", "weights_signature"]
