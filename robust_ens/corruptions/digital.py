"""Digital corruptions: contrast, elastic transform, pixelate, JPEG, saturate, colour quantisation.

Sources: Hendrycks & Dietterich 2019 (ImageNet-C / CIFAR-10-C scripts), imagecorruptions 1.1.2,
RoboDepth (colour quantisation).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from robust_ens.corruptions import _ops
from robust_ens.corruptions._base import Ctx, register

_HC = "Hendrycks & Dietterich 2019 (make_cifar_c.py / make_imagenet_c.py), imagecorruptions 1.1.2"


@register("contrast", family="digital", random=False, source=_HC)
def contrast(x: torch.Tensor, c: float, ctx: Ctx) -> torch.Tensor:
    """``clip((x - mean) c + mean)`` with the per-image, per-channel mean."""
    m = x.mean((2, 3), keepdim=True)
    return ((x - m) * c + m).clamp_(0, 1)


@register("saturate", family="digital", random=False, source=_HC)
def saturate(x: torch.Tensor, p: tuple[float, float], ctx: Ctx) -> torch.Tensor:
    """In skimage's HSV, ``S <- clip(S a + b)`` (grey pixels have hue 0, so ``b > 0`` tints them red)."""
    hsv = _ops.rgb_to_hsv(x)
    s = (hsv[:, 1] * p[0] + p[1]).clamp(0, 1)
    hsv = torch.stack((hsv[:, 0], s, hsv[:, 2]), 1)
    return _ops.hsv_to_rgb(hsv).clamp_(0, 1)


@register("color_quant", family="digital", random=False, source="RoboDepth (Kong et al. 2023), Pillow posterize", on_grid=True)
def color_quant(x: torch.Tensor, bits: int, ctx: Ctx) -> torch.Tensor:
    """Keep the top ``bits`` bits of each 8-bit channel value."""
    step = float(2 ** (8 - int(bits)))
    v = torch.floor(x.clamp(0, 1) * 255.0 + 1e-3)
    return torch.floor(v / step).mul_(step).div_(255.0)


# ---------------------------------------------------------------------------------------- pixelate


@lru_cache(maxsize=64)
def pil_resize_matrix(n_in: int, n_out: int, filt: str) -> np.ndarray:
    """Pillow's separable resampling weights (``BOX`` or ``NEAREST``) as an ``n_out x n_in`` matrix."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    if filt == "nearest":
        # Pillow's scale-only affine: the source coordinate is accumulated by repeated addition
        src = np.empty(n_out, dtype=np.int64)
        pos = scale * 0.5
        for o in range(n_out):
            src[o] = min(int(pos), n_in - 1)
            pos += scale
        m[np.arange(n_out), src] = 1.0
        return m
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        t = (np.arange(lo, hi) - center + 0.5) / fscale
        wts = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
        if wts.sum() == 0:
            wts[:] = 1.0
        m[o, lo:hi] = wts / wts.sum()
    return m


@lru_cache(maxsize=64)
def _box_bounds(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last input index of each output's BOX window (Pillow's 0/1 weights)."""
    m = pil_resize_matrix(n_in, n_out, "box")
    nz = m > 0
    lo = nz.argmax(1)
    hi = n_in - nz[:, ::-1].argmax(1)
    assert np.allclose(m.sum(1), 1.0) and all(nz[o, lo[o] : hi[o]].all() for o in range(n_out))
    return lo, hi


