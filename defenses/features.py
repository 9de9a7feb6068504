"""Intermediate features by module name, through forward hooks (any architecture).

DVERGE distills features at "layer k" of a ResNet-20. The authors' code counts layers by hand
inside a custom ``get_features`` method (stem BN = 1, the two convolutions of each basic block =
2..19, the logits = 20) and takes every feature *before* its ReLU. Here a layer is a module name
from ``model.named_modules()``, read through a hook, so any architecture works:

* ``"net.layer2.1"`` - the output of that module (forward hook);
* ``"net.layer2.1.act2:in"`` - the *input* of that module (forward pre-hook). On an activation
  module this is the pre-activation feature, which is what the authors' ``before_relu=True`` reads.

:func:`feature_layers` proposes the default candidates: the input of every activation module
(pre-activation features) followed by the output of the last linear layer (the logits). For the
registered ``resnet20`` this gives exactly the authors' 20 layers, in the same order.

Capturing stops the forward pass at the hooked module (an internal exception), so features of an
early layer cost only the layers before it, as with the authors' hand-written ``get_features``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robust_ens.errors import RobustEnsError

INPUT_SUFFIX = ":in"

#: Module types whose input is a pre-activation feature.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish, nn.Mish, nn.PReLU, nn.SELU,
)


class _Captured(Exception):
    """Raised by a hook to stop the forward pass once the feature is captured."""


def _split(spec: str) -> tuple[str, bool]:
    if spec.endswith(INPUT_SUFFIX):
        return spec[: -len(INPUT_SUFFIX)], True
    return spec, False


def feature_layers(model: nn.Module) -> list[str]:
    """Default candidate layers of ``model`` for feature distillation, shallow to deep.

    Args:
        model: Any module (typically a :class:`~robust_ens.models.Normalized` wrapper).

    Returns:
        ``"<name>:in"`` for every activation module (its input is the pre-activation feature), in
        registration order, then the output of the last ``nn.Linear`` (the logits).

    Example:
        >>> from robust_ens import models
        >>> layers = feature_layers(models.create("resnet20"))
        >>> len(layers), layers[0], layers[-1]
        (20, 'net.act1:in', 'net.linear')
    """
    names = [f"{n}{INPUT_SUFFIX}" for n, m in model.named_modules() if n and isinstance(m, ACTIVATIONS)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        names.append(linears[-1])
    if not names:
        raise RobustEnsError(
            f"{type(model).__name__} has no activation or linear modules to distill features at; "
            "name layers explicitly (any name from model.named_modules())"
        )
    return names


def check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """Validate layer specs against ``model``; raise listing the candidates for unknown ones.

    Args:
        model: The model the layers must exist in.
        layers: Module names, each optionally suffixed with ``":in"``.

    Returns:
        The layers as a list.

    Raises:
        RobustEnsError: naming the unknown layer and listing the default candidates.
    """
    modules = dict(model.named_modules())
    out = []
    for spec in layers:
        name, _ = _split(str(spec))
        if not name or name not in modules:
            cands = feature_layers(model)
            raise RobustEnsError(
                f"layer {spec!r} does not exist in {type(model).__name__}. Candidates (pre-activation "
                f"features ':in' and the logits): {', '.join(cands)}; any name from model.named_modules() "
                "also works"
            )
        out.append(str(spec))
    return out


def get_features(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The feature of ``model`` at ``layer`` for input ``x`` (differentiable w.r.t. ``x``).

    The forward pass stops at the hooked module. If the module runs more than once in a forward
    pass (a shared activation), the first call is the one read.

    Args:
        model: The model.
        x: Its input.
        layer: A module name, optionally suffixed with ``":in"`` to read the module's input.

    Returns:
        The feature tensor (first positional input, or the output, of the named module).
    """
    name, want_input = _split(layer)
    modules = dict(model.named_modules())
    if name not in modules:
        check_layers(model, [layer])
    module = modules[name]
    box: list[torch.Tensor] = []

    if want_input:

        def pre_hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            box.append(args[0])
            raise _Captured

        handle = module.register_forward_pre_hook(pre_hook)
    else:

        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            box.append(out if isinstance(out, torch.Tensor) else out[0])
            raise _Captured

        handle = module.register_forward_hook(hook)
    try:
        out = model(x)
    except _Captured:
        return box[0]
    finally:
        handle.remove()
    # The hooked module was never called (e.g. a module outside the forward path).
    raise RobustEnsError(
        f"layer {layer!r} exists but is not used in {type(model).__name__}'s forward pass "
        f"(output shape {tuple(out.shape)}); pick one of {', '.join(feature_layers(model))}"
    )
