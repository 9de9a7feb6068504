"""The threat model's budget: eps parsing, norms, and the projection every attack's output gets.

:func:`enforce_budget` is what :meth:`robust_ens.attacks.base.Attack.__call__` applies to whatever
a subclass returns (foolbox's rule): the eps ball and the [0, 1] box hold in float64 arithmetic
after the cast back to ``x.dtype``. The small norm helpers here are shared by the attacks' steps.
"""

from __future__ import annotations

import torch

from robust_ens.errors import RobustEnsError

NORMS = ("Linf", "L2")
_TINY = 1e-12  # added to every normalization so a zero gradient never divides by zero


def parse_eps(value: str | float | int) -> float:
    """Parse an epsilon written as ``8/255``, ``0.03`` or a number.

    Raises:
        RobustEnsError: naming ``eps`` when the text is not a number or fraction.
    """
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise RobustEnsError(f"eps must be a number or a fraction like 8/255, got {value!r}") from None


def enforce_budget(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Return ``x_adv`` projected onto the eps ball around ``x`` and the [0, 1] box, in ``x.dtype``.

    The budget holds in exact (float64) arithmetic after the cast to ``x.dtype``: elements (Linf)
    that rounding pushes past ``eps`` move one ulp towards ``x`` at a time; examples (L2) are
    shrunk towards ``x`` until they fit (``x`` itself always fits). NaNs fall back to ``x``.
    """
    x = x.detach()
    xd = x.double()
    d = x_adv.detach().to(device=x.device, dtype=torch.float64) - xd
    d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    n = x.shape[0]
    shape = (-1, *([1] * (x.dim() - 1)))
    if norm == "Linf":
        d = d.clamp(-eps, eps)
    else:
        nrm = d.reshape(n, -1).norm(dim=1).clamp_min(1e-300)
        d = d * (eps / nrm).clamp(max=1.0).view(shape)
    target = (xd + d).clamp(0.0, 1.0)
    out = target.to(x.dtype)
    if norm == "Linf":
        for _ in range(16):
            bad = (out.double() - xd).abs() > eps
            if not bool(bad.any()):
                return out
            try:
                out = torch.where(bad, torch.nextafter(out, x), out)
            except (RuntimeError, NotImplementedError):  # no nextafter for this dtype/device
                out = torch.where(bad, ((out.double() + xd) / 2).to(x.dtype), out)
        return torch.where((out.double() - xd).abs() > eps, x, out)
    for p in (40, 30, 23, 20, 16, 12, 10, 8, 6, 4, 2, 1):
        bad = (out.double() - xd).reshape(n, -1).norm(dim=1) > eps
        if not bool(bad.any()):
            return out
        out = torch.where(bad.view(shape), (xd + (target - xd) * (1 - 2.0**-p)).to(x.dtype), out)
        target = torch.where(bad.view(shape), xd + (target - xd) * (1 - 2.0**-p), target)
    bad = (out.double() - xd).reshape(n, -1).norm(dim=1) > eps
    return torch.where(bad.view(shape), x, out)


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    return t.reshape(t.shape[0], -1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _l1_mean(t: torch.Tensor) -> torch.Tensor:
    """Per-example mean absolute value (MI-FGSM's normalization), shaped to broadcast."""
    return t.abs().reshape(t.shape[0], -1).mean(dim=1).view(-1, *([1] * (t.dim() - 1)))


__all__ = ["NORMS", "enforce_budget", "parse_eps"]
