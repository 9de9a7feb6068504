"""Packed ensembles: M sub-models in one network with shared weights and rank-1 adapters.

``models.create("packed:resnet20", members=4)`` builds a BatchEnsemble (Wen, Tran, Ba,
"BatchEnsemble: an Alternative Approach to Efficient Ensemble and Lifelong Learning", ICLR 2020)
from any registered architecture (or ``packed:timm:<name>`` for a timm ViT): every ``nn.Conv2d``
and ``nn.Linear`` keeps **one shared weight** ``W`` and gains per-member rank-1 adapters, so
member ``k`` computes ``((x * r_k) W) * s_k + b_k``; every ``BatchNorm2d`` becomes per-member
(its own affine parameters and running statistics); optionally the classifier is a separate head
per member (``heads="separate"``). LayerNorm (ViTs) stays shared: it has no batch statistics.

All members run in **one batched forward pass**: the batch is repeated M times along the batch
dimension and each layer scales its slice of the batch with that member's adapters. The result is
an :class:`~robust_ens.Ensemble`: ``member_logits(x)`` is ``[M, N, K]``, ``members[k]`` is member
``k`` alone (a view that shares the weights; its forward runs only that member), so every attack
and defense works on it unchanged.

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
the base layer's, as in TabM. Everything -- shared weights and adapters -- is trained together by
the one training loop (TabM trains the adapters with the shared weights, same optimizer, same rate).

Example:
    >>> import torch
    >>> from robust_ens import models
    >>> ens = models.create("packed:small_cnn", members=3, in_chans=1, width=8).eval()
    >>> ens.member_logits(torch.rand(2, 1, 8, 8)).shape
    torch.Size([3, 2, 10])
    >>> ens.members[1](torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from robust_ens import precision as _precision
from robust_ens.ensemble import Combine, Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.models.wrapper import Normalized

PACKED_PREFIX = "packed:"
INITS = ("random_signs", "tabm", "normal", "ones")
HEADS = ("shared", "separate")
PackedInit = Literal["random_signs", "tabm", "normal", "ones"]

__all__ = [
    "HEADS",
    "INITS",
    "PACKED_PREFIX",
    "MemberLinear",
    "PackedBatchNorm2d",
    "PackedConv2d",
    "PackedEnsemble",
    "PackedLinear",
    "PackedMember",
    "pack_network",
    "packed_parameter_count",
]


class _PackState:
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

    def __init__(self, base: nn.Conv2d, state: _PackState) -> None:
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

    def __init__(self, base: nn.Linear, state: _PackState) -> None:
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

    def __init__(self, base: nn.Linear, state: _PackState, generator: torch.Generator | None = None) -> None:
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

    def __init__(self, base: nn.BatchNorm2d, state: _PackState) -> None:
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
) -> _PackState:
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
    state = _PackState(n_members)
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


def packed_parameter_count(model: nn.Module) -> dict[str, int]:
    """Parameters of a packed model: ``total``, ``shared`` (weights used by every member), ``per_member``."""
    total = sum(p.numel() for p in model.parameters())
    member_specific = 0
    for mod in model.modules():
        if isinstance(mod, PackedConv2d | PackedLinear):
            member_specific += mod.r.numel() + mod.s.numel() + (mod.bias.numel() if mod.bias is not None else 0)
        elif isinstance(mod, MemberLinear):
            member_specific += mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
        elif isinstance(mod, PackedBatchNorm2d) and mod.weight is not None and mod.bias is not None:
            member_specific += mod.weight.numel() + mod.bias.numel()
    n = max(1, len(model) if isinstance(model, Ensemble) else 1)
    return {"total": total, "shared": total - member_specific, "per_member": member_specific // n}


class PackedMember(nn.Module):
    """Member ``k`` of a :class:`PackedEnsemble`: a view whose forward runs only that member.

    It holds the ensemble as its only submodule, so ``parameters()``, ``to()``, ``train()`` and
    ``eval()`` act on the shared network (training one member's loss moves the shared weights, as
    it should). Layer names are ``packed.net.<layer>``.
    """

    def __init__(self, packed: PackedEnsemble, index: int) -> None:
        super().__init__()
        self.packed = packed
        self.index = index

    @property
    def num_classes(self) -> int | None:
        return self.packed.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed.forward_members(x, slice(self.index, self.index + 1))[0]

    def extra_repr(self) -> str:
        return f"index={self.index}, of={len(self.packed)}"


class PackedEnsemble(Ensemble, Normalized):
    """A packed ensemble: one network (one checkpoint, one :class:`Normalized` wrapper) and an
    :class:`~robust_ens.Ensemble` of its M sub-models.

    Build it with ``models.create("packed:<arch>", members=M, ...)``. ``member_logits(x)`` runs all
    members in one batched forward pass; ``member_forward(k, x)`` and ``members[k](x)`` run member
    ``k`` alone. ``save_checkpoint`` / ``load_checkpoint`` work on it as on any created model
    (``arch`` is ``"packed:<arch>"``, ``arch_kwargs`` holds ``members``, ``init`` and ``heads``).

    Args:
        net: The packed network (from :func:`pack_network`), taking normalized inputs.
        state: The state object returned by :func:`pack_network` for ``net``.
        mean: Normalization mean (inside the model, as for every created model).
        std: Normalization std.
        arch: Registry name (``"packed:resnet20"``).
        arch_kwargs: Keyword arguments that rebuild it through ``models.create``.
        num_classes: Number of classes.
        in_chans: Input channels.
        combine: As for :class:`~robust_ens.Ensemble`.
        precision: As for :class:`~robust_ens.Ensemble`.
        weights: Member weights, as for :class:`~robust_ens.Ensemble`.
        check_inputs: As for :class:`~robust_ens.Ensemble`.
    """

    def __init__(
        self,
        net: nn.Module,
        state: _PackState,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        arch: str = "packed:custom",
        arch_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        combine: Combine | str = "logits",
        precision: _precision.Precision | str = "auto",
        weights: Sequence[float] | None = None,
        check_inputs: bool = True,
    ) -> None:
        Normalized.__init__(self, net, mean, std, arch=arch, arch_kwargs=arch_kwargs, num_classes=num_classes,
                            in_chans=in_chans)
        self._pack = state
        self.batched = True  # member_logits: one pass over the repeated batch (False: member by member)
        # Members are views holding this module; keeping them out of the module tree avoids a
        # cycle and a state dict with the shared weights M + 1 times.
        self._init_ensemble([PackedMember(self, k) for k in range(state.n_members)], combine, precision,
                            weights=weights, compile=False, check_inputs=check_inputs, register=False)

    @property
    def n_members(self) -> int:
        return self._pack.n_members

    def forward_members(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Logits ``[m, N, K]`` of the members in ``rows`` (default all) in one pass, no precision policy.

        The batch is normalized once and repeated once per member along the batch dimension.
        """
        rows = slice(0, self.n_members) if rows is None else rows
        m = len(range(*rows.indices(self.n_members)))
        if m == 0:
            raise RobustEnsError(f"no member selected by {rows} in a packed ensemble of {self.n_members}")
        xn = (x - self.mean.to(dtype=x.dtype)) / self.std.to(dtype=x.dtype)
        n = xn.shape[0]
        if m > 1:
            fmt = torch.channels_last if xn.dim() == 4 and xn.is_contiguous(memory_format=torch.channels_last) \
                and not xn.is_contiguous() else torch.contiguous_format
            xn = xn.unsqueeze(0).expand(m, *xn.shape).reshape(m * n, *xn.shape[1:])
            if fmt is torch.channels_last:
                xn = xn.contiguous(memory_format=torch.channels_last)
        with self._pack.use(rows):
            out = self.net(xn)
        return out.unflatten(0, (m, n))

    # ---- Ensemble API
    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        bf16 = self.resolved_precision(x.device) == "bf16"
        if bf16:
            if self._layout_device != x.device:
                self.net.to(memory_format=torch.channels_last)
                self._layout_device = x.device
            x = x.contiguous(memory_format=torch.channels_last)
        return x, bf16

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every member ``[M, N, K]`` (float32), all members in one batched forward pass.

        With ``batched = False`` the members run one after the other with their adapters folded into
        the kernels (:meth:`member_logits_loop`; same result): on a CPU that is faster, see
        ``suites/speed/bench_packed.py``.
        """
        from robust_ens.ensemble import check_images

        if not self.batched:
            return self.member_logits_loop(x)
        if self.check_inputs:
            check_images(x)
        x, bf16 = self._prepare(x)
        return self._run(self.forward_members, x, bf16)  # type: ignore[arg-type]

    def member_logits_loop(self, x: torch.Tensor) -> torch.Tensor:
        """The same ``[M, N, K]`` as :meth:`member_logits`, one member after the other (for comparison)."""
        return torch.stack([self.member_forward(k, x) for k in range(self.n_members)])

    def parameter_count(self) -> dict[str, int]:
        """``total``, ``shared`` and ``per_member`` parameter counts."""
        return packed_parameter_count(self)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, n_members={len(self)}, combine={self.combine!r}, precision={self.precision!r}"


def build_packed(
    base_name: str,
    net: nn.Module,
    *,
    members: int,
    init: str,
    heads: str,
    seed: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    num_classes: int,
    in_chans: int,
    arch_kwargs: dict[str, Any],
) -> PackedEnsemble:
    """Pack ``net`` (built from ``base_name``) into a :class:`PackedEnsemble` (``models.create`` calls this)."""
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    state = pack_network(net, members, init=init, heads=heads, generator=gen)
    kw = {**arch_kwargs, "members": members, "init": init, "heads": heads}
    if seed is not None:
        kw["seed"] = seed
    return PackedEnsemble(net, state, mean, std, arch=PACKED_PREFIX + base_name, arch_kwargs=kw,
                          num_classes=num_classes, in_chans=in_chans)


PACKED_KWARGS = ("members", "init", "heads", "seed")


def _packed_factory(base: str) -> Any:
    def factory(num_classes: int = 10, in_chans: int = 3, members: int = 4, init: str = "random_signs",
                heads: str = "shared", seed: int | None = None, **kwargs: Any) -> nn.Module:
        from robust_ens.models.registry import MODELS

        net: nn.Module = MODELS.create(base, num_classes=num_classes, in_chans=in_chans, **kwargs)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        pack_network(net, members, init=init, heads=heads, generator=gen)
        return net

    factory.__name__ = f"packed_{base}"
    factory.__doc__ = f"The packed network of {base!r} (use models.create('packed:{base}', ...) for the ensemble)."
    return factory


def register_packed_variants() -> list[str]:
    """Register ``packed:<name>`` for every registered architecture that has none yet; return the new names.

    ``models.create("packed:<name>")`` works for any name (and ``timm:<name>``) without this; the
    registered entries make the packed variants listable (``list_models("packed:*")``) and let
    code that builds the bare network from the registry (checkpoint shape checks) find them.
    """
    from robust_ens.models import registry

    added = []
    for name in registry.MODELS.list(exclude=PACKED_PREFIX + "*"):
        packed_name = PACKED_PREFIX + name
        if packed_name in registry.MODELS:
            continue
        meta = dict(registry.MODELS.meta(name))
        safe = getattr(registry, "safe_arch_kwargs", None)
        if safe is not None:
            meta["safe_kwargs"] = tuple(sorted(set(safe(name)) | set(PACKED_KWARGS)))
        meta["packed"] = True
        registry.MODELS.add(packed_name, _packed_factory(name), **meta)
        added.append(packed_name)
    return added
