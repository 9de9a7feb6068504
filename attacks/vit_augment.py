"""Model augmentation of timm vision transformers through hooks (ViT-EnsembleAttack's augmented copies).

Three augmentations, each applied through forward hooks on existing submodules; no timm code is
edited and no module's ``forward`` is replaced, so timm's fused attention path keeps running:

* **multi-head dropping** (rate ``p_h``): a forward pre-hook on the attention's output projection
  zeroes the slices of the concatenated head outputs that belong to dropped heads. Every head of
  every attention module is dropped independently with probability ``p_h`` (at least one head per
  module is kept); the mask is drawn once per augmented forward and shared by the batch, so one
  draw is one augmented *model*.
* **attention score scaling** (factor ``s``): the pre-softmax scores ``q k^T * scale`` become
  ``s q k^T * scale``. Scaling the queries by ``s`` is exactly that, and it works inside
  ``F.scaled_dot_product_attention`` (no need to materialize the scores): a forward hook scales
  the query tensor where it is produced (after ``q_norm`` in timm's ``Attention``, the ``q``
  projection of CaiT's class attention, the query third of Visformer's and Swin's ``qkv``).
  CaiT's talking-heads attention mixes heads before the softmax, so there the hook scales the
  output of ``proj_l`` (the actual pre-softmax scores). Swin: the relative-position bias and the
  shifted-window mask are added after the content scores and are *not* scaled (documented choice).
* **MLP feature mixing** (ratio ``lam``): a forward pre-hook on the MLP's second layer replaces
  the hidden features ``h`` (after ``fc1`` and the activation) of each example by
  ``(1 - lam) h + lam h[partner]``, the partner being another example of the batch (a random
  derangement per forward; a batch of one is left unmixed). By default the partner's features
  are detached so that each example's input gradient comes from its own loss (``mix_detach``).

Supported attention modules (timm 1.0): ``timm.layers.Attention`` (ViT, DeiT, PiT, and every
``VisionTransformer``), CaiT's ``ClassAttn`` and ``TalkingHeadAttn``, Visformer's ``Attention``
and Swin's ``WindowAttention``; MLPs: ``timm.layers.Mlp`` and Visformer's ``SpatialMlp``.

Example:
    >>> import torch
    >>> from robust_ens import models
    >>> from robust_ens.attacks.vit_augment import AugmentParams, augmented
    >>> m = models.create("timm:vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8,
    ...                   depth=2, embed_dim=64, num_heads=4).eval()
    >>> x = torch.rand(4, 3, 32, 32)
    >>> with augmented(m, AugmentParams(p_h=0.5, s=1.5, lam=0.3), torch.Generator().manual_seed(0)):
    ...     y_aug = m(x)
    >>> bool((y_aug - m(x)).abs().max() > 0)
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import torch
from torch import nn

from robust_ens.errors import RobustEnsError
from robust_ens.overrides import Range, check_fields

__all__ = [
    "AugmentParams",
    "AugmentSites",
    "ViTAugmenter",
    "augmented",
    "find_sites",
    "supported_attention_classes",
]


@dataclass(frozen=True)
class AugmentParams:
    """Strength of the three augmentations of one surrogate.

    Attributes:
        p_h: Probability of dropping each attention head, in [0, 1) (0: off).
        s: Attention score scaling factor, > 0 (1: off).
        lam: MLP feature mixing ratio, in [0, 1] (0: off).
    """

    p_h: Annotated[float, Range(0, 1, high_open=True, what="a head drop rate")] = 0.0
    s: Annotated[float, Range(0, None, low_open=True, what="an attention score scale")] = 1.0
    lam: Annotated[float, Range(0, 1, what="an MLP mixing ratio")] = 0.0

    def __post_init__(self) -> None:
        check_fields(self, "augmentation parameter")

    @property
    def off(self) -> bool:
        """Whether every augmentation is off (the model is unchanged)."""
        return self.p_h == 0.0 and self.s == 1.0 and self.lam == 0.0

    def as_dict(self) -> dict[str, float]:
        """Plain dict (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_any(cls, value: AugmentParams | dict[str, Any]) -> AugmentParams:
        """Build from an :class:`AugmentParams` or a dict with keys ``p_h``, ``s``, ``lam``.

        Raises:
            RobustEnsError: for unknown keys or invalid values.
        """
        if isinstance(value, AugmentParams):
            return value
        if not isinstance(value, dict):
            raise RobustEnsError(f"augmentation parameters must be a dict with p_h, s, lam; got {value!r}")
        unknown = sorted(set(value) - {"p_h", "s", "lam"})
        if unknown:
            raise RobustEnsError(f"unknown augmentation parameter(s) {', '.join(unknown)}; use p_h, s, lam")
        return cls(**value)


# --------------------------------------------------------------------------- where to hook


@dataclass
class _AttnSite:
    module: nn.Module
    num_heads: int
    proj: nn.Module  # output projection: its input holds the concatenated heads
    head_dim_axis: int  # -1: [..., H*hd] ; 1: [B, H*hd, h, w] (Visformer)
    query: nn.Module  # where the query (or the scores) is produced
    query_mode: str  # "all": scale the whole output; "third_last"/"third_channel": the first third


@dataclass
class AugmentSites:
    """The hookable parts of one model, found by :func:`find_sites`.

    Attributes:
        attention: One entry per supported attention module.
        mlp_hidden: Modules whose *input* is an MLP's hidden features (``fc2`` / ``conv3``).
        unsupported: Names of attention-like modules that are not supported (for messages).
    """

    attention: list[_AttnSite] = field(default_factory=list)
    mlp_hidden: list[nn.Module] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        """Whether the model has at least one supported attention module."""
        return bool(self.attention)


def supported_attention_classes() -> dict[str, type[nn.Module]]:
    """The timm attention classes the augmentations know, by a short name."""
    from timm.layers import Attention
    from timm.models.cait import ClassAttn, TalkingHeadAttn
    from timm.models.swin_transformer import WindowAttention
    from timm.models.visformer import Attention as VisformerAttention

    return {
        "timm.Attention": Attention,
        "cait.ClassAttn": ClassAttn,
        "cait.TalkingHeadAttn": TalkingHeadAttn,
        "visformer.Attention": VisformerAttention,
        "swin.WindowAttention": WindowAttention,
    }


def find_sites(model: nn.Module) -> AugmentSites:
    """Find the supported attention modules and MLP hidden layers of ``model`` (any wrapper around timm).

    Args:
        model: A model containing timm transformer blocks (e.g. a ``Normalized`` wrapper).

    Returns:
        The :class:`AugmentSites`; ``supported`` is False when no attention module is known.
    """
    from timm.layers import Attention, Mlp
    from timm.models.cait import ClassAttn, TalkingHeadAttn
    from timm.models.swin_transformer import WindowAttention
    from timm.models.visformer import Attention as VisformerAttention
    from timm.models.visformer import SpatialMlp

    sites = AugmentSites()
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            sites.attention.append(_AttnSite(m, int(m.num_heads), m.proj, -1, m.q_norm, "all"))
        elif isinstance(m, ClassAttn):
            sites.attention.append(_AttnSite(m, int(m.num_heads), m.proj, -1, m.q, "all"))
        elif isinstance(m, TalkingHeadAttn):
            sites.attention.append(_AttnSite(m, int(m.num_heads), m.proj, -1, m.proj_l, "all"))
        elif isinstance(m, VisformerAttention):
            sites.attention.append(_AttnSite(m, int(m.num_heads), m.proj, 1, m.qkv, "third_channel"))
        elif isinstance(m, WindowAttention):
            sites.attention.append(_AttnSite(m, int(m.num_heads), m.proj, -1, m.qkv, "third_last"))
        elif isinstance(m, Mlp):
            sites.mlp_hidden.append(m.fc2)
        elif isinstance(m, SpatialMlp):
            sites.mlp_hidden.append(m.conv3)
        elif "attn" in type(m).__name__.lower() or "attention" in type(m).__name__.lower():
            sites.unsupported.append(f"{name} ({type(m).__name__})")
    return sites


# --------------------------------------------------------------------------- the hooks


def _draw_uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=gdev).to(device)


