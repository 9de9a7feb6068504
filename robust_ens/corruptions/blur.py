"""Blur corruptions: defocus, glass, motion, zoom and Gaussian blur.

Sources: Hendrycks & Dietterich 2019 (ImageNet-C / CIFAR-10-C scripts) and imagecorruptions 1.1.2.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from robust_ens.corruptions import _compiled, _ops, _taps
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
    g = torch.tensor(_taps.cv2_gaussian_kernel1d(5 if big else 3, float(alias_blur)), dtype=torch.float64)
    kt = torch.from_numpy(k.astype(np.float64))[None, None]
    kt = _ops.conv1d(_ops.conv1d(kt, g, 2, "reflect101"), g, 3, "reflect101")
    return kt[0, 0].numpy().astype(np.float32)


@register("defocus_blur", family="blur", random=False, source=_HC,
          departures=("Radius 3..7: box sums over the disk's row runs plus the separable 3x3 alias blur; "
                      "other large kernels (> 7x7) by FFT; both exact up to float round-off."))
def defocus_blur(x: torch.Tensor, p: tuple[float, float], ctx: Ctx) -> torch.Tensor:
    """Correlate each channel with an anti-aliased disk (OpenCV ``filter2D``, reflect-101 border)."""
    radius, alias = float(p[0]), float(p[1])
    if 3 <= radius < 7:
        return _disk_runs(x, radius, alias).clamp_(0, 1)
    k = torch.from_numpy(disk_kernel(radius, alias))
    return _ops.filter2d(x, k.to(x.device), "reflect101").clamp_(0, 1)


def _disk_runs(x: torch.Tensor, radius: float, alias_blur: float) -> torch.Tensor:
    """:func:`disk_kernel` correlation for ``radius < 7`` as box sums over the disk's row runs.

    For ``radius < 7`` the blurred disk stays inside its 17x17 grid, so the reference kernel
    is exactly the normalised binary disk convolved with OpenCV's 3x3 Gaussian. Correlating the
    (reflect-101 padded) image with the disk is a sum over the disk's rows of horizontal box sums
    (grown two columns at a time), and the 3x3 Gaussian is separable: about ``4 R`` passes over the
    image instead of ``(2R + 3)^2`` taps or an FFT. Equal to the direct correlation up to float
    round-off (summation order).
    """
    n, c, h, w = x.shape
    big_r = int(math.floor(radius))
    pad = big_r + 1
    xp = _ops.pad(_ops.pad(x, 2, pad, pad, "reflect101"), 3, pad, pad, "reflect101")
    ow, oh = w + 2, h + 2  # disk output on the image plus a 1-pixel ring (for the 3x3 Gaussian)
    half = {dy: int(math.floor(math.sqrt(radius * radius - dy * dy) + 1e-9)) for dy in range(-big_r, big_r + 1)}
    count = float(sum(2 * v + 1 for v in half.values()))
    # horizontal box sums of every needed half-width, grown two columns at a time
    box = xp[..., big_r : big_r + ow].clone()
    boxes = {0: box.clone()} if 0 in half.values() else {}
    for hw in range(1, max(half.values()) + 1):
        box.add_(xp[..., big_r - hw : big_r - hw + ow]).add_(xp[..., big_r + hw : big_r + hw + ow])
        if hw in half.values():
            boxes[hw] = box if hw == max(half.values()) else box.clone()
    out = None
    for dy, hw in half.items():
        rows = boxes[hw].narrow(2, big_r + dy, oh)
        out = rows.clone() if out is None else out.add_(rows)
    assert out is not None
    out.mul_(1.0 / count)
    g = _taps.cv2_gaussian_kernel1d(3, alias_blur)
    out = out[:, :, 0:h, :] * g[0] + out[:, :, 1 : h + 1, :] * g[1] + out[:, :, 2 : h + 2, :] * g[2]
    return out[..., 0:w] * g[0] + out[..., 1 : w + 1] * g[1] + out[..., 2 : w + 2] * g[2]


@register("gaussian_blur", family="blur", random=False, source=_HC)
def gaussian_blur(x: torch.Tensor, sigma: float, ctx: Ctx) -> torch.Tensor:
    """skimage ``gaussian(sigma, channel_axis=-1)``: separable, truncate 4, edge-replicate border."""
    return _ops.gaussian_blur(x, float(sigma), "edge").clamp_(0, 1)


def glass_shuffle(x: torch.Tensor, delta: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """One pass of the reference's sequential pixel copy, computed exactly in parallel.

    Args:
        x: ``[N, C, H, W]``.
        delta: Maximum displacement.
        dy, dx: int64 ``[N, H - 2 delta, W - 2 delta]`` offsets in ``[-delta, delta - 1]`` for the
            visited pixels (rows/columns ``delta + 1 .. H - delta``).

    Returns:
        The image after the pass (see :func:`glass_source_map`).
    """
    n, c, h, w = x.shape
    src = glass_source_map(n, h, w, delta, dy, dx)
    return _gather_pixels(x, src)


def _gather_pixels(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``out[n, :, p] = x.flat_pixels[src[n, p]]`` with ``src`` global flat pixel indices ``[N * H * W]``."""
    n, c, h, w = x.shape
    planes = x.transpose(0, 1).reshape(c, n * h * w)
    return planes.index_select(1, src).view(c, n, h, w).transpose(0, 1).contiguous()


