# mypy: ignore-errors
# (numba types these functions when it compiles them; mypy cannot follow intrinsics and dispatchers)
"""The numba kernels (imported only when numba is installed; see :mod:`._compiled`).

Every function here is compiled by numba on first use and cached on disk next to this file (or in
numba's user cache directory when that is read-only).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

__all__ = ["blur", "fma_cols", "fma_rows", "offsets", "quantize", "shuffle"]


@intrinsic
def fma32(typingctx: Any, a: Any, b: Any, c: Any) -> Any:  # noqa: ARG001
    """``a * b + c`` in float32 with one rounding (LLVM's fma intrinsic)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:  # noqa: ARG001
        return builder.fma(*args)

    return sig, codegen


#: Compiled once, cached on disk; numpy's error model (no Python exceptions in the loops).
_jit = numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)


@_jit
def _clamp(v: float, lo: float, hi: float) -> float:  # pragma: no cover
    # torch's clamp: NaN stays NaN
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


# The inner loops index every array with the loop counter alone (views instead of offsets):
# numba's negative-index wraparound then folds away and LLVM vectorizes them.
@_jit
def fma_rows(acc: np.ndarray, src: np.ndarray, rows: np.ndarray, k: np.ndarray) -> None:  # pragma: no cover
    # acc[c] = fma(src[rows[i], c], k[i], acc[c]) for i = 1, 2, ... in order; four taps per sweep
    # keep the running value in a register (same operations, same order)
    w = acc.shape[0]
    nk = k.shape[0]
    i = 1
    while i < nk:
        m = min(4, nk - i)
        a, ka = src[rows[i]], k[i]
        if m == 4:
            b, c_, d = src[rows[i + 1]], src[rows[i + 2]], src[rows[i + 3]]
            kb, kc, kd = k[i + 1], k[i + 2], k[i + 3]
            for c in range(w):
                acc[c] = fma32(d[c], kd, fma32(c_[c], kc, fma32(b[c], kb, fma32(a[c], ka, acc[c]))))
        elif m == 3:
            b, c_ = src[rows[i + 1]], src[rows[i + 2]]
            kb, kc = k[i + 1], k[i + 2]
            for c in range(w):
                acc[c] = fma32(c_[c], kc, fma32(b[c], kb, fma32(a[c], ka, acc[c])))
        elif m == 2:
            b = src[rows[i + 1]]
            kb = k[i + 1]
            for c in range(w):
                acc[c] = fma32(b[c], kb, fma32(a[c], ka, acc[c]))
        else:
            for c in range(w):
                acc[c] = fma32(a[c], ka, acc[c])
        i += m


@_jit
def fma_cols(out: np.ndarray, pad: np.ndarray, k: np.ndarray) -> None:  # pragma: no cover
    # out[c] = fma(pad[c + i], k[i], out[c]) for i = 1, 2, ... in order, four taps per sweep
    w = out.shape[0]
    nk = k.shape[0]
    i = 1
    while i < nk:
        m = min(4, nk - i)
        a, ka = pad[i : i + w], k[i]
        if m == 4:
            b, c_, d = pad[i + 1 : i + 1 + w], pad[i + 2 : i + 2 + w], pad[i + 3 : i + 3 + w]
            kb, kc, kd = k[i + 1], k[i + 2], k[i + 3]
            for c in range(w):
                out[c] = fma32(d[c], kd, fma32(c_[c], kc, fma32(b[c], kb, fma32(a[c], ka, out[c]))))
        elif m == 3:
            b, c_ = pad[i + 1 : i + 1 + w], pad[i + 2 : i + 2 + w]
            kb, kc = k[i + 1], k[i + 2]
            for c in range(w):
                out[c] = fma32(c_[c], kc, fma32(b[c], kb, fma32(a[c], ka, out[c])))
        elif m == 2:
            b = pad[i + 1 : i + 1 + w]
            kb = k[i + 1]
            for c in range(w):
                out[c] = fma32(b[c], kb, fma32(a[c], ka, out[c]))
        else:
            for c in range(w):
                out[c] = fma32(a[c], ka, out[c])
        i += m


