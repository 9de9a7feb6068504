"""Batched torch building blocks shared by the corruption families (filters, borders, colour).

Border modes follow the libraries the reference corruptions use:

* ``"edge"``: replicate the border pixel (scipy/skimage ``"nearest"``).
* ``"reflect101"``: mirror without repeating the border pixel (OpenCV's default,
  ``BORDER_REFLECT_101``; torch's ``"reflect"``).
* ``"symmetric"``: mirror repeating the border pixel (scipy/skimage ``"reflect"``).
* ``"wrap"``: periodic.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from robust_ens.corruptions import _compiled
from robust_ens.corruptions._taps import gaussian_kernel1d

BorderMode = str

#: Smallest tensor :func:`quantize_u8` hands to the compiled kernel (smaller work does not pay for
#: loading numba, about 0.3 s once per process).
_QUANTIZE_MIN = 1 << 16


def pad_index(n: int, before: int, after: int, mode: BorderMode) -> np.ndarray:
    """Source index for each position of an axis of length ``n`` padded by ``before``/``after``."""
    i = np.arange(-before, n + after)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    if mode == "reflect101":
        if n == 1:
            return np.zeros_like(i)
        period = 2 * n - 2
        i = np.mod(i, period)
        return np.where(i >= n, period - i, i)
    if mode == "symmetric":
        period = 2 * n
        i = np.mod(i, period)
        return np.where(i >= n, period - 1 - i, i)
    raise ValueError(f"unknown border mode {mode!r}")


def pad(x: torch.Tensor, dim: int, before: int, after: int, mode: BorderMode) -> torch.Tensor:
    """Pad one dimension of ``x`` with the given border mode (any padding width)."""
    if before == 0 and after == 0:
        return x
    n = x.shape[dim]
    if mode == "edge" or (mode in ("reflect101",) and before < n and after < n):
        # fast paths through F.pad on the last two dims
        if x.dim() == 4 and dim in (2, 3):
            p = (before, after, 0, 0) if dim == 3 else (0, 0, before, after)
            return F.pad(x, p, mode="replicate" if mode == "edge" else "reflect")
    idx = torch.from_numpy(pad_index(n, before, after, mode)).to(x.device)
    return x.index_select(dim, idx)


def conv1d(x: torch.Tensor, taps: tuple[float, ...] | torch.Tensor, dim: int, mode: BorderMode) -> torch.Tensor:
    """Correlate dim 2 (rows) or 3 (columns) of ``x [N, C, H, W]`` with a centred 1-D kernel.

    Implemented as a sum of shifted slices (one fused multiply-add per tap), which on CPU is several
    times faster than a single-channel ``conv2d`` and is the same code on CUDA.
    """
    k = [float(v) for v in (taps.tolist() if isinstance(taps, torch.Tensor) else taps)]
    if len(k) == 1:
        return x * k[0]
    r = (len(k) - 1) // 2
    n = x.shape[dim]
    xp = pad(x, dim, r, r, mode)
    out = xp.narrow(dim, 0, n) * k[0]
    for i in range(1, len(k)):
        out.add_(xp.narrow(dim, i, n), alpha=k[i])
    return out


def gaussian_blur(x: torch.Tensor, sigma: float | tuple[float, float], mode: BorderMode = "edge",
                  truncate: float = 4.0) -> torch.Tensor:
    """skimage/scipy ``gaussian`` per channel (separable), sigma as ``s`` or ``(s_rows, s_cols)``."""
    sr, sc = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    out = conv1d(x, gaussian_kernel1d(float(sr), truncate), 2, mode)
    return conv1d(out, gaussian_kernel1d(float(sc), truncate), 3, mode)


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: BorderMode = "reflect101") -> torch.Tensor:
    """Correlate every channel of ``x [N, C, H, W]`` with one odd-sized 2-D kernel.

    All-zero border rows/columns of the kernel are dropped first (the references' disks live on a
    17x17 grid even when only the centre 3x3 is non-zero). Up to 49 taps: a sum of shifted slices;
    larger kernels: FFT correlation (what OpenCV does for large kernels too).
    """
    k = kernel.detach().to("cpu", torch.float64)
    nz_r = (k.abs() > 0).any(1).nonzero().flatten()
    nz_c = (k.abs() > 0).any(0).nonzero().flatten()
    if nz_r.numel() == 0:
        return torch.zeros_like(x)
    cr, cc = (k.shape[0] - 1) // 2, (k.shape[1] - 1) // 2
    ry = int(max(cr - int(nz_r[0]), int(nz_r[-1]) - cr))
    rx = int(max(cc - int(nz_c[0]), int(nz_c[-1]) - cc))
    k = k[cr - ry : cr + ry + 1, cc - rx : cc + rx + 1]
    kh, kw = k.shape
    n, c, h, w = x.shape
    xp = pad(pad(x, 2, ry, ry, mode), 3, rx, rx, mode)
    if kh * kw <= 49:
        out = torch.zeros_like(x)
        for i in range(kh):
            for j in range(kw):
                wt = float(k[i, j])
                if wt != 0.0:
                    out.add_(xp[:, :, i : i + h, j : j + w], alpha=wt)
        return out
    ph, pw = xp.shape[2:]
    kf = torch.zeros(ph, pw, dtype=x.dtype, device=x.device)
    kf[:kh, :kw] = k.flip(0, 1).to(x.device, x.dtype)
    out = torch.fft.irfft2(torch.fft.rfft2(xp) * torch.fft.rfft2(kf), s=(ph, pw))
    return out[:, :, kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w].contiguous()


def quantize_u8(x: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and truncate to the 256 uint8 levels (the references' final ``np.uint8`` cast).

    A margin of 1e-3 of a level absorbs float32 round-off, so an exact level ``k/255`` stays ``k``.
    Contiguous float32 CPU tensors use the compiled kernel when numba is installed (one pass,
    bit-identical; see :mod:`robust_ens.corruptions._compiled`).
    """
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() >= _QUANTIZE_MIN and x.is_contiguous():
        if _compiled.usable(x):
            return _compiled.quantize_u8(x)
    return quantize_u8_torch(x)