def glass_source_map(n: int, h: int, w: int, delta: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Where each pixel's value comes from after one pass of the reference's sequential copy.

    The reference visits rows ``H - delta .. delta + 1`` and, within a row, columns
    ``W - delta .. delta + 1`` (both descending); pixel ``p`` takes the *current* value of
    ``q = p + (dy, dx)``. ``q`` already holds a copied value exactly when it lies in the visited
    region and comes later in raster order than ``p`` (its flat offset ``dy W + dx`` is positive:
    it was visited earlier); its value is then that of its own source, and so on. Following these
    links by pointer doubling (``log2`` of the longest chain gathers, on the shrinking set of
    unresolved chains) gives every pixel the original pixel the sequential loop would copy.

    Returns:
        ``[N * H * W]`` global flat source index of every pixel (``n * H * W + r * W + c``), int32
        (int64 for batches of 2**31 pixels or more).
    """
    dev = dy.device
    hr, wr = dy.shape[1], dy.shape[2]
    itype = torch.int32 if n * h * w < 2**31 - 1 else torch.int64  # int32 arithmetic is ~2x faster
    src = torch.arange(n * h * w, device=dev, dtype=itype)
    if hr <= 0 or wr <= 0:
        return src
    dy, dx = dy.to(itype), dx.to(itype)
    off = dy * w + dx  # flat offset of the source pixel
    ri = torch.arange(hr, device=dev, dtype=itype).view(1, hr, 1)
    ci = torch.arange(wr, device=dev, dtype=itype).view(1, 1, wr)
    rr, cc = dy + ri, dx + ci
    later = (rr >= 0) & (rr < hr) & (cc >= 0) & (cc < wr) & (off > 0)  # source inside, visited before p
    region = src.view(n, h, w)[:, delta + 1 : delta + 1 + hr, delta + 1 : delta + 1 + wr]
    q = off.add_(region)  # global flat index of each visited pixel's source
    first = src.clone()
    first.view(n, h, w)[:, delta + 1 : delta + 1 + hr, delta + 1 : delta + 1 + wr] = q
    link = src.clone()  # next pixel along a chain (itself when terminal)
    link.view(n, h, w)[:, delta + 1 : delta + 1 + hr, delta + 1 : delta + 1 + wr] = torch.where(later, q, region)
    nonterm = torch.zeros(n * h * w, dtype=torch.bool, device=dev)  # pixels whose chain goes on
    nonterm.view(n, h, w)[:, delta + 1 : delta + 1 + hr, delta + 1 : delta + 1 + wr] = later
    active = nonterm.nonzero().squeeze(1).to(itype)
    while active.numel():
        nxt = link.index_select(0, link.index_select(0, active))
        link[active] = nxt
        active = active[nonterm.index_select(0, nxt)]
    return first.index_select(0, link)  # the chain's end reads its own (not yet overwritten) source


@register("glass_blur", family="blur", random=True, source=_HC,
          departures=(
              "The sequential one-way pixel copy of the reference is reproduced exactly in "
              "distribution by resolving copy chains with pointer doubling (no approximation of the "
              "visiting order); only the random numbers differ (per-example streams)."))
def glass_blur(x: torch.Tensor, p: tuple[float, int, int], ctx: Ctx) -> torch.Tensor:
    """Blur, truncate to uint8, ``n`` passes of local pixel copies, blur again.

    On the CPU (float32) with numba installed this runs the compiled kernel of
    :mod:`robust_ens.corruptions._compiled`, bit-identical to :func:`glass_blur_torch` (checked
    once per process); otherwise, and on CUDA, :func:`glass_blur_torch`.
    """
    if _compiled.usable(x):
        return _compiled.glass_blur_kernel(x, p, ctx)
    return glass_blur_torch(x, p, ctx)


def glass_blur_torch(x: torch.Tensor, p: tuple[float, int, int], ctx: Ctx) -> torch.Tensor:
    """:func:`glass_blur` in whole-tensor torch operations (any device, any float dtype)."""
    sigma, delta, iters = float(p[0]), int(p[1]), int(p[2])
    n, c, h, w = x.shape
    y = _ops.quantize_u8(_ops.gaussian_blur(x, sigma, "edge"))
    hr, wr = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    src: torch.Tensor | None = None
    for it in range(iters):  # compose the passes' source maps, gather the image once
        # one uniform per pixel for the (dy, dx) pair: (2 delta)^2 equally likely offsets
        # (floor(2 delta u) and the fraction of 2 delta u are independent, uniform)
        a = ctx.rng.uniform(f"shuffle{it}", (hr, wr)).mul_(2 * delta)
        ay = a.floor()
        dx = a.sub_(ay).mul_(2 * delta).floor_().clamp_(max=2 * delta - 1).to(torch.int32).sub_(delta)
        dy = ay.clamp_(max=2 * delta - 1).to(torch.int32).sub_(delta)
        step = glass_source_map(n, h, w, delta, dy, dx)
        src = step if src is None else src.index_select(0, step)
    if src is not None:
        y = _gather_pixels(y, src)
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