def _resize_axis(y: torch.Tensor, n_out: int, dim: int, filt: str) -> torch.Tensor:
    """Resample dimension ``dim`` of ``y`` (whole numbers 0..255) like one Pillow pass (no rounding).

    Works along ``dim`` directly (row copies and cumulative sums across a contiguous inner dimension
    are fast; gathers along the innermost dimension are not, so callers pass a layout where ``dim``
    is not the last one).
    """
    n_in = y.shape[dim]
    shape = [1] * y.dim()
    shape[dim] = n_out
    if filt == "nearest":
        src = torch.from_numpy(pil_resize_matrix(n_in, n_out, "nearest").argmax(1)).to(y.device)
        return y.index_select(dim, src)
    if n_out > n_in:
        m = torch.from_numpy(pil_resize_matrix(n_in, n_out, filt)).to(y.device, y.dtype)
        return torch.movedim(torch.movedim(y, dim, -1) @ m.t(), -1, dim)
    # BOX reduction: sum of the (few) window taps, each a row selection masked by the window length
    # (exact: the values are whole numbers and the windows hold at most a few hundred of them)
    lo, hi = _box_bounds(n_in, n_out)
    length = hi - lo
    out = None
    for t in range(int(length.max())):
        idx = torch.from_numpy(np.minimum(lo + t, n_in - 1)).to(y.device)
        tap = y.index_select(dim, idx)
        if (length <= t).any():
            tap.mul_(torch.from_numpy((length > t).astype(np.float32)).to(y.device, y.dtype).view(shape))
        out = tap if out is None else out.add_(tap)
    assert out is not None
    return out.div_(torch.from_numpy(length.astype(np.float32)).to(y.device, y.dtype).view(shape))


def pil_resize_levels(v: torch.Tensor, size: tuple[int, int], filt: str) -> torch.Tensor:
    """Pillow's resize of uint8 levels (whole numbers 0..255 as float): horizontal pass, round,
    vertical pass, round (NEAREST only selects, so it skips the rounding).

    The horizontal pass runs on the transposed image (columns as rows), so both passes copy or sum
    whole rows.
    """
    h, w = v.shape[-2:]
    oh, ow = size
    y = v
    if ow != w:
        y = _resize_axis(y.transpose(-1, -2).contiguous(), ow, y.dim() - 2, filt)
        if filt != "nearest":
            y = torch.floor(y.add_(0.5)).clamp_(0, 255)
        y = y.transpose(-1, -2).contiguous()
    if oh != h:
        y = _resize_axis(y, oh, y.dim() - 2, filt)
        if filt != "nearest":
            y = torch.floor(y.add_(0.5)).clamp_(0, 255)
    return y


def pil_resize(x: torch.Tensor, size: tuple[int, int], filt: str) -> torch.Tensor:
    """Resize like Pillow on uint8 images (``x`` in [0, 1], rounded to 8 bits first)."""
    return pil_resize_levels(torch.floor(x * 255.0 + 0.5), size, filt).div(255.0)


@register("pixelate", family="digital", random=False, source=_HC, on_grid=True,
          departures="Pillow's BOX/NEAREST resampling (window sums, same rounding per pass): exact on uint8 input.")
def pixelate(x: torch.Tensor, c: float, ctx: Ctx) -> torch.Tensor:
    """BOX-downsample to ``(int(H c), int(W c))`` and upsample back (NEAREST; BOX for cifar10c)."""
    h, w = x.shape[-2:]
    v = x.clamp(0.0, 1.0).mul_(255.0).add_(1e-3).floor_()  # the uint8 levels (quantize_u8)
    small = pil_resize_levels(v, (int(h * c), int(w * c)), "box")
    return pil_resize_levels(small, (h, w), "box" if ctx.preset == "cifar10c" else "nearest").div_(255.0)


# -------------------------------------------------------------------------------------------- JPEG

_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64).reshape(8, 8)
_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, dtype=np.float64).reshape(8, 8)


