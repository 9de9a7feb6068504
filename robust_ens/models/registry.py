"""Model registry: ``register_model``, ``create``, ``list_models`` (timm-style).

The bottom of :mod:`robust_ens.models`: it imports only the wrapper and the weight-file reader.
Architectures register into it (:mod:`~robust_ens.models.architectures`), prefixed families
install their builder (:mod:`~robust_ens.models.packed` for ``packed:<name>``, see
:func:`register_prefix`), and :mod:`~robust_ens.models.checkpoint` builds on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from robust_ens.errors import RobustEnsError
from robust_ens.models.weights_io import load_tensors, state_mismatch
from robust_ens.models.wrapper import Normalized
from robust_ens.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

TIMM_PREFIX = "timm:"
TORCHVISION_PREFIX = "torchvision:"
# torchvision builders' options a checkpoint record may pass (shape options, no weights).
TORCHVISION_SAFE_KWARGS = frozenset({"dropout", "aux_logits", "transform_input", "width_mult"})

# Keyword arguments a checkpoint record may pass to a timm architecture: shape and regularization
# options only (the shapes are then checked against the weights file before anything is
# allocated). Anything that fetches or reads weights (pretrained, pretrained_cfg(_overlay),
# checkpoint_path, cache_dir, weights_file, ...) or builds arbitrary layers is refused by name.
TIMM_SAFE_KWARGS = frozenset({
    "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
    "drop_rate", "drop_path_rate", "proj_drop_rate", "attn_drop_rate",
    "global_pool", "class_token", "reg_tokens", "no_embed_class", "qkv_bias", "init_values",
})
_RESERVED = ("num_classes", "in_chans")
# What ``packed:<arch>`` adds to its architecture's options (see ``robust_ens.models.packed``).
PACKED_SAFE_KWARGS = frozenset({"members", "init", "heads", "seed"})
PACKED_PREFIX = "packed:"

# Builders of prefixed architecture families that wrap another architecture (``packed:<base>``),
# installed by the module that defines the family (see :func:`register_prefix`).
_PREFIX_BUILDERS: dict[str, Callable[..., Normalized]] = {}


def register_prefix(prefix: str, builder: Callable[..., Normalized]) -> None:
    """Install the builder ``create`` calls for ``<prefix><base>`` names.

    ``create("packed:resnet20", **kw)`` calls ``builder("resnet20", num_classes=..., in_chans=...,
    mean=..., std=..., pretrained=..., **kw)``. :mod:`robust_ens.models.packed` installs
    ``packed:`` when it is imported (``import robust_ens.models`` does).

    Raises:
        RobustEnsError: when another builder already holds ``prefix``.
    """
    held = _PREFIX_BUILDERS.get(prefix)
    if held is not None and held is not builder:
        raise RobustEnsError(f"architecture prefix {prefix!r} already has a builder ({held.__qualname__})")
    _PREFIX_BUILDERS[prefix] = builder


def register_model(name: str | None = None, **meta: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory ``f(num_classes=..., in_chans=..., **kw) -> nn.Module``.

    Example:
        >>> from torch import nn
        >>> from robust_ens.models import register_model, create
        >>> @register_model("tiny_linear_doc")
        ... def tiny_linear_doc(num_classes=10, in_chans=1):
        ...     return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
        >>> create("tiny_linear_doc", num_classes=3, in_chans=1).num_classes
        3
    """
    return MODELS.register(name, **meta)


def list_models(pattern: str | Sequence[str] = "*", exclude: str | Sequence[str] = ()) -> list[str]:
    """Registered architecture names matching ``pattern`` (fnmatch), e.g. ``list_models("resnet*")``.

    ``timm:<name>`` architectures are not listed; any timm model name works through ``create``.
    Neither are ``packed:<name>`` ones: any listed name (or ``timm:<name>``) packs into a packed
    ensemble (``create("packed:resnet20", members=4)``, see :mod:`robust_ens.models.packed`).
    """
    return MODELS.list(pattern, exclude)


def safe_arch_kwargs(name: str) -> frozenset[str]:
    """Keyword arguments architecture ``name`` declares as safe to take from a checkpoint record.

    A registered factory declares its named parameters (except ``num_classes``/``in_chans``; a
    ``**kwargs`` catch-all declares nothing, and ``register_model(..., safe_kwargs=(...))``
    replaces the inferred set); ``timm:<name>`` takes :data:`TIMM_SAFE_KWARGS`.

    Raises:
        RobustEnsError: unknown architecture (listing the registered ones).
    """
    import inspect

    if name.startswith(TIMM_PREFIX):
        return TIMM_SAFE_KWARGS
    if name.startswith(TORCHVISION_PREFIX):
        return TORCHVISION_SAFE_KWARGS
    if name.startswith(PACKED_PREFIX) and len(name) > len(PACKED_PREFIX):
        return PACKED_SAFE_KWARGS | safe_arch_kwargs(name[len(PACKED_PREFIX):])
    if name not in MODELS:
        raise RobustEnsError(
            f"unknown architecture {name!r}; known: {', '.join(MODELS.list())} or timm:<name>"
        )
    declared = MODELS.meta(name).get("safe_kwargs")
    if declared is not None:
        return frozenset(declared)
    try:
        params = inspect.signature(MODELS.get(name)).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return frozenset()
    return frozenset(
        p.name for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _RESERVED
    )