def quantize_u8_torch(x: torch.Tensor) -> torch.Tensor:
    """:func:`quantize_u8` in torch alone (any device and dtype; the compiled kernel's reference)."""
    y = torch.add(x.new_tensor(1e-3), x, alpha=255.0)  # 255 x + 1e-3 in one pass
    return y.clamp_(1e-3, 255.0 + 1e-3).floor_().div_(255.0)


def gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (OpenCV ``RGB2GRAY`` weights) ``[N, 1, H, W]``."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """skimage's ``rgb2hsv`` convention (hue in [0, 1), grey pixels have hue 0 and saturation 0)."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    mn = x.amin(1)
    delta = v - mn
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    safe = delta.clamp_min(1e-12)
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv` (skimage's ``hsv2rgb``)."""
    h, s, v = hsv.unbind(1)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    choices = torch.stack(
        (
            torch.stack((v, t, p), 1),
            torch.stack((q, v, p), 1),
            torch.stack((p, v, t), 1),
            torch.stack((p, q, v), 1),
            torch.stack((t, p, v), 1),
            torch.stack((v, p, q), 1),
        ),
        0,
    )
    idx = i.unsqueeze(0).unsqueeze(2).expand(1, *choices.shape[1:])
    return choices.gather(0, idx).squeeze(0)


def shift_sum(x: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``out[n] = sum_i w[i] * x[n, :, clamp(r + dy[n, i]), clamp(c + dx[n, i])]`` (edge replicate).

    Args:
        x: ``[N, C, H, W]``.
        offsets: int64 ``[N, T, 2]`` row/column offsets per example and tap.
        weights: ``[T]`` tap weights (shared by all examples).

    Examples with identical offset lists are processed together, so the Python loop runs over
    distinct offset patterns and taps, not over pixels.
    """
    n, c, h, w = x.shape
    out = torch.zeros_like(x)
    pr = int(offsets[..., 0].abs().max().item()) if offsets.numel() else 0
    pc = int(offsets[..., 1].abs().max().item()) if offsets.numel() else 0
    xp = pad(pad(x, 2, pr, pr, "edge"), 3, pc, pc, "edge")
    patterns, inverse = torch.unique(offsets.reshape(n, -1).cpu(), dim=0, return_inverse=True)
    wl = weights.tolist()
    for p in range(patterns.shape[0]):
        members = (inverse == p).nonzero().flatten()
        offs = patterns[p].view(-1, 2).tolist()
        if members.numel() == n:
            src, dst = xp, out
        else:
            members = members.to(x.device)
            src, dst = xp.index_select(0, members), torch.zeros(members.numel(), c, h, w, dtype=x.dtype, device=x.device)
        for wi, (dy, dx) in zip(wl, offs, strict=False):
            dst.add_(src[:, :, pr + dy : pr + dy + h, pc + dx : pc + dx + w], alpha=wi)
        if members.numel() != n:
            out.index_copy_(0, members, dst)
    return out


def motion_offsets(width: int, angle_deg: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, int]:
    """Tap offsets of the reference motion blur for per-example angles.

    Tap ``i`` reads ``x(r + ceil(i sin(t) - 1/2), c + ceil(i cos(t) - 1/2))``; taps stop (for all
    examples) at the first tap whose offset reaches the image size, as in the reference.
    """
    rad = torch.deg2rad(angle_deg.double().cpu())
    i = torch.arange(width, dtype=torch.float64)
    dy = torch.ceil(i[None] * torch.sin(rad)[:, None] - 0.5).long()
    dx = torch.ceil(i[None] * torch.cos(rad)[:, None] - 0.5).long()
    return torch.stack((dy, dx), -1), width


def motion_kernel(width: int, sigma: float) -> torch.Tensor:
    """One-sided Gaussian motion taps ``exp(-i^2 / (2 s^2))``, normalised (float64)."""
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i**2) / (2 * sigma**2))
    return k / k.sum()


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angle_deg: torch.Tensor) -> torch.Tensor:
    """imagecorruptions' numpy motion blur (ImageMagick's MotionBlurImage kernel), per-example angle."""
    n, c, h, w = x.shape
    width = 2 * radius + 1
    offs, _ = motion_offsets(width, angle_deg, h, w)
    k = motion_kernel(width, sigma)
    # the reference stops at the first tap that leaves the image; apply it per example by zeroing
    # taps at and after that point (weights are not renormalised, as in the reference)
    outside = (offs[..., 0].abs() >= h) | (offs[..., 1].abs() >= w)
    if bool(outside.any()):
        stop = torch.where(outside.any(1), outside.float().argmax(1), torch.full((n,), width))
        out = torch.zeros_like(x)
        for s in stop.unique().tolist():
            sel = (stop == s).nonzero().flatten().to(x.device)
            out[sel] = shift_sum(x[sel], offs[(stop == s)][:, :s], k[:s])
        return out
    return shift_sum(x, offs, k.to(torch.float64))


def clipped_zoom(x: torch.Tensor, z: float, trim: str = "topleft") -> torch.Tensor:
    """Centre-crop ``ceil(H/z) x ceil(W/z)``, bilinear (corner-aligned) upsample by ``z``, cut to H x W.

    ``trim="topleft"`` keeps the top-left H x W (imagecorruptions); ``"center"`` trims centrally
    (the CIFAR-10-C script); ``"none"`` returns the whole upsampled crop.
    """
    h, w = x.shape[-2:]
    ch, cw = int(math.ceil(h / z)), int(math.ceil(w / z))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    oh, ow = int(round(ch * z)), int(round(cw * z))
    if (oh, ow) == (ch, cw):
        up = crop
    else:
        up = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    if trim == "none":
        return up
    if trim == "center":
        t, l_ = (oh - h) // 2, (ow - w) // 2
        return up[..., t : t + h, l_ : l_ + w]
    return up[..., :h, :w]
