"""Common corruptions in batched torch: CIFAR-10-C, ImageNet-C and KITTI-C presets.

One code path for CPU and CUDA: every corruption works on a whole ``[N, C, H, W]`` batch with
tensor operations (no per-image numpy or per-pixel Python loops). Random corruptions draw from
per-example generators seeded by ``(seed, example index, corruption, severity)``, so a corrupted
set is bit-identical however it is split into batches (on the same device).

Outputs are truncated to the 256 uint8 levels, like the references' final ``np.uint8`` cast, so
caching them as uint8 is lossless.

Example:
    >>> import torch
    >>> from robust_ens.corruptions import corrupt, list_corruptions
    >>> x = torch.rand(4, 3, 32, 32)
    >>> y = corrupt(x, "gaussian_noise", 3, preset="cifar10c", seed=0)
    >>> y.shape, bool(y.min() >= 0), bool(y.max() <= 1)
    (torch.Size([4, 3, 32, 32]), True, True)
    >>> len(list_corruptions("kittic")), len(list_corruptions("cifar10c", subset="common"))
    (18, 15)

Departures from the references (each corruption's ``describe(name)["departures"]``): frost is
procedural (no photographs shipped), spatter's water mode approximates Canny and the distance
transform, JPEG is a torch codec within about one 8-bit level of Pillow, and random numbers come
from per-example torch generators instead of numpy's global stream. Glass blur's sequential pixel
copies are reproduced exactly in distribution (pointer doubling). Poisson noise (shot, ISO, dark)
on uint8-grid images is drawn by inverse-CDF table lookup (exact up to float32 resolution of the
uniforms); off-grid inputs use ``torch.poisson``.

Speed: on CPU a batch is corrupted a few examples at a time (about 1M values per chunk), which
keeps every intermediate in cache; per-example random streams make this invisible in the result.
CPU work runs on one torch thread unless the user chose a count (:mod:`robust_ens.threads`), so a
busy machine does not stall every small operation. With numba installed (``robust-ens[fast]``),
glass blur and the final truncation to uint8 levels run compiled kernels on the CPU, bit-identical
to their torch paths (checked once per process; ``ROBUST_ENS_NUMBA=0`` turns them off).
"""

from __future__ import annotations

from typing import Any

import torch

from robust_ens.corruptions import _compiled, blur, digital, noise, weather  # noqa: F401  (register corruptions)
from robust_ens.corruptions._base import CORRUPTIONS, Ctx
from robust_ens.corruptions._ops import quantize_u8, quantize_u8_torch
from robust_ens.corruptions._rng import ExampleRNG
from robust_ens.corruptions.presets import COMMON, EXTRA, KITTIC, PRESETS
from robust_ens.errors import RobustEnsError
from robust_ens.threads import small_work_threads

# The compiled kernels check themselves against these torch paths once per process.
_compiled.set_references(glass_blur=blur.glass_blur_torch, quantize_u8=quantize_u8_torch)

__all__ = ["CORRUPTIONS", "PRESETS", "corrupt", "describe", "list_corruptions", "list_presets"]

#: Elements (3 x H x W per image) corrupted at once on CPU; about 4 MB of float32, cache-resident.
_CPU_CHUNK_ELEMENTS = 1 << 20

ALIASES = {"low_light": "dark", "jpeg": "jpeg_compression", "elastic": "elastic_transform", "color_quantization": "color_quant"}


def list_presets() -> list[str]:
    """Names of the parameter presets."""
    return list(PRESETS)


def list_corruptions(preset: str = "cifar10c", subset: str = "all") -> list[str]:
    """Corruption names of a preset, in the reference's order.

    Args:
        preset: ``"cifar10c"``, ``"imagenetc"`` or ``"kittic"``.
        subset: ``"all"``; ``"common"`` (the 15 of mCE / mean corruption accuracy) or ``"extra"``
            (speckle_noise, gaussian_blur, spatter, saturate) for cifar10c/imagenetc.

    Raises:
        RobustEnsError: for an unknown preset or subset.
    """
    _check_preset(preset)
    if preset == "kittic":
        if subset not in ("all", "common"):
            raise RobustEnsError(f"preset 'kittic' has no subset {subset!r}; use subset='all'")
        return list(KITTIC)
    if subset == "all":
        return [*COMMON, *EXTRA]
    if subset == "common":
        return list(COMMON)
    if subset == "extra":
        return list(EXTRA)
    raise RobustEnsError(f"unknown subset {subset!r}; use 'all', 'common' or 'extra'")