def _takes_any_kwargs(name: str) -> bool:
    """True for a factory with a ``**kwargs`` catch-all and no declared ``safe_kwargs``."""
    import inspect

    if name not in MODELS or MODELS.meta(name).get("safe_kwargs") is not None:
        return False
    try:
        params = inspect.signature(MODELS.get(name)).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover
        return True
    return any(p.kind == p.VAR_KEYWORD for p in params)


def check_arch(name: str) -> None:
    """Refuse an unknown architecture: a registered name, or ``timm:<a timm model name>``.

    Raises:
        RobustEnsError: naming the known architectures (or close timm names).
    """
    if name.startswith(PACKED_PREFIX):
        check_arch(name[len(PACKED_PREFIX):])
        return
    if name.startswith(TIMM_PREFIX):
        import timm

        bare = name[len(TIMM_PREFIX):]
        if bare.split(".")[0] not in timm.list_models():
            close = timm.list_models(f"*{bare.split('.')[0]}*")[:5]
            raise RobustEnsError(f"timm has no model {bare!r}; close names: {close or 'none'}")
        return
    if name.startswith(TORCHVISION_PREFIX):
        from robust_ens.models.pretrained import torchvision_weights

        torchvision_weights(name)
        return
    MODELS.get(name)


def _kwarg_types(name: str) -> dict[str, Any]:
    import inspect
    import typing

    if name not in MODELS:
        return {}
    factory = MODELS.get(name)
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # pragma: no cover - unresolvable annotations: no type check
        return {}
    params = inspect.signature(factory).parameters
    return {k: v for k, v in hints.items() if k in params}


def check_arch_kwargs(name: str, kwargs: Mapping[str, Any], *, where: str = "architecture option") -> None:
    """Refuse, by name, keyword arguments that architecture ``name`` does not declare safe.

    Args:
        name: Architecture (registry name or ``timm:<name>``).
        kwargs: The keyword arguments to check.
        where: How the message names them (``"--arch-param"``, ``"arch_kwargs in the record"``).

    Raises:
        RobustEnsError: one line naming the refused keys and the accepted ones.
    """
    from robust_ens.overrides import check_type

    allowed = safe_arch_kwargs(name)
    bad = sorted(k for k in kwargs if k not in allowed)
    if bad:
        raise RobustEnsError(
            f"{where} {', '.join(map(repr, bad))} not accepted by architecture {name!r}; it takes: "
            f"{', '.join(sorted(allowed)) or '(no options)'}"
        )
    types_ = _kwarg_types(name)
    for k, v in kwargs.items():
        if k in types_:
            check_type(v, types_[k], f"{where} {k!r} of {name!r}")


