"""Packed ensembles: M sub-models in one network with shared weights and rank-1 adapters.

``models.create("packed:resnet20", members=4)`` builds a BatchEnsemble (Wen, Tran, Ba,
"BatchEnsemble: an Alternative Approach to Efficient Ensemble and Lifelong Learning", ICLR 2020)
from any registered architecture (or ``packed:timm:<name>`` for a timm ViT). The layers and their
initializations (``init=``: ``"random_signs"``, ``"tabm"``, ``"normal"``, ``"ones"``) live in
:mod:`robust_ens.models.packed_layers`; this module holds the ensemble built on them and installs
the ``packed:`` prefix into the model registry when imported.

All members run in **one batched forward pass**: the batch is repeated M times along the batch
dimension and each layer scales its slice of the batch with that member's adapters. The result is
an :class:`~robust_ens.Ensemble`: ``member_logits(x)`` is ``[M, N, K]``, ``members[k]`` is member
``k`` alone (a view that shares the weights; its forward runs only that member), so every attack
and defense works on it unchanged. Everything -- shared weights and adapters -- is trained together
by the one training loop (TabM trains the adapters with the shared weights, same optimizer, same rate).

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

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robust_ens import precision as _precision
from robust_ens.ensemble import Combine, Ensemble, check_images
from robust_ens.errors import RobustEnsError
from robust_ens.models.packed_layers import (
    HEADS,
    INITS,
    MemberLinear,
    PackedBatchNorm2d,
    PackedConv2d,
    PackedInit,
    PackedLinear,
    PackState,
    pack_network,
)
from robust_ens.models.registry import MODELS, PACKED_PREFIX, create, register_prefix, safe_arch_kwargs
from robust_ens.models.wrapper import Normalized

__all__ = [
    "HEADS",
    "INITS",
    "PACKED_PREFIX",
    "MemberLinear",
    "PackState",
    "PackedBatchNorm2d",
    "PackedConv2d",
    "PackedEnsemble",
    "PackedInit",
    "PackedLinear",
    "PackedMember",
    "build_packed",
    "pack_network",
    "packed_parameter_count",
    "register_packed_variants",
]


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
        state: PackState,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        arch: str = "packed:custom",
        arch_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        combine: Combine | str = "logits",
        precision: _precision.Precision | str | None = None,
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


def _create_packed(
    base: str,
    *,
    num_classes: int,
    in_chans: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    pretrained: bool,
    members: int = 4,
    init: str = "random_signs",
    heads: str = "shared",
    seed: int | None = None,
    **kwargs: Any,
) -> PackedEnsemble:
    """``packed:<base>``: build ``<base>`` (registry or timm name) and pack it into M members.

    Returns a :class:`PackedEnsemble` (an ``Ensemble`` and a ``Normalized`` model at once), so
    checkpoints round-trip through ``save``/``load_checkpoint``. ``seed`` fixes the adapters'
    random signs (default: the global torch RNG, like every other initialization).
    ``models.create("packed:<base>", ...)`` calls this (installed by :func:`register_prefix` below).
    """
    if base.startswith(PACKED_PREFIX) or not base:
        raise RobustEnsError(f"packed:<name> needs one architecture name after the prefix, got {PACKED_PREFIX + base!r}")
    inner = create(base, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
    arch_kwargs = {k: v for k, v in kwargs.items() if k != "weights_file"}
    return build_packed(base, inner.net, members=members, init=init, heads=heads, seed=seed, mean=mean, std=std,
                        num_classes=num_classes, in_chans=in_chans, arch_kwargs=arch_kwargs)


register_prefix(PACKED_PREFIX, _create_packed)


PACKED_KWARGS = ("members", "init", "heads", "seed")  # = registry.PACKED_SAFE_KWARGS


def _packed_factory(base: str) -> Any:
    def factory(num_classes: int = 10, in_chans: int = 3, members: int = 4, init: str = "random_signs",
                heads: str = "shared", seed: int | None = None, **kwargs: Any) -> nn.Module:
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
    added = []
    for name in MODELS.list(exclude=PACKED_PREFIX + "*"):
        packed_name = PACKED_PREFIX + name
        if packed_name in MODELS:
            continue
        meta = dict(MODELS.meta(name))
        meta["safe_kwargs"] = tuple(sorted(set(safe_arch_kwargs(name)) | set(PACKED_KWARGS)))
        meta["packed"] = True
        MODELS.add(packed_name, _packed_factory(name), **meta)
        added.append(packed_name)
    return added