@_jit
def blur(src: np.ndarray, dst: np.ndarray, k: np.ndarray, mode: int) -> None:  # pragma: no cover
    # src, dst: float32 [P, H, W]; k: float32 taps (odd length); edge-replicated borders.
    # mode 0: plain; 1: quantize_u8; 2: clamp to [0, 1]; 3: clamp to [0, 1], then quantize_u8
    planes, h, w = src.shape
    nk = k.shape[0]
    r = (nk - 1) // 2
    pad = np.empty(w + 2 * r, np.float32)  # one row blurred along the rows, edge-padded
    rows = np.empty(nk, np.int64)
    k0 = k[0]
    add = np.float32(1e-3)
    s255 = np.float32(255.0)
    lo, hi = np.float32(1e-3), np.float32(255.0 + 1e-3)
    zero, one = np.float32(0.0), np.float32(1.0)
    for p in range(planes):
        plane = src[p]
        for row in range(h):
            for i in range(nk):
                rows[i] = min(max(row - r + i, 0), h - 1)
            first, mid = plane[rows[0]], pad[r : r + w]
            for c in range(w):
                mid[c] = first[c] * k0
            fma_rows(mid, plane, rows, k)
            left, right = pad[r], pad[r + w - 1]
            for c in range(r):
                pad[c] = left
                pad[r + w + c] = right
            out = dst[p, row]
            for c in range(w):
                out[c] = pad[c] * k0
            fma_cols(out, pad, k)
            if mode >= 2:
                for c in range(w):
                    out[c] = _clamp(out[c], zero, one)
            if mode & 1:  # quantize_u8: fma(x, 255, 1e-3), clamp, floor, / 255
                for c in range(w):
                    v = _clamp(fma32(out[c], s255, add), lo, hi)
                    out[c] = np.floor(v) / s255


@_jit
def offsets(u: np.ndarray, delta: int, w: int, off: np.ndarray) -> None:  # pragma: no cover
    # off[e, i, j]: flat offset (dy * W + dx) of the source of visited pixel (i, j), from the
    # uniform u[e, i, j] by the torch path's float32 steps
    n, hr, wr = u.shape
    two = np.float32(2 * delta)
    cap = np.float32(2 * delta - 1)
    for e in range(n):
        for i in range(hr):
            ur, o = u[e, i], off[e, i]
            for j in range(wr):
                a = ur[j] * two
                ay = np.floor(a)
                fx = np.floor((a - ay) * two)
                o[j] = (np.int32(min(ay, cap)) - delta) * w + np.int32(min(fx, cap)) - delta


@_jit
def shuffle(y: np.ndarray, off: np.ndarray, delta: int) -> None:  # pragma: no cover
    # y: float32 [N, C, H, W], changed in place by the reference's sequential one-way copy
    n, ch, h, w = y.shape
    hr, wr = off.shape[1], off.shape[2]
    for e in range(n):
        img = y[e].reshape(ch, h * w)
        for i in range(hr - 1, -1, -1):  # rows H - delta .. delta + 1, columns likewise: descending
            o = off[e, i]
            base = (i + delta + 1) * w + delta + 1
            if ch == 3:
                p0, p1, p2 = img[0], img[1], img[2]
                for j in range(wr - 1, -1, -1):
                    q = base + j
                    src = q + o[j]
                    p0[q] = p0[src]
                    p1[q] = p1[src]
                    p2[q] = p2[src]
            else:
                for j in range(wr - 1, -1, -1):
                    q = base + j
                    src = q + o[j]
                    for k in range(ch):
                        img[k, q] = img[k, src]


@_jit
def quantize(src: np.ndarray, dst: np.ndarray) -> None:  # pragma: no cover
    # _ops.quantize_u8 on flat float32 arrays: fma(x, 255, 1e-3), clamp, floor, / 255
    add = np.float32(1e-3)
    s255 = np.float32(255.0)
    lo, hi = np.float32(1e-3), np.float32(255.0 + 1e-3)
    for i in range(src.shape[0]):
        dst[i] = np.floor(_clamp(fma32(src[i], s255, add), lo, hi)) / s255
