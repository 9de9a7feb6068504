"""Weather corruptions: snow, frost, fog, brightness, spatter.

Sources: Hendrycks & Dietterich 2019 (ImageNet-C / CIFAR-10-C scripts), imagecorruptions 1.1.2.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from robust_ens.corruptions import _ops
from robust_ens.corruptions._base import Ctx, register
from robust_ens.corruptions._rng import ExampleRNG

_HC = "Hendrycks & Dietterich 2019 (make_cifar_c.py / make_imagenet_c.py), imagecorruptions 1.1.2"


# --------------------------------------------------------------------------------------------- fog


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``n``."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _wrap_pad(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Periodic padding of the last two dims of ``[n, g, g]`` by ``before``/``after`` rows and columns."""
    return F.pad(t.unsqueeze(1), (before, after, before, after), mode="circular").squeeze(1)


def _interleave(c: torch.Tensor, top: torch.Tensor, left: torch.Tensor, dr: torch.Tensor) -> torch.Tensor:
    """The ``2g x 2g`` grid with ``c`` at even/even, ``top`` at even/odd, ``left`` at odd/even, ``dr`` at odd/odd."""
    n, g, k = c.shape
    return torch.stack((torch.stack((c, top), -1), torch.stack((left, dr), -1)), 2).view(n, 2 * g, 2 * k)


