"""Precision policy shared by the ensemble runtime, attacks and training.

``"auto"`` means bf16 autocast + channels_last where the hardware computes bf16 natively (CUDA
GPUs with bf16 support, CPUs with AVX512-BF16 or AMX), fp32 elsewhere. fp32 always stays
available and is what correctness tests compare against.

One default, chosen once: :data:`DEFAULT_PRECISION` (``"auto"``) is what an
:class:`~robust_ens.Ensemble`, training and the CLI use when the caller names no precision
(:func:`validate` turns ``None`` into it). A precision is fixed when the object that applies it is
built (``Ensemble(members, precision=...)``, ``TrainConfig(precision=...)``); for another precision
of an existing ensemble take a view (``ens.with_precision("fp32")``) rather than setting the
attribute. Committed benchmark numbers are measured in :data:`REFERENCE_PRECISION` (fp32), which
the engine passes explicitly. :func:`robust_ens.evaluation.predict` adds no precision of its own
unless asked: a model computes in the precision it was built with.
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

#: The library's one precision default: bf16 where the hardware computes it natively, else fp32.
DEFAULT_PRECISION: Precision = "auto"
#: The precision committed entries and correctness tests are measured in (the same on every device).
REFERENCE_PRECISION: Precision = "fp32"


def validate(precision: str | None = None) -> Precision:
    """The precision to store at construction: ``None`` -> :data:`DEFAULT_PRECISION`; names are checked.

    Raises:
        RobustEnsError: for a name outside :data:`PRECISIONS`.
    """
    if precision is None:
        return DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise RobustEnsError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision  # type: ignore[return-value]


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


def resolve(precision: str | None, device: torch.device | str) -> Literal["fp32", "bf16"]:
    """Turn ``"auto"`` (or ``None``: the default) into ``"fp32"`` or ``"bf16"`` for ``device``; validate the name."""
    name = validate(precision)
    if name != "auto":
        return name
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if dev.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


@contextlib.contextmanager
def autocast(precision: str | None, device: torch.device | str) -> Iterator[None]:
    """Autocast to bf16 when ``resolve(precision, device) == "bf16"``, else do nothing."""
    dev = torch.device(device)
    if resolve(precision, dev) == "bf16":
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            yield
    else:
        yield