def _create_timm(name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a dependency
        raise RobustEnsError("timm models need the 'timm' package: pip install timm") from err
    if name.split(".")[0] not in timm.list_models():  # "arch" or "arch.tag"
        close = timm.list_models(f"*{name.split('.')[0]}*")[:5]
        raise RobustEnsError(f"timm has no model {name!r}; close names: {close or 'none'}")
    weights = kwargs.pop("weights_file", None)
    if pretrained and weights is None:  # the local cache, or a download only when ROBUST_ENS_ONLINE=1
        from robust_ens.models.pretrained import create_timm_pretrained

        return create_timm_pretrained(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    try:
        net = timm.create_model(name, pretrained=pretrained and weights is None, num_classes=num_classes,
                                in_chans=in_chans, **kwargs)
    except TypeError as err:
        raise RobustEnsError(f"timm model {name!r} does not take these options {sorted(kwargs)}: {err}") from err
    if weights is not None:
        _load_local_weights(net, weights)
    return net


def _create_torchvision(name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``torchvision:<arch>[.<WEIGHTS>]``: torchvision's builder, its weights from the local cache when pretrained."""
    from robust_ens.models.pretrained import create_torchvision_pretrained, torchvision_weights

    if in_chans != 3:
        raise RobustEnsError(f"torchvision model {name!r} takes 3 input channels, not in_chans={in_chans}")
    weights = kwargs.pop("weights_file", None)
    if pretrained and weights is None:
        return create_torchvision_pretrained(name, num_classes=num_classes, **kwargs)[0]
    import torchvision.models as tvm

    torchvision_weights(name)  # a known architecture (and weights name)
    try:
        net = tvm.get_model(name.split(".")[0], weights=None, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise RobustEnsError(f"torchvision model {name!r} does not take these options {sorted(kwargs)}: {err}") from err
    if weights is not None:
        _load_local_weights(net, weights)
    return net


def _pretrained_normalization(name: str, net: nn.Module) -> tuple[Sequence[float], Sequence[float]]:
    """The mean and std a pretrained network was trained with (timm's pretrained_cfg; torchvision: ImageNet's)."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    if name.startswith(TIMM_PREFIX) and cfg.get("mean") and cfg.get("std"):
        return tuple(cfg["mean"]), tuple(cfg["std"])
    from robust_ens.models.pretrained import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD


def _load_local_weights(net: nn.Module, path: Any) -> None:
    """Load timm weights a user has on disk (safetensors, or a weights-only .pth/.pt/.bin).

    A classifier whose shape differs from the checkpoint's (e.g. ImageNet weights for a
    10-class head) is left at its fresh initialization, with a warning; any other missing or
    unexpected key is an error.
    """
    import warnings
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise RobustEnsError(f"weights_file {file} does not exist")
    state = load_tensors(file)
    own = net.state_dict()
    head = getattr(net, "pretrained_cfg", {}).get("classifier") or "head"
    heads = [head] if isinstance(head, str) else list(head)
    dropped = [k for k, v in state.items()
               if k in own and own[k].shape != v.shape and any(k.startswith(h) for h in heads)]
    for k in dropped:
        del state[k]
    why = state_mismatch({k: tuple(v.shape) for k, v in own.items() if k not in dropped},
                         {k: tuple(v.shape) for k, v in state.items()})
    if why:
        raise RobustEnsError(
            f"weights in {file} do not fit this timm model: {why}; "
            "check the model name and its kwargs (img_size, patch_size, ...)"
        )
    net.load_state_dict(state, strict=False)
    if dropped:
        warnings.warn(f"{file}: classifier {dropped} has another shape (num_classes); it keeps its fresh init",
                      stacklevel=3)


def create(
    name: str,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> Normalized:
    """Build a registered architecture (or ``"timm:<name>"``) wrapped to take [0, 1] images.

    Args:
        name: A name from :func:`list_models`, ``"timm:<timm name>[.<tag>]"`` or
            ``"torchvision:<arch>[.<WEIGHTS>]"``.
        num_classes: Number of classes.
        in_chans: Input channels.
        mean: Per-channel normalization mean applied inside the model (default: none; with
            ``pretrained=True``, the one the weights were trained with).
        std: Per-channel normalization std (default: none; pretrained: as ``mean``).
        pretrained: For ``timm:`` and ``torchvision:`` models only: load the tag's pretrained
            weights from the local cache (:mod:`robust_ens.models.pretrained`; downloaded only
            when ``ROBUST_ENS_ONLINE=1``, else a missing file is a one-line error naming the
            command that fetches it). Never implied.
        **kwargs: Architecture keyword arguments (e.g. ``img_size=32, patch_size=4`` for timm ViTs).

    Returns:
        A :class:`Normalized` module with ``arch``, ``arch_kwargs`` and ``num_classes`` recorded.

    Example:
        >>> import torch
        >>> from robust_ens import models
        >>> m = models.create("resnet20", num_classes=10)
        >>> m(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise RobustEnsError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise RobustEnsError(f"in_chans must be a positive integer, got {in_chans!r}")
    for prefix, builder in _PREFIX_BUILDERS.items():
        if name.startswith(prefix):
            return builder(name[len(prefix) :], num_classes=num_classes, in_chans=in_chans, mean=mean, std=std,
                           pretrained=pretrained, **kwargs)
    if name.startswith(PACKED_PREFIX):  # pragma: no cover - robust_ens.models imports packed
        raise RobustEnsError(f"{name!r}: packed models need robust_ens.models.packed (import robust_ens.models)")
    if name.startswith(TIMM_PREFIX):
        net = _create_timm(name[len(TIMM_PREFIX) :], num_classes, in_chans, pretrained, **kwargs)
    elif name.startswith(TORCHVISION_PREFIX):
        net = _create_torchvision(name[len(TORCHVISION_PREFIX) :], num_classes, in_chans, pretrained, **kwargs)
    else:
        if pretrained:
            raise RobustEnsError(
                f"{name!r} has no downloadable weights; load a checkpoint with models.load(path or 'zoo:NAME')"
            )
        if kwargs and not _takes_any_kwargs(name):
            check_arch_kwargs(name, kwargs)
        net = MODELS.create(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    # A local weights file is a one-time initialization, not part of the architecture.
    arch_kwargs = {k: v for k, v in kwargs.items() if k != "weights_file"}
    if pretrained and mean is None and std is None:
        mean, std = _pretrained_normalization(name, net)
    return Normalized(
        net, mean, std, arch=name, arch_kwargs=arch_kwargs, num_classes=num_classes, in_chans=in_chans
    )
