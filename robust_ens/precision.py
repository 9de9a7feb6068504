"""Precision policy shared by the ensemble runtime, attacks and training.

``"auto"`` means bf16 autocast + channels_last where the hardware computes bf16 natively (CUDA
GPUs with bf16 support, CPUs with AVX512-BF16 or AMX), fp32 elsewhere. fp32 always stays
available and is what correctness tests compare against.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Literal

import torch

from robust_ens.errors import RobustEnsError

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX-BF16 instructions (read from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve(precision: str, device: torch.device | str) -> Literal["fp32", "bf16"]:
    """Turn ``"auto"`` into ``"fp32"`` or ``"bf16"`` for ``device``; validate the name."""
    if precision not in PRECISIONS:
        raise RobustEnsError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision  # type: ignore[return-value]
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if dev.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Autocast to bf16 when ``resolve(precision, device) == "bf16"``, else do nothing."""
    dev = torch.device(device)
    if resolve(precision, dev) == "bf16":
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            yield
    else:
        yield
