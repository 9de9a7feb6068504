"""The layers of a packed ensemble: shared weights with per-member rank-1 adapters (BatchEnsemble).

:func:`pack_network` turns a network into a packed one **in place**: every ``nn.Conv2d`` and
``nn.Linear`` keeps **one shared weight** ``W`` and gains per-member rank-1 adapters, so member
``k`` computes ``((x * r_k) W) * s_k + b_k``; every ``BatchNorm2d`` becomes per-member (its own
affine parameters and running statistics); optionally the classifier is a separate head per
member (``heads="separate"``). LayerNorm (ViTs) stays shared: it has no batch statistics.

The batch a packed layer sees holds one equal-sized block per active member (the input repeated
M times along the batch dimension); each layer scales its block with that member's adapters. The
ensemble built on these layers is :class:`~robust_ens.models.packed.PackedEnsemble`.

Initialization (``init=``):

* ``"random_signs"`` (default): every adapter ``r_k``, ``s_k`` has entries drawn from {-1, +1}
  with probability 1/2 -- the random-sign initialization of the BatchEnsemble reference code
  (edward2 / uncertainty-baselines ``RandomSign``). Members differ from the first step on.
* ``"tabm"``: TabM's choice (Gorishniy, Kotelnikov, Babenko, "TabM: Advancing Tabular Deep
  Learning with Parameter-Efficient Ensembling", 2024): only the input adapter ``r`` of the first
  layer gets random signs; all other adapters start at ones (ones-centred).
* ``"normal"``: adapters from N(1, 0.5), the other BatchEnsemble reference option (mean-one
  Gaussian; the uncertainty-baselines CIFAR scripts use std 0.5).
* ``"ones"``: every adapter is one, so every member equals the base network (tests).

Shared weights and biases start from the base architecture's own initialization (Kaiming for the
CIFAR ResNets, timm's for ViTs); per-member biases and BatchNorm parameters start as copies of
the base layer's, as in TabM.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens.errors import RobustEnsError

INITS = ("random_signs", "tabm", "normal", "ones")
HEADS = ("shared", "separate")
PackedInit = Literal["random_signs", "tabm", "normal", "ones"]

__all__ = [
    "HEADS",
    "INITS",
    "MemberLinear",
    "PackState",
    "PackedBatchNorm2d",
    "PackedConv2d",
    "PackedInit",
    "PackedLinear",
    "pack_network",
]


class PackState:
    """Which members the next forward pass runs (shared by every packed layer of one network).

    ``rows`` is a slice of member indices: all members (the batched forward) or ``k:k+1``. The
    batch a layer sees holds ``len(rows)`` equal-sized blocks, one per active member.
    """

    def __init__(self, n_members: int) -> None:
        self.n_members = n_members
        self.rows = slice(0, n_members)

    @property
    def active(self) -> int:
        return len(range(*self.rows.indices(self.n_members)))

    @contextlib.contextmanager
    def use(self, rows: slice) -> Iterator[None]:
        before = self.rows
        self.rows = rows
        try:
            yield
        finally:
            self.rows = before


def _split(x: torch.Tensor, m: int) -> torch.Tensor:
    """``[m * n, ...] -> [m, n, ...]`` (a view; any memory format)."""
    if x.shape[0] % m:
        raise RobustEnsError(
            f"a packed layer got a batch of {x.shape[0]}, not a multiple of the {m} active members; "
            "call the PackedEnsemble (or one of its members), not its inner network"
        )
    return x.unflatten(0, (m, x.shape[0] // m))


def _member_shape(v: torch.Tensor, ndim: int, channel_dim: int) -> torch.Tensor:
    """Adapter rows ``[m, C]`` shaped to broadcast against ``[m, n, ...]`` of ``ndim`` dims at ``channel_dim``."""
    shape = [v.shape[0]] + [1] * (ndim - 1)
    shape[channel_dim] = v.shape[1]
    return v.view(shape)


def _init_adapter(t: torch.Tensor, how: str, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        if how == "ones":
            t.fill_(1.0)
        elif how == "random_signs":
            signs = torch.randint(0, 2, t.shape, generator=generator).to(t.dtype) * 2 - 1
            t.copy_(signs)
        elif how == "normal":
            t.copy_(1.0 + 0.5 * torch.randn(t.shape, generator=generator, dtype=t.dtype))
        else:  # pragma: no cover - validated by pack_network
            raise RobustEnsError(f"unknown adapter init {how!r}")


class PackedConv2d(nn.Conv2d):
    """``nn.Conv2d`` with one shared kernel and per-member rank-1 adapters (BatchEnsemble).

    Member ``k``: ``conv(x * r_k, W) * s_k + b_k`` with ``r: [M, C_in]``, ``s: [M, C_out]`` and,
    when the base layer has a bias, ``bias: [M, C_out]``. It is an ``nn.Conv2d`` (shared ``weight``,
    same hyperparameters) so code that looks for convolutions still finds it.
    """

    def __init__(self, base: nn.Conv2d, state: PackState) -> None:
        if base.padding_mode != "zeros":
            raise RobustEnsError(f"packing supports zero-padded convolutions, got padding_mode={base.padding_mode!r}")
        super().__init__(
            base.in_channels, base.out_channels, base.kernel_size, stride=base.stride,  # type: ignore[arg-type]
            padding=base.padding, dilation=base.dilation, groups=base.groups, bias=False,  # type: ignore[arg-type]
            device=base.weight.device, dtype=base.weight.dtype,
        )
        m = state.n_members
        self._pack = state
        self.weight = nn.Parameter(base.weight.detach().clone())
        self.r = nn.Parameter(torch.ones(m, base.in_channels, device=base.weight.device, dtype=base.weight.dtype))
        self.s = nn.Parameter(torch.ones(m, base.out_channels, device=base.weight.device, dtype=base.weight.dtype))
        if base.bias is not None:
            self.bias = nn.Parameter(base.bias.detach().clone().unsqueeze(0).repeat(m, 1))

    def member_weight(self, k: int) -> torch.Tensor:
        """Member ``k``'s effective kernel ``W * (s_k r_k^T)`` (what a separate network would hold)."""
        cout, cin_g = self.weight.shape[:2]
        g = self.groups
        r = self.r[k].view(g, 1, cin_g).expand(g, cout // g, cin_g).reshape(cout, cin_g)
        return self.weight * (self.s[k].view(-1, 1) * r).view(cout, cin_g, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._pack.rows
        r, s = self.r[rows], self.s[rows]
        m = r.shape[0]
        if m == 1:  # one member: fold the adapters into the (small) kernel instead of the activations
            k = range(*rows.indices(self._pack.n_members))[0]
            return self._conv_forward(x, self.member_weight(k), self.bias[k] if self.bias is not None else None)
        xs = _split(x, m)
        x = (xs * _member_shape(r.to(x.dtype), xs.dim(), 2)).flatten(0, 1)
        out = _split(self._conv_forward(x, self.weight, None), m)
        s5 = _member_shape(s.to(out.dtype), out.dim(), 2)
        if self.bias is not None:
            out = torch.addcmul(_member_shape(self.bias[rows].to(out.dtype), out.dim(), 2), out, s5)
        else:
            out = out * s5
        return out.flatten(0, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", members={self._pack.n_members}"


class PackedLinear(nn.Linear):
    """``nn.Linear`` with one shared weight and per-member rank-1 adapters (BatchEnsemble).

    Member ``k``: ``((x * r_k) W^T) * s_k + b_k`` on the last dimension (tokens of a ViT keep
    their extra dimensions). ``r: [M, in]``, ``s: [M, out]``, ``bias: [M, out]`` when the base
    layer has a bias.
    """

    def __init__(self, base: nn.Linear, state: PackState) -> None:
        super().__init__(base.in_features, base.out_features, bias=False, device=base.weight.device,
                         dtype=base.weight.dtype)
        m = state.n_members
        self._pack = state
        self.weight = nn.Parameter(base.weight.detach().clone())
        self.r = nn.Parameter(torch.ones(m, base.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.s = nn.Parameter(torch.ones(m, base.out_features, device=base.weight.device, dtype=base.weight.dtype))
        if base.bias is not None:
            self.bias = nn.Parameter(base.bias.detach().clone().unsqueeze(0).repeat(m, 1))

    def member_weight(self, k: int) -> torch.Tensor:
        """Member ``k``'s effective weight ``W * (s_k r_k^T)``."""
        return self.weight * (self.s[k].view(-1, 1) * self.r[k].view(1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._pack.rows
        r, s = self.r[rows], self.s[rows]
        m = r.shape[0]
        if m == 1:
            k = range(*rows.indices(self._pack.n_members))[0]
            return F.linear(x, self.member_weight(k), self.bias[k] if self.bias is not None else None)
        xs = _split(x, m)
        x = (xs * _member_shape(r.to(x.dtype), xs.dim(), -1)).flatten(0, 1)
        out = _split(F.linear(x, self.weight), m)
        s5 = _member_shape(s.to(out.dtype), out.dim(), -1)
        if self.bias is not None:
            out = torch.addcmul(_member_shape(self.bias[rows].to(out.dtype), out.dim(), -1), out, s5)
        else:
            out = out * s5
        return out.flatten(0, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", members={self._pack.n_members}"


class MemberLinear(nn.Linear):
    """A separate linear head per member: ``weight: [M, out, in]``, ``bias: [M, out]`` (``heads="separate"``)."""

    def __init__(self, base: nn.Linear, state: PackState, generator: torch.Generator | None = None) -> None:
        super().__init__(base.in_features, base.out_features, bias=False, device=base.weight.device,
                         dtype=base.weight.dtype)
        m = state.n_members
        self._pack = state
        w = base.weight.detach().unsqueeze(0).repeat(m, 1, 1)
        # Member 0 keeps the base head; the others get fresh draws of the same scale.
        if m > 1 and not w.is_meta:
            std = float(base.weight.detach().std()) if base.weight.numel() > 1 else 1.0 / math.sqrt(base.in_features)
            w[1:] = torch.randn(w[1:].shape, generator=generator, dtype=w.dtype).to(w.device) * std
        self.weight = nn.Parameter(w)
        if base.bias is not None:
            self.bias = nn.Parameter(base.bias.detach().clone().unsqueeze(0).repeat(m, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._pack.rows
        w = self.weight[rows].to(x.dtype)
        if w.shape[0] == 1:
            return F.linear(x, w[0], self.bias[rows][0] if self.bias is not None else None)
        xs = _split(x, w.shape[0])  # [m, n, ..., in]
        out = torch.einsum("mn...i,moi->mn...o", xs, w)
        if self.bias is not None:
            out = out + _member_shape(self.bias[rows].to(out.dtype), out.dim(), -1)
        return out.flatten(0, 1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, members={self._pack.n_members}"


class PackedBatchNorm2d(nn.Module):
    """BatchNorm2d with per-member affine parameters and running statistics ``[M, C]``.

    In training mode each member normalizes its own block of the batch with that block's
    statistics and updates only its own running statistics (biased variance to normalize,
    unbiased for the running estimate, as ``nn.BatchNorm2d``).
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, base: nn.BatchNorm2d, state: PackState) -> None:
        super().__init__()
        if not base.track_running_stats or base.running_mean is None or base.running_var is None:
            raise RobustEnsError("packing needs BatchNorm2d layers that track running statistics")
        if base.momentum is None:
            raise RobustEnsError("packing supports BatchNorm2d with a momentum (not cumulative averaging)")
        m = state.n_members
        self._pack = state
        self.num_features = base.num_features
        self.eps = float(base.eps)
        self.momentum = float(base.momentum)
        dev = base.running_mean.device
        if base.affine:
            self.weight: nn.Parameter | None = nn.Parameter(base.weight.detach().clone().unsqueeze(0).repeat(m, 1))
            self.bias: nn.Parameter | None = nn.Parameter(base.bias.detach().clone().unsqueeze(0).repeat(m, 1))
        else:
            self.weight = self.bias = None
        self.register_buffer("running_mean", base.running_mean.detach().clone().unsqueeze(0).repeat(m, 1))
        self.register_buffer("running_var", base.running_var.detach().clone().unsqueeze(0).repeat(m, 1))
        assert base.num_batches_tracked is not None
        self.register_buffer("num_batches_tracked", base.num_batches_tracked.detach().clone().to(dev))

    def _one(self, x: torch.Tensor, k: int) -> torch.Tensor:
        # F.batch_norm updates the running statistics in place through the row views.
        return F.batch_norm(
            x, self.running_mean[k], self.running_var[k],
            self.weight[k] if self.weight is not None else None, self.bias[k] if self.bias is not None else None,
            self.training, self.momentum, self.eps,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._pack.rows
        ks = range(*rows.indices(self._pack.n_members))
        if self.training:
            self.num_batches_tracked.add_(1)
            if len(ks) == 1:
                return self._one(x, ks[0])
            xs = _split(x, len(ks))
            return torch.cat([self._one(xs[i], k) for i, k in enumerate(ks)])
        xs = _split(x, len(ks))  # eval: one fused multiply-add with every member's statistics
        scale = torch.rsqrt(self.running_var[rows] + self.eps)
        if self.weight is not None and self.bias is not None:
            scale = scale * self.weight[rows]
            shift = self.bias[rows] - self.running_mean[rows] * scale
        else:
            shift = -self.running_mean[rows] * scale
        out = torch.addcmul(_member_shape(shift.to(xs.dtype), xs.dim(), 2), xs, _member_shape(scale.to(xs.dtype), xs.dim(), 2))
        return out.flatten(0, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, members={self._pack.n_members}"


_UNSUPPORTED = (nn.BatchNorm1d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d)


def pack_network(
    net: nn.Module,
    n_members: int,
    *,
    init: PackedInit | str = "random_signs",
    heads: str = "shared",
    generator: torch.Generator | None = None,
) -> PackState:
    """Turn ``net`` into a packed network **in place**; return the state object its layers share.

    Every ``Conv2d`` -> :class:`PackedConv2d`, ``Linear`` -> :class:`PackedLinear` (the last one
    -> :class:`MemberLinear` with ``heads="separate"``), ``BatchNorm2d`` -> :class:`PackedBatchNorm2d`;
    module names do not change, so layer names (DVERGE's ``net.layer2.1.act2:in``) are those of
    the base architecture. Other layers must not mix examples of a batch (LayerNorm, pooling,
    attention and activations are fine); BatchNorm1d/3d and other convolution types are refused.

    Args:
        net: The base network (its weights become the shared weights).
        n_members: Number of members M (>= 1).
        init: Adapter initialization, one of :data:`INITS` (see the module docstring).
        heads: ``"shared"`` (a packed classifier, the default) or ``"separate"`` (one head per member).
        generator: Source of the random signs (default: the global torch RNG).
    """
    if isinstance(n_members, bool) or not isinstance(n_members, int) or n_members < 1:
        raise RobustEnsError(f"members must be an integer >= 1, got {n_members!r}")
    if init not in INITS:
        raise RobustEnsError(f"init must be one of {INITS}, got {init!r}")
    if heads not in HEADS:
        raise RobustEnsError(f"heads must be one of {HEADS}, got {heads!r}")
    state = PackState(n_members)
    linears = [n for n, mod in net.named_modules() if isinstance(mod, nn.Linear)]
    last_linear = linears[-1] if linears else None
    packed: list[nn.Module] = []

    def convert(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            full = f"{prefix}{name}"
            if isinstance(child, _UNSUPPORTED):
                raise RobustEnsError(
                    f"packing does not support {type(child).__name__} ({full}); supported: Conv2d, Linear, "
                    "BatchNorm2d and layers that treat every example separately"
                )
            new: nn.Module | None = None
            if isinstance(child, nn.Conv2d):
                new = PackedConv2d(child, state)
            elif isinstance(child, nn.Linear):
                new = MemberLinear(child, state, generator) if heads == "separate" and full == last_linear else PackedLinear(child, state)
            elif isinstance(child, nn.BatchNorm2d):
                new = PackedBatchNorm2d(child, state)
            if new is not None:
                setattr(parent, name, new)
                packed.append(new)
            else:
                convert(child, full + ".")

    convert(net, "")
    if not any(isinstance(p, PackedConv2d | PackedLinear | MemberLinear) for p in packed):
        raise RobustEnsError(f"{type(net).__name__} has no Conv2d or Linear layer to pack")
    first = True
    for mod in packed:
        if not isinstance(mod, PackedConv2d | PackedLinear):
            continue
        if init == "tabm":
            _init_adapter(mod.r, "random_signs" if first else "ones", generator)
            _init_adapter(mod.s, "ones", generator)
        else:
            _init_adapter(mod.r, init, generator)
            _init_adapter(mod.s, init, generator)
        first = False
    return state