def plasma_fractal(ctx: Ctx, n: int, size: int, decay: float, dtype: torch.dtype, device: torch.device,
                   crop: tuple[int, int] | None = None) -> torch.Tensor:
    """Periodic diamond-square height maps ``[n, size, size]`` in [0, 1], one per example.

    The references' algorithm (mean of neighbours plus ``A * U(-A, A)``, ``A = 100`` divided by
    ``decay`` per level, wrap-around neighbours), batched over examples. Each level is built from
    four contiguous ``g x g`` arrays (corners, square centres, top and left edge midpoints) and
    interleaved into the next ``2g x 2g`` grid; the map is normalised by its *whole* range (as the
    references) but only the top-left ``crop`` (rows, columns) is assembled and returned.
    """
    levels = []
    step = size
    while step >= 2:
        levels.append(step)
        step //= 2
    counts = [(size // s) ** 2 for s in levels]
    total = 3 * sum(counts)
    u = ctx.rng.uniform("plasma", (total,), -1.0, 1.0, dtype=dtype)
    c = torch.zeros(n, 1, 1, dtype=dtype, device=device)  # the corner grid of the current level
    off = 0
    amp = 100.0
    ch, cw = crop if crop is not None else (size, size)
    if not levels:
        return torch.zeros(n, min(ch, size), min(cw, size), dtype=dtype, device=device)
    for li, (step, cnt) in enumerate(zip(levels, counts, strict=False)):
        g = size // step
        a2 = amp * amp

        def noise(k: int, off: int = off, cnt: int = cnt, g: int = g) -> torch.Tensor:
            return u[:, off + k * cnt : off + (k + 1) * cnt].view(n, g, g)

        cp = _wrap_pad(c, 0, 1)  # c[i + 1], c[j + 1]
        dr = cp[:, :-1, :-1] + cp[:, 1:, :-1]
        dr += cp[:, :-1, 1:]
        dr += cp[:, 1:, 1:]
        dr = dr.mul_(0.25).add_(noise(0), alpha=a2)
        dp = _wrap_pad(dr, 1, 0)  # dr[i - 1], dr[j - 1]
        top = (dr + dp[:, :-1, 1:]).add_(c).add_(cp[:, :-1, 1:]).mul_(0.25).add_(noise(1), alpha=a2)
        left = (dr + dp[:, 1:, :-1]).add_(c).add_(cp[:, 1:, :-1]).mul_(0.25).add_(noise(2), alpha=a2)
        off += 3 * cnt
        amp /= decay
        if li + 1 < len(levels):
            c = _interleave(c, top, left, dr)
            continue
        # last level: the range of the whole map, then only the crop is assembled
        lo = torch.stack([t.amin((1, 2)) for t in (c, top, left, dr)], 1).amin(1).view(n, 1, 1)
        hi = torch.stack([t.amax((1, 2)) for t in (c, top, left, dr)], 1).amax(1).view(n, 1, 1)
        hh, hw = -(-min(ch, size) // 2), -(-min(cw, size) // 2)
        m = _interleave(*(t[:, :hh, :hw].contiguous() for t in (c, top, left, dr)))[:, :ch, :cw]
        return (m - lo).div_((hi - lo).clamp_min(1e-12))
    raise AssertionError("unreachable")


@register("fog", family="weather", random=True, source=_HC,
          departures="Plasma map size: next power of two >= max(H, W) for every preset (32 for CIFAR, as the script).")
def fog(x: torch.Tensor, p: tuple[float, float], ctx: Ctx) -> torch.Tensor:
    """Add ``t`` times a plasma-fractal map (same for all channels), rescale by ``max/(max + t)``."""
    t, decay = float(p[0]), float(p[1])
    n, _, h, w = x.shape
    size = next_pow2(max(h, w, 3))
    fmap = plasma_fractal(ctx, n, size, decay, x.dtype, x.device, crop=(h, w))[:, None]
    mx = x.flatten(1).amax(1).view(-1, 1, 1, 1)
    return ((x + t * fmap) * (mx / (mx + t))).clamp_(0, 1)


# ------------------------------------------------------------------------------------------- frost

#: Appearance statistics of the five frost photographs the references pick from (frost1..5;
#: per-channel mean and standard deviation in [0, 1], native size W x H and mean absolute
#: horizontal gradient), measured once; the photographs themselves are not shipped.
FROST_STYLES = (
    ((0.305, 0.585, 0.650), (0.106, 0.065, 0.060), (900, 600), 0.029),
    ((0.787, 0.805, 0.841), (0.084, 0.087, 0.089), (560, 315), 0.031),
    ((0.787, 0.805, 0.841), (0.084, 0.087, 0.089), (560, 315), 0.031),
    ((0.540, 0.599, 0.648), (0.112, 0.112, 0.117), (527, 350), 0.052),
    ((0.441, 0.484, 0.528), (0.174, 0.170, 0.163), (660, 495), 0.068),
)
_OCTAVES = (64.0, 32.0, 16.0, 8.0, 4.0, 2.0)  # wavelengths in native texture pixels
_DECAY = 0.92  # amplitude ratio between octaves; matches the photographs' mean gradient within ~10%


@lru_cache(maxsize=64)
def _bicubic_matrix_cpu(n_in: int, n_out: int, keep: int) -> torch.Tensor:
    """``[keep, n_in]`` weights of ``F.interpolate(mode="bicubic", align_corners=True)`` from ``n_in``
    to ``n_out`` samples along one axis (first ``keep`` outputs), read off by interpolating unit
    vectors (the operation is separable and linear)."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)
    cols = F.interpolate(eye, size=(n_out, 1), mode="bicubic", align_corners=True)[:, 0, :keep, 0]
    return cols.t().contiguous()


def _bicubic_matrix(n_in: int, n_out: int, keep: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _bicubic_matrix_cpu(n_in, n_out, min(keep, n_out)).to(device, dtype)


def _frost_ridges(rng: ExampleRNG, n: int, h: int, w: int, scale: float, detail: torch.Tensor, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """Ridged multi-octave value noise ``[n, 1, h, w]`` at one texture scale (see frost_texture)."""
    sizes = []
    for lam in _OCTAVES:
        cell = max(lam * scale, 1.0)
        sizes.append((int(math.ceil(h / cell)) + 2, int(math.ceil(w / cell)) + 2))
    total = sum(a * b for a, b in sizes)
    u = rng.uniform("grid", (total,), dtype=dtype)
    acc = torch.zeros(n, 1, h, w, dtype=dtype, device=device)
    off = 0
    for k, (gh, gw) in enumerate(sizes):
        grid = u[:, off : off + gh * gw].view(n, 1, gh, gw)
        off += gh * gw
        cell = max(_OCTAVES[k] * scale, 1.0)
        oh, ow = int(round((gh - 1) * cell)), int(round((gw - 1) * cell))
        wy = _bicubic_matrix(gh, oh, h, dtype, device)
        wx = _bicubic_matrix(gw, ow, w, dtype, device)
        wxt = wx.t()
        # separable bicubic upsampling (F.interpolate's weights), cropped; one GEMM pair per example
        # so the BLAS kernel (and its rounding) does not depend on the batch size
        up = torch.stack([wy @ (g.clone() @ wxt) for g in grid[:, 0]]).unsqueeze(1)
        # thin bright crystal lines: ridge^4 with ridge = 1 - |2u - 1| = 2 min(u, 1 - u)
        ridge = torch.minimum(up, 1.0 - up)
        ridge = ridge.mul_(ridge)
        ridge = ridge.mul_(ridge)
        weight = 16.0 * _DECAY**k * (1.0 + (detail - 1.0) * k / len(_OCTAVES))
        acc.addcmul_(weight.view(-1, 1, 1, 1), ridge)
    return acc


def frost_texture(ctx: Ctx, n: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Procedural frost layers ``[n, 3, h, w]`` in [0, 1] (ridged multi-octave value noise).

    Each example picks one of five styles (uniformly, as the references pick one of five
    photographs) and gets a crystalline ridged-noise pattern whose per-channel mean and standard
    deviation match that photograph and whose detail (weight of fine octaves) follows its measured
    gradient. The pattern's pixel scale follows the preset's texture resizing: native texture
    pixels times 0.2 for ``cifar10c``; ``1.1 x max(1, H/Ht, W/Wt)`` for ``imagenetc``/``kittic``.
    """
    style_u = ctx.rng.uniform("style", ())
    style = (style_u * len(FROST_STYLES)).long().clamp_(max=len(FROST_STYLES) - 1)
    means = torch.tensor([s[0] for s in FROST_STYLES], dtype=dtype, device=device)[style]
    stds = torch.tensor([s[1] for s in FROST_STYLES], dtype=dtype, device=device)[style]
    detail = torch.tensor([s[3] for s in FROST_STYLES], dtype=dtype, device=device)[style] / 0.05
    if ctx.preset == "cifar10c":
        scales = torch.full((n,), 0.2, dtype=dtype)
    else:
        sc = [1.1 * max(1.0, h / s[2][1], w / s[2][0]) for s in FROST_STYLES]
        scales = torch.tensor(sc, dtype=dtype)[style.cpu()]
    acc = torch.empty(n, 1, h, w, dtype=dtype, device=device)
    for scale in sorted(set(scales.tolist())):  # examples of one texture scale share a grid geometry
        sel = (scales == scale).nonzero().squeeze(1)
        sub = ctx.rng.subset(sel)
        part = _frost_ridges(sub, len(sel), h, w, float(scale), detail.index_select(0, sel.to(device)), dtype, device)
        if len(sel) == n:
            acc = part
        else:
            acc.index_copy_(0, sel.to(device), part)
    # per-example reductions one example at a time: a batched reduction may sum in another order
    mean = torch.stack([a.mean() for a in acc]).view(n, 1, 1, 1)
    std = torch.stack([a.std() for a in acc]).view(n, 1, 1, 1).clamp_min(1e-6)
    # means + stds * (acc - mean) / std, per channel, as one fused multiply-add
    gain = stds.view(n, 3, 1, 1) / std
    return torch.addcmul(means.view(n, 3, 1, 1) - gain * mean, gain, acc).clamp_(0, 1)


@register("frost", family="weather", random=True, source=_HC,
          departures=(
              "Procedural frost layer instead of the five frost photographs (not redistributable "
              "here): ridged multi-octave value noise matched to each photograph's per-channel mean, "
              "standard deviation and detail level; see frost_texture."))
def frost(x: torch.Tensor, p: tuple[float, float], ctx: Ctx) -> torch.Tensor:
    """``clip(a x + b T)`` with ``T`` a frost layer."""
    a, b = float(p[0]), float(p[1])
    n, _, h, w = x.shape
    tex = frost_texture(ctx, n, h, w, x.dtype, x.device)
    return tex.mul_(b).add_(x, alpha=a).clamp_(0, 1)


# -------------------------------------------------------------------------------------------- snow


@register("snow", family="weather", random=True, source=_HC,
          departures=(
              "Snow streaks use the numpy motion-blur kernel for every preset (the CIFAR script used "
              "ImageMagick); cifar10c trims the zoomed layer centrally and truncates to 8 bits before "
              "the blur, imagenetc/kittic crop top-left after the blur and round, as the references."))
def snow(x: torch.Tensor, p: tuple[float, ...], ctx: Ctx) -> torch.Tensor:
    """Zoomed, thresholded, motion-blurred noise flakes added twice (and rotated), over a greyed image."""
    mu, sigma, zoom, thr, radius, msig, beta = p
    n, _, h, w = x.shape
    layer = ctx.rng.normal("layer", (1, h, w), mean=float(mu), std=float(sigma), dtype=x.dtype)
    cifar = ctx.preset == "cifar10c"
    layer = _ops.clipped_zoom(layer, float(zoom), "center" if cifar else "none")
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer).clamp_(0, 1)
    if cifar:
        layer = _ops.quantize_u8(layer)
    angle = ctx.rng.uniform("angle", (), -135.0, -45.0, dtype=torch.float64)
    layer = _ops.motion_blur(layer, int(radius), float(msig), angle)
    layer = torch.round(layer.clamp(0, 1) * 255.0) / 255.0
    layer = layer[:, :, :h, :w]
    base = beta * x + (1 - beta) * torch.maximum(x, _ops.gray(x) * 1.5 + 0.5)
    return (base + layer + layer.flip(2, 3)).clamp_(0, 1)


# ------------------------------------------------------------------------------------- brightness


@register("brightness", family="weather", random=False, source=_HC,
          departures="HSV V + c computed as a per-pixel rescale (identical to the HSV round trip).")
def brightness(x: torch.Tensor, c: float, ctx: Ctx) -> torch.Tensor:
    """In HSV, ``V <- clip(V + c)``; black pixels become grey level ``c``."""
    v = x.amax(1, keepdim=True)
    vn = (v + c).clamp(max=1.0)
    scale = vn / v.clamp_min(1e-12)
    return torch.where(v > 0, x * scale, vn.expand_as(x)).clamp_(0, 1)


# ----------------------------------------------------------------------------------------- spatter


def _box3(x: torch.Tensor) -> torch.Tensor:
    k = torch.full((3, 3), 1.0 / 9.0, dtype=x.dtype, device=x.device)
    return _ops.filter2d(x, k, "reflect101")


def _equalize_u8(v: torch.Tensor) -> torch.Tensor:
    """OpenCV ``equalizeHist`` per image on integer-valued ``[N, 1, H, W]`` (0..255)."""
    n = v.shape[0]
    idx = v.long().clamp(0, 255).view(n, -1)
    hist = torch.zeros(n, 256, dtype=torch.float64, device=v.device).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    total = float(idx.shape[1])
    first = (hist > 0).float().argmax(1, keepdim=True)
    h0 = hist.gather(1, first)
    cdf = hist.cumsum(1)
    lut = torch.round((cdf - h0) * 255.0 / (total - h0).clamp_min(1)).clamp_(0, 255)
    lut = torch.where(torch.arange(256, device=v.device)[None] < first, torch.zeros_like(lut), lut)
    lut = torch.where(h0 >= total, first.double().expand_as(lut), lut)
    return lut.gather(1, idx).view_as(v).to(v.dtype)


def _distance_to(edges: torch.Tensor, cap: float = 20.0) -> torch.Tensor:
    """Chamfer (3x3: 1, sqrt 2) distance to the nearest edge pixel, truncated at ``cap``."""
    d = torch.where(edges, torch.zeros_like(edges, dtype=torch.float32), torch.full_like(edges, cap, dtype=torch.float32))
    steps = [(dy, dx, math.hypot(dy, dx)) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    h, w = d.shape[-2:]
    for _ in range(int(cap) + 1):
        dp = _ops.pad(_ops.pad(d, 2, 1, 1, "edge"), 3, 1, 1, "edge")
        new = d
        for dy, dx, cost in steps:
            new = torch.minimum(new, dp[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] + cost)
        if torch.equal(new, d):
            break
        d = new
    return d.clamp_(max=cap)


@register("spatter", family="weather", random=True, source=_HC,
          departures=(
              "Water mode: Canny edges of the 8-bit liquid layer are approximated by the boundary of "
              "its non-zero support, and OpenCV's distance transform by a 3x3 chamfer distance; "
              "histogram equalisation, the emboss kernel and both box blurs follow OpenCV. Mud mode "
              "is exact."))
def spatter(x: torch.Tensor, p: tuple[float, ...], ctx: Ctx) -> torch.Tensor:
    """Water drops (mode 0) or mud (mode 1) from a blurred, thresholded noise layer."""
    mu, sigma, g, thr, k, mode = p
    n, _, h, w = x.shape
    liquid = ctx.rng.normal("layer", (1, h, w), mean=float(mu), std=float(sigma), dtype=x.dtype)
    liquid = _ops.gaussian_blur(liquid, float(g), "edge")
    liquid = torch.where(liquid < thr, torch.zeros_like(liquid), liquid)
    if int(mode) == 0:
        l8 = torch.floor((liquid * 255.0).clamp(0, 255))
        support = l8 > 0
        sp = _ops.pad(_ops.pad(support.float(), 2, 1, 1, "edge"), 3, 1, 1, "edge")
        nb_min = torch.minimum(torch.minimum(sp[:, :, :-2, 1:-1], sp[:, :, 2:, 1:-1]),
                               torch.minimum(sp[:, :, 1:-1, :-2], sp[:, :, 1:-1, 2:]))
        edges = support & (nb_min < 1)
        dist = _distance_to(edges)
        dist = torch.floor(_box3(dist))
        dist = _equalize_u8(dist)
        emb = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]], dtype=x.dtype, device=x.device)
        dist = torch.round(_ops.filter2d(dist, emb, "reflect101")).clamp_(0, 255)
        dist = torch.round(_box3(dist))
        m = l8 * dist
        m = m / m.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1) * float(k)
        color = torch.tensor([175.0, 238.0, 238.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255.0
        return (x + m * color).clamp_(0, 1)
    mask = (liquid > thr).to(x.dtype)
    m = _ops.gaussian_blur(mask, float(k), "edge")
    m = torch.where(m < 0.8, torch.zeros_like(m), m)
    color = torch.tensor([63.0, 42.0, 20.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255.0
    return (x * (1 - m) + m * color).clamp_(0, 1)