def quant_table(base: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg's quality scaling of a base table (baseline: entries in 1..255)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((base * scale + 50) // 100, 1, 255)


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    k = np.arange(8)
    d = np.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * 0.5
    d[0] *= 1 / math.sqrt(2)
    return d


def _blocks(p: torch.Tensor) -> torch.Tensor:
    n, h, w = p.shape
    return p.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(b: torch.Tensor) -> torch.Tensor:
    n, bh, bw = b.shape[:3]
    return b.permute(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8)


@lru_cache(maxsize=32)
def _jpeg_matrices(table: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D (x) D)^T diag(1/q)`` and ``diag(q) (D (x) D)`` (float64): DCT + quantiser scaling, and
    dequantisation + inverse DCT, each one 64x64 GEMM (``vec(D B D^T) = (D (x) D) vec(B)``)."""
    d = _dct_matrix()
    k = torch.from_numpy(np.kron(d, d))
    q = torch.tensor(table, dtype=torch.float64)
    return k.t() / q.view(1, -1), q.view(-1, 1) * k


def _jpeg_plane(p: torch.Tensor, table: np.ndarray) -> torch.Tensor:
    """DCT, quantise, dequantise and inverse DCT of every 8x8 block (level-shifted by 128)."""
    fwd, inv = (m.to(p.device, p.dtype) for m in _jpeg_matrices(tuple(float(v) for v in table.reshape(-1))))
    b = _blocks(p - 128.0)
    shape = b.shape
    coef = torch.round(b.reshape(-1, 64) @ fwd)  # libjpeg rounds half away from zero; ties are negligible here
    return _unblocks((coef @ inv).view(shape)).add_(128.0)


def _fancy_up(c: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """libjpeg's h2v2 "fancy" (triangle) chroma upsampling: 3/4 nearer + 1/4 farther sample per axis."""
    # 3/4 c[i] + 1/4 c[i -+ 1] with replicated borders is exactly bilinear upsampling by 2 with
    # half-pixel centres (align_corners=False)
    up = F.interpolate(c.unsqueeze(1), scale_factor=2.0, mode="bilinear", align_corners=False)
    return up[:, 0, :h, :w]


def _mix3(v: torch.Tensor, m: tuple[tuple[float, float, float], ...]) -> torch.Tensor:
    """``out[:, i] = sum_j m[i][j] v[:, j]`` for ``[N, 3, H, W]`` (elementwise; faster than a 3x3 GEMM)."""
    out = torch.empty_like(v)
    for i, row in enumerate(m):
        o = out[:, i]
        torch.mul(v[:, 0], row[0], out=o)
        for j in (1, 2):
            if row[j] != 0.0:
                o.add_(v[:, j], alpha=row[j])
    return out


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Baseline JPEG round trip (libjpeg defaults: JFIF YCbCr, 4:2:0, standard tables) in torch.

    Float DCT instead of libjpeg's integer DCT, and 2x2 chroma means without libjpeg's alternating
    rounding bias: results differ from Pillow by about one 8-bit level on average.
    """
    n, _, h, w = x.shape
    v = torch.floor(x.clamp(0, 1) * 255.0 + 1e-3)
    ph, pw = -(-h // 16) * 16, -(-w // 16) * 16
    v = _ops.pad(_ops.pad(v, 2, 0, ph - h, "edge"), 3, 0, pw - w, "edge")
    ycc = _mix3(v, ((0.299, 0.587, 0.114), (-0.168735892, -0.331264108, 0.5), (0.5, -0.418687589, -0.081312411)))
    yy = torch.round(ycc[:, 0])
    # libjpeg's h2v2 downsampling: (sum of 2x2 + bias) >> 2 with the bias alternating 1, 2 by column
    bias = torch.tensor([1.0, 2.0], dtype=v.dtype, device=v.device).repeat(pw // 4)
    chroma = torch.round(ycc[:, 1:].add_(128.0))  # Cb, Cr
    chroma = torch.floor(F.avg_pool2d(chroma, 2).mul_(4.0).add_(bias).div_(4.0))
    yq = torch.round(_jpeg_plane(yy, quant_table(_LUMA, quality))).clamp_(0, 255)
    cq = torch.round(_jpeg_plane(chroma.reshape(2 * n, ph // 2, pw // 2), quant_table(_CHROMA, quality))).clamp_(0, 255)
    ch, cw = -(-h // 2), -(-w // 2)  # the decoder replicates the last real chroma row/column as context
    cu = _fancy_up(cq[:, :ch, :cw], h, w).sub_(128.0).view(n, 2, h, w)
    ycc_q = torch.cat((yq[:, None, :h, :w], cu), 1)
    out = _mix3(ycc_q, ((1.0, 0.0, 1.402), (1.0, -0.344136286, -0.714136286), (1.0, 1.772, 0.0)))
    return torch.round(out).clamp_(0, 255).div_(255.0)


@register("jpeg_compression", family="digital", random=False, source=_HC + ", Pillow/libjpeg defaults", on_grid=True,
          departures="Torch JPEG codec (float DCT); agrees with Pillow within about one 8-bit level on average.")
def jpeg_compression(x: torch.Tensor, quality: int, ctx: Ctx) -> torch.Tensor:
    """Encode and decode as baseline JPEG at ``quality`` (4:2:0)."""
    return jpeg(x, int(quality))


# ----------------------------------------------------------------------------------------- elastic


def _sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Bilinear sampling at pixel coordinates ``[N, H, W]``; ``mode`` "symmetric" or "reflect101"."""
    h, w = x.shape[-2:]
    if mode == "symmetric":  # scipy "reflect": mirror about the pixel edges -> align_corners=False
        gx = (2 * cols + 1) / w - 1
        gy = (2 * rows + 1) / h - 1
        grid = torch.stack((gx, gy), -1).to(x.dtype)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gx = 2 * cols / max(w - 1, 1) - 1
    gy = 2 * rows / max(h - 1, 1) - 1
    grid = torch.stack((gx, gy), -1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


@register("elastic_transform", family="digital", random=True, source=_HC,
          departures=(
              "cifar10c: random affine (OpenCV warpAffine, reflect-101) then smoothed displacement "
              "fields, as make_cifar_c.py, with the fractions applied to the image's smaller side; "
              "imagenetc/kittic: imagecorruptions' form. Bilinear sampling by grid_sample."))
def elastic_transform(x: torch.Tensor, p: float | tuple[float, float, float], ctx: Ctx) -> torch.Tensor:
    """Smooth random displacement fields (plus a random affine for cifar10c), bilinear resampling."""
    n, _, h, w = x.shape
    dev, dt = x.device, torch.float64
    rr, cc = torch.meshgrid(torch.arange(h, device=dev, dtype=dt), torch.arange(w, device=dev, dtype=dt), indexing="ij")
    if ctx.preset == "cifar10c":
        side = min(h, w)
        alpha, sigma, jitter = (float(v) * side for v in p)  # type: ignore[union-attr]
        center, half = h // 2, min(h, w) // 3
        src = torch.tensor([[center + half, center + half], [center + half, center - half],
                            [center - half, center - half]], dtype=dt, device=dev)
        dst = src + ctx.rng.uniform("affine", (3, 2), -jitter, jitter, dtype=dt) if jitter > 0 else src.expand(n, 3, 2)
        # M maps source (x, y) to destination; sampling needs M^-1 applied to output pixels
        ones = torch.ones(n, 3, 1, dtype=dt, device=dev)
        a = torch.cat((src.expand(n, 3, 2), ones), 2)
        m = torch.linalg.solve(a, dst)  # [n, 3, 2]: [x y 1] @ m = [x' y']
        full = torch.zeros(n, 3, 3, dtype=dt, device=dev)
        full[:, :, :2] = m
        full[:, 2, 2] = 1.0
        inv = torch.linalg.inv(full)
        pts = torch.stack((cc, rr, torch.ones_like(rr)), -1).view(1, -1, 3)
        srcpts = (pts @ inv)[..., :2].view(n, h, w, 2)
        x = _sample(x, srcpts[..., 1], srcpts[..., 0], "reflect101")
        if alpha == 0:
            return x.clamp_(0, 1)
        fields = ctx.rng.uniform("field", (2, h, w), -1.0, 1.0, dtype=x.dtype)
        fields = _ops.gaussian_blur(fields, sigma, "symmetric", truncate=3.0) * alpha
    else:
        alpha = float(p)  # type: ignore[arg-type]
        amp = h * 0.005
        fields = ctx.rng.uniform("field", (2, h, w), -amp, amp, dtype=x.dtype)
        fields = _ops.gaussian_blur(fields, (0.01 * h, 0.01 * w), "symmetric", truncate=3.0) * alpha
    # grid_sample's normalised coordinates of (r + dy, c + dx), written straight into the grid
    # (float32 like the grid itself; scipy "reflect" mirrors about pixel edges: align_corners=False)
    grid = torch.empty(n, h, w, 2, dtype=x.dtype, device=dev)
    base_x = ((2 * cc + 1) / w - 1).to(x.dtype)
    base_y = ((2 * rr + 1) / h - 1).to(x.dtype)
    torch.add(base_x, fields[:, 0], alpha=2.0 / w, out=grid[..., 0])
    torch.add(base_y, fields[:, 1], alpha=2.0 / h, out=grid[..., 1])
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.clamp_(0, 1)
