"""Keep freed tensor memory in the process on Linux (glibc): no page fault per activation.

Why: torch's CPU tensors come from glibc's ``malloc``. A block above glibc's mmap threshold (128 KiB
at first, adjusted as blocks are freed) is mapped fresh from the kernel and unmapped on free, and
the heap's free top is trimmed back to the kernel; every such block is then zero-filled page by page
on its first touch. An attack step allocates and frees every activation of every member
(4 x ResNet-20 at batch 128: 2-8 MiB tensors), so a bf16 PGD-10 took about 120,000 page faults per
call on a 2-core EPYC, and its elementwise passes ran at a third of their speed in isolation.

:func:`keep_freed_memory` raises the mmap threshold to 32 MiB, the trim threshold to 1 GiB and the
heap's top pad to 256 MiB (``mallopt``): freed blocks are reused instead of returned. Measured on
that machine, in one run each way, three calls each: page faults per call 128,000 -> 900 and the
call 6-9% faster (2.97 -> 2.82 s, 3.02 -> 2.79 s). The price is memory: up to 1 GiB that the
process has freed stays mapped to it. Numbers never change (only where memory comes from).

``import robust_ens`` applies it once, unless ``ROBUST_ENS_MALLOC=0`` (or ``off``), or the user set
glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` (their
choice stands). Elsewhere (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: Environment variable: ``0``/``off`` leaves glibc's allocator as it is.
ENV_MALLOC = "ROBUST_ENS_MALLOC"
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
# glibc's mallopt parameters (malloc.h) and the values set.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 256 << 20}

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt`` once per process; whether they are in force.

    Returns:
        ``True`` when the settings were applied (now or before), ``False`` when they were not: not
        glibc, turned off by :data:`ENV_MALLOC`, or the user set glibc's own variables.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_MALLOC, "1").strip().lower() in ("0", "off", "no", "false"):
        return False
    if any(k in os.environ for k in _GLIBC_ENV) or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _applied


__all__ = ["ENV_MALLOC", "SETTINGS", "keep_freed_memory"]
