"""The one forward-only evaluation of the project: ``predict`` (and ``correct``/``accuracy`` on it).

Every place that needs a model's predictions -- training's test accuracy, the transfer tables,
corruption accuracy, diversity metrics, the benchmark engine -- calls :func:`predict`, so eval
mode, batching, uint8 conversion and precision are handled once.

Example:
    >>> import torch
    >>> from robust_ens import models
    >>> from robust_ens.evaluation import predict, accuracy
    >>> m = models.create("small_cnn", in_chans=1)
    >>> x, y = torch.rand(10, 1, 8, 8), torch.zeros(10, dtype=torch.long)
    >>> predict(m, x, batch_size=4).shape
    torch.Size([10, 10])
    >>> 0.0 <= accuracy(m, x, y) <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from robust_ens import precision as _precision
from robust_ens.errors import RobustEnsError


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore each submodule's previous mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was in modes:
            m.training = was


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of the model's first parameter or buffer (``default`` for a parameterless model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device(default)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype inputs are cast to for ``model``: its first parameter's, if floating, else float32."""
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else torch.float32


def as_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float images unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def _autocast(precision: str | None, device: torch.device) -> AbstractContextManager[None]:
    """``predict``'s own autocast: none for ``None`` (the model's precision), else the named one."""
    return nullcontext() if precision is None else _precision.autocast(precision, device)


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int = 500,
    precision: str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Logits of ``model`` on ``x``, forward only, in batches.

    Args:
        model: Any module taking [0, 1] images (an :class:`~robust_ens.Ensemble` applies its own
            precision policy on top).
        x: Images ``[N, C, H, W]``: float in [0, 1] or uint8 (converted per batch, so a uint8
            dataset never exists in float all at once).
        batch_size: Examples per forward pass.
        precision: ``None`` (default): no autocast of its own, the model computes in the
            precision it was built with (fp32 for a plain module; an ``Ensemble``'s own
            ``precision``). ``"fp32"``, ``"bf16"`` or ``"auto"``: that autocast around the model.
        device: Where the model runs (default: the model's device).

    Returns:
        float32 logits ``[N, K]`` on ``x``'s device. The model's train/eval modes are restored.

    Raises:
        RobustEnsError: for a non-positive batch size or a model that does not return ``[n, K]``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RobustEnsError(f"batch_size must be a positive integer, got {batch_size!r}")
    dev = torch.device(device) if device is not None else model_device(model)
    dtype = model_dtype(model)
    outs: list[torch.Tensor] = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb = as_float_images(x[i : i + batch_size].to(dev)).to(dtype)
            with _autocast(precision, dev):
                out = model(xb)
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(xb):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise RobustEnsError(f"the model returned {shape} for a batch of {len(xb)}; a classifier returns [n, classes]")
            outs.append(out.float().to(x.device))
    if not outs:
        return torch.empty(0, 0, device=x.device)
    return torch.cat(outs)


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """Per-example correctness ``[N]`` (bool) of ``model``'s top-1 prediction; kwargs as :func:`predict`."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.bool, device=y.device)
    return predict(model, x, **kwargs).argmax(-1).to(y.device) == y  # type: ignore[arg-type]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: object) -> float:
    """Top-1 accuracy in [0, 1] (0 for an empty set); kwargs as :func:`predict`."""
    ok = correct(model, x, y, **kwargs)
    return float(ok.float().mean()) if len(ok) else 0.0
