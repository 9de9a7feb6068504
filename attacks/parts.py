"""Attack parts: pieces that compose with any iterative attack (input transforms, gradient
transforms, model hooks), and their registry.

The concrete parts (DI, SI, TI, SGM, ...) live in :mod:`robust_ens.attacks.transforms`; every
subclass of :class:`Part` registers itself in :data:`PARTS` under its class name, so
:func:`create_part` rebuilds one from its :meth:`Part.config`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from robust_ens.canonical import to_jsonable
from robust_ens.errors import RobustEnsError
from robust_ens.overrides import check_call
from robust_ens.registry import Registry

from .run import AttackRun

PARTS: Registry[type[Part]] = Registry("attack part")


def format_hparam(v: Any) -> str:
    """Hyperparameter values for ``repr``: ``8/255`` rather than ``0.03137254901960784``."""
    if isinstance(v, float) and 0 < v < 1 and len(repr(v)) > 7:
        k = v * 255
        if abs(k - round(k, 1)) < 1e-9:
            return f"{round(k, 1):g}/255"
        return f"{v:.6g}"
    return repr(v)


class Part:
    """A composable piece of an attack (input transform, gradient transform or model hook).

    Parts hold hyperparameters only; ``repr`` shows them and :meth:`config` gives them as JSON.
    Every subclass is registered in :data:`PARTS` under its class name, so a config rebuilds it.
    """

    kind: ClassVar[str] = "part"

    def __new__(cls, *args: Any, **kwargs: Any) -> Part:
        check_call(cls, kwargs)  # the ranges a part declares in its __init__ signature (``m: Count``)
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        PARTS.add(cls.__name__, cls)

    def _params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def config(self) -> dict[str, Any]:
        """``{"part": class name, **hyperparameters}``; :func:`create_part` rebuilds an equal part."""
        return {"part": type(self).__name__, **to_jsonable(self._params(), type(self).__name__)}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={format_hparam(v)}" for k, v in self._params().items())
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._params() == other._params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(map(str, self._params().items())))))


class InputTransform(Part):
    """Transforms the attacked input before the forward pass; gradients average over its copies."""

    kind = "input"
    copies: int = 1

    def apply(self, x: torch.Tensor, index: int, run: AttackRun) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class GradientTransform(Part):
    """Transforms the input gradient before the update rule (e.g. TI's smoothing)."""

    kind = "gradient"

    def apply(self, g: torch.Tensor, run: AttackRun) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ModelHook(Part):
    """Changes how gradients flow through the surrogate during an attack (e.g. SGM)."""

    kind = "model"

    def attach(self, model: nn.Module) -> list[Any]:  # pragma: no cover
        """Install hooks on ``model``; return handles with ``.remove()``."""
        raise NotImplementedError


def create_part(config: dict[str, Any]) -> Part:
    """Rebuild a part from :meth:`Part.config` (``{"part": "DI", "resize_rate": 0.9}``).

    Raises:
        RobustEnsError: for a missing or unknown part name or a wrong hyperparameter.
    """
    if not isinstance(config, dict) or not isinstance(config.get("part"), str):
        raise RobustEnsError(f"an attack part config needs a 'part' name, got {config!r}")
    params = {k: v for k, v in config.items() if k != "part"}
    cls = PARTS.get(config["part"])
    try:
        return cls(**params)
    except TypeError as err:
        raise RobustEnsError(f"attack part {config['part']!r}: {err}") from None


__all__ = ["PARTS", "GradientTransform", "InputTransform", "ModelHook", "Part", "create_part", "format_hparam"]