def describe(name: str) -> dict[str, Any]:
    """Family, randomness, source and departures from the reference of a corruption."""
    return CORRUPTIONS.meta(ALIASES.get(name, name))


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise RobustEnsError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    *,
    preset: str = "cifar10c",
    seed: int = 0,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply one corruption at one severity to a batch of images.

    Args:
        x: Float images in [0, 1], ``[N, C, H, W]`` with ``C`` 1 or 3 and ``H, W >= 32``, on any
            device. Grey images are corrupted as RGB and converted back (luma).
        name: A corruption of the preset (see :func:`list_corruptions`).
        severity: 1..5.
        preset: Parameter table: ``"cifar10c"`` (32 px), ``"imagenetc"`` (any size, imagecorruptions'
            generalisation) or ``"kittic"`` (RoboDepth's 18).
        seed: Seed of the random corruptions.
        index: int64 ``[N]`` dataset indices of the examples (default ``arange(N)``). Example ``i``
            is corrupted with the same random numbers whatever batch it comes in, so pass the
            true indices when corrupting a dataset in chunks. Results are bit-identical for the
            same device and torch thread count; a different thread count can move about one
            pixel in 10^5 by one level (zoom blur, frost: float rounding of torch's interpolation).
            On the CPU the corruption runs on one torch thread unless you chose a count
            (``ROBUST_ENS_THREADS``, ``OMP_NUM_THREADS`` or ``torch.set_num_threads``; see
            :mod:`robust_ens.threads`).

    Returns:
        Corrupted images, same shape, dtype and device as ``x``, values on the 256 uint8 levels.

    Raises:
        RobustEnsError: for an unknown name/preset, a bad severity, shape, dtype or value range.

    Example:
        >>> import torch
        >>> x = torch.rand(8, 3, 64, 64)
        >>> a = corrupt(x, "glass_blur", 2, preset="imagenetc", seed=1)
        >>> b = torch.cat([corrupt(x[:3], "glass_blur", 2, preset="imagenetc", seed=1),
        ...                corrupt(x[3:], "glass_blur", 2, preset="imagenetc", seed=1, index=torch.arange(3, 8))])
        >>> torch.equal(a, b)
        True
    """
    # Small CPU work runs on one torch thread unless the user chose a count (robust_ens.threads): on a
    # busy machine every parallel op of a few images (the input checks' min/max included) would
    # otherwise wait for a descheduled thread.
    with small_work_threads(x.device if isinstance(x, torch.Tensor) else None):
        return _corrupt(x, _check_call(x, name, severity, preset), severity, preset, seed, index)


def _corrupt(x: torch.Tensor, name: str, severity: int, preset: str, seed: int,
             index: torch.Tensor | None) -> torch.Tensor:
    """:func:`corrupt` on checked arguments (``name`` canonical)."""
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    index = _check_index(x, index)
    table = PRESETS[preset]
    dtype = x.dtype
    work = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    if c == 1:
        work = work.expand(n, 3, h, w)
    params = table[name][severity - 1]
    fn = CORRUPTIONS.get(name)
    on_grid = c == 3 and CORRUPTIONS.meta(name).get("on_grid", False)

    def run(start: int, stop: int) -> torch.Tensor:
        ctx = Ctx(preset=preset, severity=severity, rng=ExampleRNG(seed, index[start:stop], name, severity, x.device))
        out = fn(work[start:stop].contiguous(), params, ctx)
        if c == 1:
            out = (out * torch.tensor([0.299, 0.587, 0.114], dtype=out.dtype, device=out.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return out if on_grid else quantize_u8(out)

    # On CPU, corrupt a few examples at a time: every corruption is a chain of whole-tensor passes,
    # and passes over cache-resident chunks are about twice as fast as over a large batch. The
    # random numbers are per example, so the result does not depend on the chunking.
    step = n if x.device.type != "cpu" else max(1, _CPU_CHUNK_ELEMENTS // (3 * h * w))
    if step >= n:
        return run(0, n).to(dtype)
    result = torch.empty_like(x)
    for start in range(0, n, step):
        result[start : start + step] = run(start, min(n, start + step))
    return result


def _check_call(x: torch.Tensor, name: str, severity: int, preset: str) -> str:
    """The corruption's canonical name, after refusing a bad preset, name, severity or image batch."""
    _check_preset(preset)
    name = ALIASES.get(name, name)
    table = PRESETS[preset]
    if name not in table:
        known = ", ".join(table)
        raise RobustEnsError(f"corruption {name!r} is not in preset {preset!r}; choose one of: {known}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise RobustEnsError(f"severity must be an integer 1..5, got {severity!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise RobustEnsError(
            "x must be a float tensor [N, C, H, W] in [0, 1]; got "
            + (f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__)
            + " (convert uint8 images with x.float() / 255)"
        )
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise RobustEnsError(f"x must have 1 or 3 channels, got {c}")
    if h < 32 or w < 32:
        raise RobustEnsError(f"images must be at least 32x32 (the references' minimum), got {h}x{w}")
    if n:
        lo, hi = torch.aminmax(x)
        if float(lo) < -1e-6 or float(hi) > 1 + 1e-6:
            raise RobustEnsError(f"x must lie in [0, 1], got values in [{float(lo):.4g}, {float(hi):.4g}]")
    return name


def _check_index(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """The examples' dataset indices on the CPU (default ``arange(N)``), checked against the batch."""
    n = x.shape[0]
    if index is None:
        return torch.arange(n)
    index = torch.as_tensor(index).reshape(-1).cpu()
    if index.numel() != n:
        raise RobustEnsError(f"index has {index.numel()} entries for a batch of {n} images")
    return index