def _derangement(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A random permutation without fixed points (``n >= 2``): a random cycle through all indices."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(n, generator=generator, device=gdev).to(device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


class ViTAugmenter:
    """Augmentation hooks on one model, active only inside :meth:`active`.

    The hooks are installed by :meth:`attach` and removed by :meth:`remove`; outside
    :meth:`active` they pass values through unchanged. Randomness (head masks, mixing partners)
    is drawn from ``generator`` at every augmented forward, in call order, so the same seed
    gives the same augmented models.

    Args:
        model: The model to augment (must contain a supported attention module).
        generator: Where randomness comes from (``None``: torch's global generator).
        mix_detach: Detach the partner's features in MLP mixing (default True).
        head_rescale: Rescale the kept heads by ``H / kept`` (dropout-style; default False).

    Raises:
        RobustEnsError: when ``model`` has no supported attention module.
    """

    def __init__(
        self,
        model: nn.Module,
        generator: torch.Generator | None = None,
        *,
        mix_detach: bool = True,
        head_rescale: bool = False,
    ) -> None:
        self.sites = find_sites(model)
        if not self.sites.supported:
            extra = f" (found unsupported: {', '.join(self.sites.unsupported[:3])})" if self.sites.unsupported else ""
            names = ", ".join(supported_attention_classes())
            raise RobustEnsError(
                f"{type(model).__name__} has no attention module that ViT augmentation supports{extra}; "
                f"supported timm classes: {names}. Pass params=None for this member to use it un-augmented."
            )
        self.generator = generator
        self.mix_detach = bool(mix_detach)
        self.head_rescale = bool(head_rescale)
        self._params: AugmentParams | None = None
        self._handles: list[Any] = []

    # ---- lifecycle
    def attach(self) -> ViTAugmenter:
        """Install the hooks (idempotent)."""
        if self._handles:
            return self
        for site in self.sites.attention:
            self._handles.append(site.proj.register_forward_pre_hook(self._head_hook(site)))
            self._handles.append(site.query.register_forward_hook(self._scale_hook(site)))
        for mod in self.sites.mlp_hidden:
            self._handles.append(mod.register_forward_pre_hook(self._mix_hook))
        return self

    def remove(self) -> None:
        """Remove every hook this augmenter installed."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._params = None

    @contextlib.contextmanager
    def active(self, params: AugmentParams) -> Iterator[None]:
        """Forwards inside this block run the augmented model (fresh randomness per forward)."""
        prev = self._params
        self._params = params
        try:
            yield
        finally:
            self._params = prev

    # ---- hooks
    def _head_hook(self, site: _AttnSite) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> Any:
            p = self._params
            if p is None or p.p_h == 0.0:
                return None
            t = args[0]
            h = site.num_heads
            keep = _draw_uniform(h, self.generator, t.device) >= p.p_h
            if not bool(keep.any()):
                gdev = self.generator.device if self.generator is not None else torch.device("cpu")
                j = int(torch.randint(0, h, (1,), generator=self.generator, device=gdev).item())
                keep[j] = True
            mask = keep.to(t.dtype)
            if self.head_rescale:
                mask = mask * (h / keep.sum().to(t.dtype))
            if site.head_dim_axis == -1:
                c = t.shape[-1]
                out = (t.reshape(*t.shape[:-1], h, c // h) * mask.view(h, 1)).reshape(t.shape)
            else:
                b, c = t.shape[0], t.shape[1]
                out = (t.reshape(b, h, c // h, *t.shape[2:]) * mask.view(1, h, *([1] * (t.dim() - 1)))).reshape(t.shape)
            return (out, *args[1:])

        return hook

    def _scale_hook(self, site: _AttnSite) -> Any:
        def hook(_m: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
            p = self._params
            if p is None or p.s == 1.0 or not isinstance(out, torch.Tensor):
                return None
            if site.query_mode == "all":
                return out * p.s
            dim = -1 if site.query_mode == "third_last" else 1
            n = out.shape[dim] // 3
            q, rest = out.split([n, out.shape[dim] - n], dim=dim)
            return torch.cat([q * p.s, rest], dim=dim)

        return hook

    def _mix_hook(self, _m: nn.Module, args: tuple[Any, ...]) -> Any:
        p = self._params
        if p is None or p.lam == 0.0:
            return None
        h = args[0]
        b = h.shape[0]
        if b < 2:
            return None
        other = h[_derangement(b, self.generator, h.device)]
        if self.mix_detach:
            other = other.detach()
        return ((1.0 - p.lam) * h + p.lam * other, *args[1:])


@contextlib.contextmanager
def augmented(
    model: nn.Module,
    params: AugmentParams | dict[str, Any],
    generator: torch.Generator | None = None,
    *,
    mix_detach: bool = True,
    head_rescale: bool = False,
) -> Iterator[ViTAugmenter]:
    """Run ``model`` augmented inside the block; every hook is removed on exit.

    Each forward inside the block draws fresh randomness (a new augmented model).

    Raises:
        RobustEnsError: when ``model`` has no supported attention module.
    """
    aug = ViTAugmenter(model, generator, mix_detach=mix_detach, head_rescale=head_rescale).attach()
    try:
        with aug.active(AugmentParams.from_any(params)):
            yield aug
    finally:
        aug.remove()
