"""Compiled CPU kernels (optional: need numba; ``pip install robust-ens[fast]``).

Two hot spots of the corruptions run as numba kernels on the CPU, each bit-identical to its torch
path: glass blur (:func:`glass_blur_kernel`) and the final truncation to the uint8 levels that
every corruption ends with (:func:`quantize_u8`, used by ``_ops.quantize_u8``).

The torch path of :func:`robust_ens.corruptions.blur.glass_blur` is a chain of whole-tensor passes
(two separable Gaussian blurs of ``2 (2R + 1)`` passes each, the uint8 truncation, pointer
doubling over the copy chains, a gather). The kernel does the same arithmetic in three loops over
the image, each pixel's numbers taking exactly the same floating-point steps:

* the separable blur keeps torch's order per output value: ``x[0] * k[0]``, then one fused
  multiply-add (``llvm.fma.f32``, a single rounding, like ATen's vectorized ``add(alpha=)``) per
  further tap, rows first, then columns of the row-blurred image, edge-replicated;
* the uint8 truncation (``fma(x, 255, 1e-3)``, clamp, floor, ``/ 255``) and the ``(dy, dx)``
  offsets repeat the same float32 operations;
* the pixel passes run the reference's sequential one-way copy itself (no copy chains to resolve).

Whether ATen fuses its multiply-adds depends on the CPU capability it dispatches to (AVX2 and
AVX-512 builds do; a build without FMA would not), so before any kernel is used it is checked once
per process against the torch paths on small inputs (:func:`kernel_agrees`); on any difference the
torch paths stay in use (with a warning). ``ROBUST_ENS_NUMBA=0`` disables the kernels. On CUDA,
and for other dtypes, the torch paths run.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from functools import lru_cache
from types import ModuleType

import numpy as np
import torch

from robust_ens.corruptions._base import Ctx
from robust_ens.corruptions._rng import ExampleRNG
from robust_ens.corruptions._taps import gaussian_kernel1d

log = logging.getLogger(__name__)

#: Environment variable that turns the compiled kernels off (``0``, ``false``, ``no``, ``off``).
ENV_NUMBA = "ROBUST_ENS_NUMBA"

_probing = threading.local()  # set while kernel_agrees runs the torch paths (they must not dispatch here)

#: Output modes of the fused blur (``_numba_kernels.blur``): truncate to the uint8 levels like
#: ``_ops.quantize_u8``; clamp to [0, 1].
_QUANTIZE, _CLAMP01 = 1, 2


def enabled() -> bool:
    """False when ``ROBUST_ENS_NUMBA`` turns the compiled kernels off."""
    return os.environ.get(ENV_NUMBA, "1").strip().lower() not in ("0", "false", "no", "off")


@lru_cache(maxsize=1)
def kernels() -> ModuleType | None:
    """The numba kernels (:mod:`._numba_kernels`, compiled on first use and cached on disk), or None
    without numba."""
    try:
        return importlib.import_module("robust_ens.corruptions._numba_kernels")
    except ImportError:
        return None
    except Exception as err:  # e.g. numba finds no writable cache directory
        warnings.warn(f"numba is installed but the corruption kernels cannot be set up ({err}); using the "
                      "torch paths", RuntimeWarning, stacklevel=2)
        return None


def glass_blur_kernel(x: torch.Tensor, p: tuple[float, int, int], ctx: Ctx) -> torch.Tensor:
    """Glass blur of a float32 CPU batch with the compiled kernels (see the module docstring).

    Args:
        x: float32 ``[N, C, H, W]`` on the CPU.
        p: The preset's ``(sigma, delta, passes)``.
        ctx: The corruption context (its per-example streams ``shuffle0``, ``shuffle1``, ...).

    Returns:
        Bit-identical to the torch path: blur, uint8 truncation, the passes, blur, clamp to [0, 1].
    """
    ns = kernels()
    assert ns is not None
    sigma, delta, iters = float(p[0]), int(p[1]), int(p[2])
    n, c, h, w = x.shape
    taps = np.asarray(gaussian_kernel1d(sigma), dtype=np.float32)
    src = x.contiguous().numpy().reshape(n * c, h, w)
    y = torch.empty((n, c, h, w), dtype=torch.float32)
    ns.blur(src, y.numpy().reshape(n * c, h, w), taps, _QUANTIZE)
    hr, wr = max(h - 2 * delta, 0), max(w - 2 * delta, 0)
    off = np.empty((n, hr, wr), np.int32)
    for it in range(iters):
        u = ctx.rng.uniform(f"shuffle{it}", (hr, wr))
        if hr and wr:
            ns.offsets(u.contiguous().numpy(), delta, w, off)
            ns.shuffle(y.numpy(), off, delta)
    out = torch.empty_like(y)
    ns.blur(y.numpy().reshape(n * c, h, w), out.numpy().reshape(n * c, h, w), taps, _CLAMP01)
    return out


def quantize_u8(x: torch.Tensor) -> torch.Tensor:
    """``_ops.quantize_u8`` of a contiguous float32 CPU tensor in one pass (bit-identical)."""
    ns = kernels()
    assert ns is not None
    out = torch.empty_like(x)
    ns.quantize(x.view(-1).numpy(), out.view(-1).numpy())
    return out


def usable(x: torch.Tensor) -> bool:
    """Whether the compiled kernels serve ``x``: a float32 CPU tensor, numba present, enabled, and
    the kernels agree with the torch paths on this machine (:func:`kernel_agrees`)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad and enabled()
            and not getattr(_probing, "on", False) and kernel_agrees())


