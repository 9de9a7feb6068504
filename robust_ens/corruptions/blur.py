"""Blur corruptions: defocus, glass, motion, zoom and Gaussian blur.

Sources: Hendrycks & Dietterich 2019 (ImageNet-C / CIFAR-10-C scripts) and imagecorruptions 1.1.2.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from robust_ens.corruptions import _ops
from robust_ens.corruptions._base import Ctx, register

_HC = "Hendrycks & Dietterich 2019 (make_cifar_c.py / make_imagenet_c.py), imagecorruptions 1.1.2"


@lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The references' anti-aliased disk: a binary disk on -R..R (R = max(8, r)), normalised, then
    smoothed with OpenCV's Gaussian (3x3 for r <= 8, else 5x5, reflect-101 border)."""
    big = radius > 8
    half = int(radius) if big else 8
    t = np.arange(-half, half + 1)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    k = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    k /= k.sum()
    g = torch.tensor(_ops.cv2_gaussian_kernel1d(5 if big else 3, float(alias_blur)), dtype=torch.float64)
    kt = torch.from_numpy(k.astype(np.float64))[None, None]
    kt = _ops.conv1d(_ops.conv1d(kt, g, 2, "reflect101"), g, 3, "reflect101")
    return kt[0, 0].numpy().astype(np.float32)


@register("defocus_blur", family="blur", random=False, source=_HC,
          departures="Large kernels (> 11x11) are applied by FFT (exact up to float round-off).")
def defocus_blur(x: torch.Tensor, p: tuple[float, float], ctx: Ctx) -> torch.Tensor:
    """Correlate each channel with an anti-aliased disk (OpenCV ``filter2D``, reflect-101 border)."""
    k = torch.from_numpy(disk_kernel(float(p[0]), float(p[1])))
    return _ops.filter2d(x, k.to(x.device), "reflect101").clamp_(0, 1)


@register("gaussian_blur", family="blur", random=False, source=_HC)
def gaussian_blur(x: torch.Tensor, sigma: float, ctx: Ctx) -> torch.Tensor:
    """skimage ``gaussian(sigma, channel_axis=-1)``: separable, truncate 4, edge-replicate border."""
    return _ops.gaussian_blur(x, float(sigma), "edge").clamp_(0, 1)


