"""Noise corruptions: Gaussian, shot (Poisson), impulse (salt and pepper), speckle, ISO, dark.

All draws come from the per-example streams of :class:`robust_ens.corruptions._rng.ExampleRNG`;
distributions are those of the references, the random numbers themselves are not (numpy's global
stream cannot be reproduced batch-independently). Poisson counts for images on the uint8 grid come
from one inverse-CDF table lookup per element (:func:`robust_ens.corruptions._rng.poisson_from_uniform`:
the rate of a pixel is a function of its 8-bit level), which is exact and about 5x faster than
``torch.poisson``.
"""

from __future__ import annotations

import torch

from robust_ens.corruptions._base import Ctx, register
from robust_ens.corruptions._ops import quantize_u8
from robust_ens.corruptions._rng import uint8_levels

_HC = "Hendrycks & Dietterich 2019 (make_cifar_c.py / make_imagenet_c.py), imagecorruptions 1.1.2"
_RD = "RoboDepth (Kong et al. 2023) corruptions/utils.py"


@register("gaussian_noise", family="noise", random=True, source=_HC)
def gaussian_noise(x: torch.Tensor, c: float, ctx: Ctx) -> torch.Tensor:
    """``clip(x + N(0, c^2))`` per element."""
    return (x + ctx.rng.normal("noise", x.shape[1:], std=c, dtype=x.dtype)).clamp_(0, 1)


_POISSON = "Poisson counts by inverse-CDF table lookup on uint8-grid input (exact in distribution)."


@register("shot_noise", family="noise", random=True, source=_HC, departures=_POISSON)
def shot_noise(x: torch.Tensor, c: float, ctx: Ctx) -> torch.Tensor:
    """``clip(Poisson(x c) / c)`` per element."""
    return _poisson_scaled(x, float(c), "noise", ctx).div_(c).clamp_(0, 1)


def _poisson_scaled(x: torch.Tensor, c: float, stream: str, ctx: Ctx) -> torch.Tensor:
    """``Poisson(x c)``: a table lookup when ``x`` is on the uint8 grid, else ``torch.poisson``."""
    lev = uint8_levels(x)
    if lev is None:
        return ctx.rng.poisson(stream, x * c)
    rates = (torch.arange(256, dtype=torch.float32) / 255.0 * c).view(1, -1)
    return ctx.rng.poisson_levels(stream, lev, rates)


@register("impulse_noise", family="noise", random=True, source=_HC,
          departures="One uniform per element decides replace/salt/pepper (same distribution as skimage's two draws).")
def impulse_noise(x: torch.Tensor, c: float, ctx: Ctx) -> torch.Tensor:
    """Salt and pepper: each element independently becomes 0 (prob. c/2) or 1 (prob. c/2)."""
    u = ctx.rng.uniform("noise", x.shape[1:], dtype=x.dtype)
    out = torch.where(u < c / 2, torch.zeros_like(x), x)
    return torch.where((u >= c / 2) & (u < c), torch.ones_like(x), out)


@register("speckle_noise", family="noise", random=True, source=_HC)
def speckle_noise(x: torch.Tensor, c: float, ctx: Ctx) -> torch.Tensor:
    """``clip(x + x N(0, c^2))`` per element."""
    return (x + x * ctx.rng.normal("noise", x.shape[1:], std=c, dtype=x.dtype)).clamp_(0, 1)


@register("iso_noise", family="noise", random=True, source=_RD, departures=_POISSON)
def iso_noise(x: torch.Tensor, p: tuple[float, float], ctx: Ctx) -> torch.Tensor:
    """RoboDepth's ISO noise: ``clip(Poisson(25 x) / 25)`` then ``clip(+ N(0, s^2))``, colour noise."""
    count, sigma = p
    y = _poisson_scaled(x, float(count), "shot", ctx).div_(count).clamp_(0, 1)
    return (y + ctx.rng.normal("read", x.shape[1:], std=sigma, dtype=x.dtype)).clamp_(0, 1)


@register("dark", family="noise", random=True, source=_RD + " (low_light)", on_grid=True, departures=_POISSON)
def dark(x: torch.Tensor, p: tuple[float, float, float], ctx: Ctx) -> torch.Tensor:
    """RoboDepth's low light: gamma-2 darkening to peak ``c``, then photon (Poisson) and read noise."""
    c, photons, sigma = p
    flat = x.flatten(1)
    lo = flat.amin(1).view(-1, 1, 1, 1)
    hi = flat.amax(1).view(-1, 1, 1, 1)
    lev = uint8_levels(x)
    if lev is None:
        y = ((x - lo) / (hi - lo).clamp_min(1e-12)) ** 2 * c
        y = ctx.rng.poisson("shot", y * photons)
    else:  # the rate is a per-image function of the pixel's uint8 level: table-driven sampling
        levels = torch.arange(256, dtype=x.dtype, device=x.device).view(1, -1) / 255.0
        rates = ((levels - lo.view(-1, 1)) / (hi - lo).view(-1, 1).clamp_min(1e-12)).clamp_min(0) ** 2 * (c * photons)
        y = ctx.rng.poisson_levels("shot", lev, rates)
    y = y.div_(photons).clamp_(0, 1)
    y = (y + ctx.rng.normal("read", x.shape[1:], std=sigma, dtype=x.dtype)).clamp_(0, 1)
    return quantize_u8(y)