# The torch paths each kernel must reproduce, set by the package (which imports both sides):
# "glass_blur" (x, params, ctx) -> images and "quantize_u8" (x) -> levels.
REFERENCES: dict[str, Callable[..., torch.Tensor]] = {}


def set_references(**paths: Callable[..., torch.Tensor]) -> None:
    """Register the torch paths :func:`kernel_agrees` compares the kernels with (before first use)."""
    REFERENCES.update(paths)


@lru_cache(maxsize=1)
def kernel_agrees() -> bool:
    """Compile the kernels and compare them once with the torch paths (odd sizes, every border
    case, off-grid values, NaN and infinities for the truncation).

    Returns False (the torch paths are used) without numba, or with a warning when any output value
    differs, e.g. on a CPU where ATen does not fuse multiply-adds.
    """
    if kernels() is None:
        log.debug("numba is not installed: the corruptions use their torch paths")
        return False
    _probing.on = True
    try:
        why = _first_disagreement()
    finally:
        _probing.on = False
    if why is None:
        return True
    warnings.warn(f"the compiled corruption kernels {why}; using the torch paths", RuntimeWarning, stacklevel=3)
    return False


def _first_disagreement() -> str | None:
    """None when every kernel reproduces its torch path on the probe inputs, else why not."""
    glass_torch, quantize_torch = REFERENCES.get("glass_blur"), REFERENCES.get("quantize_u8")
    if glass_torch is None or quantize_torch is None:
        return "have no torch reference to be checked against (robust_ens.corruptions sets them)"
    g = torch.Generator().manual_seed(12345)
    # fewer than 32768 values per tensor: torch's path runs serially whatever the thread count
    x = torch.rand(2, 3, 37, 45, generator=g)
    x[0, :, :5] = (x[0, :, :5] * 255).floor() / 255  # exact uint8 levels too
    q = torch.cat([torch.linspace(-0.1, 1.1, 5000), torch.arange(256) / 255.0, torch.rand(4000, generator=g),
                   torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1.0])])
    try:
        for p in [(0.7, 1, 2), (1.5, 4, 2), (0.05, 1, 1), (2.5, 3, 1)]:
            ctx = Ctx(preset="kittic", severity=1, rng=ExampleRNG(7, torch.arange(2), "glass_blur", 1, x.device))
            if not torch.equal(glass_torch(x, p, ctx), glass_blur_kernel(x, p, ctx)):
                return f"differ from the torch paths on this machine (glass blur {p}, torch CPU capability " \
                       f"{torch.backends.cpu.get_cpu_capability()})"
        want, got = quantize_torch(q), quantize_u8(q)
    except Exception as err:  # a numba/llvmlite that cannot compile the kernels
        return f"cannot be compiled here ({type(err).__name__}: {err})"
    if not torch.equal(want.nan_to_num(-1.0), got.nan_to_num(-1.0)) or not torch.equal(want.isnan(), got.isnan()):
        return f"differ from the torch paths on this machine (uint8 truncation, torch CPU capability " \
               f"{torch.backends.cpu.get_cpu_capability()})"
    return None