def glass_shuffle(x: torch.Tensor, delta: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """One pass of the reference's sequential pixel copy, computed exactly in parallel.

    The reference visits rows ``H - delta .. delta + 1`` and, within a row, columns
    ``W - delta .. delta + 1`` (both descending); pixel ``p`` takes the *current* value of
    ``q = p + (dy, dx)``. ``q`` already holds a copied value exactly when it lies in the visited
    region and comes later in raster order than ``p`` (it was visited earlier); its value is then
    that of its own source, and so on. Following these links by pointer doubling (``log2`` of the
    longest chain gathers) gives every pixel the original value the sequential loop would copy.

    Args:
        x: ``[N, C, H, W]``.
        delta: Maximum displacement.
        dy, dx: int64 ``[N, H - 2 delta, W - 2 delta]`` offsets in ``[-delta, delta - 1]`` for the
            visited pixels (rows/columns ``delta + 1 .. H - delta``).
    """
    n, c, h, w = x.shape
    dev = x.device
    rows = torch.arange(delta + 1, h - delta + 1, device=dev)
    cols = torch.arange(delta + 1, w - delta + 1, device=dev)
    rows, cols = rows[: dy.shape[1]], cols[: dy.shape[2]]
    if rows.numel() == 0 or cols.numel() == 0:
        return x
    pr, pc = torch.meshgrid(rows, cols, indexing="ij")
    qr, qc = pr + dy, pc + dx
    q_flat = qr * w + qc
    in_region = (qr >= rows[0]) & (qr <= rows[-1]) & (qc >= cols[0]) & (qc <= cols[-1])
    # later in raster order = visited earlier (dy > 0, or same row and dx > 0)
    visited_before = in_region & ((dy > 0) | ((dy == 0) & (dx > 0)))
    hw = h * w
    base = (torch.arange(n, device=dev) * hw).view(n, 1, 1)
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    q_glob = q_flat + base
    # src[p]: the pixel whose *original* value p ends up with. Terminal pixels (source not yet
    # overwritten) read their source directly; a chain p -> q -> ... is followed while the next
    # pixel was visited earlier. Pointer doubling runs on the (shrinking) set of unresolved chains.
    src = torch.arange(n * hw, device=dev)
    src.view(n, h, w)[:, r0:r1, c0:c1] = q_glob
    link = torch.arange(n * hw, device=dev)  # next pixel along a chain (itself when terminal)
    lv = link.view(n, h, w)[:, r0:r1, c0:c1]
    lv.copy_(torch.where(visited_before, q_glob, lv))
    nonterm = torch.zeros(n * hw, dtype=torch.bool, device=dev)
    nonterm.view(n, h, w)[:, r0:r1, c0:c1] = visited_before
    active = nonterm.nonzero().squeeze(1)
    while active.numel():
        nxt = link.index_select(0, active)
        link.index_copy_(0, active, link.index_select(0, nxt))
        active = active[nonterm.index_select(0, link.index_select(0, active))]
    final = src.index_select(0, link).view(n, hw) - base.view(n, 1)  # chain end -> its source
    return x.flatten(2).gather(2, final.unsqueeze(1).expand(n, c, hw)).view(n, c, h, w)


@register("glass_blur", family="blur", random=True, source=_HC,
          departures=(
              "The sequential one-way pixel copy of the reference is reproduced exactly in "
              "distribution by resolving copy chains with pointer doubling (no approximation of the "
              "visiting order); only the random numbers differ (per-example streams)."))
def glass_blur(x: torch.Tensor, p: tuple[float, int, int], ctx: Ctx) -> torch.Tensor:
    """Blur, truncate to uint8, ``n`` passes of local pixel copies, blur again."""
    sigma, delta, iters = float(p[0]), int(p[1]), int(p[2])
    n, c, h, w = x.shape
    y = _ops.quantize_u8(_ops.gaussian_blur(x, sigma, "edge"))
    hr, wr = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    for it in range(iters):
        offs = ctx.rng.randint(f"shuffle{it}", (2, hr, wr), -delta, delta)
        y = glass_shuffle(y, delta, offs[:, 0], offs[:, 1])
    return _ops.gaussian_blur(y, sigma, "edge").clamp_(0, 1)


@register("motion_blur", family="blur", random=True, source=_HC,
          departures=(
              "imagecorruptions' numpy re-implementation of ImageMagick's MotionBlurImage (no "
              "ImageMagick, no 8-bit PNG round trip; cifar10c uses the same kernel)."))
def motion_blur(x: torch.Tensor, p: tuple[int, float], ctx: Ctx) -> torch.Tensor:
    """One-sided Gaussian line blur of ``2R + 1`` taps along an angle drawn from U(-45, 45) degrees."""
    angle = ctx.rng.uniform("angle", (), -45.0, 45.0, dtype=torch.float64)
    return _ops.motion_blur(x, int(p[0]), float(p[1]), angle).clamp_(0, 1)


@register("zoom_blur", family="blur", random=False, source=_HC,
          departures="Same crop-and-upsample; cifar10c trims centrally, imagenetc/kittic keep the top-left.")
def zoom_blur(x: torch.Tensor, zooms: tuple[float, ...], ctx: Ctx) -> torch.Tensor:
    """Mean of the image and its centre zooms by each factor (bilinear, corner-aligned)."""
    trim = "center" if ctx.preset == "cifar10c" else "topleft"
    out = x.clone()
    for z in zooms:
        out += _ops.clipped_zoom(x, float(z), trim)
    return out.div_(len(zooms) + 1).clamp_(0, 1)
