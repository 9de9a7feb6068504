"""Building blocks of the crafting benchmarks: sizes, the torchattacks peer, timing, the matmul peak, the cost model.

``suites/speed/bench_attacks.py`` (pytest-benchmark) and ``suites/gpu_check.py`` (the prepared GPU
check) both measure PGD on an ensemble with these, so their figures mean the same thing:

- **FLOPs** per member-image-step: one forward and one input gradient of one image through one
  member, measured with :mod:`robust_ens.bench.flops` (FlopCounterMode; the input-gradient backward
  is measured, about 1x the forward: ResNet-20 at 32 px is 81.6 + 81.6 MFLOP);
- **achieved GFLOP/s** = those FLOPs x members x images x steps / the attack's seconds;
- **the peak**: a square matmul in the same dtype, measured in the same run on the same device;
- **the dense-kernel split** (CPU): the share of a call's wall time spent inside convolution and
  matmul ops (the only ops whose FLOPs the cost model counts), from ``torch.profiler``'s self times.
  It bounds what any change outside those kernels can give: with every other pass (BatchNorm, ReLU,
  residual adds, casts, the loop's bookkeeping) at zero cost, the call would take the kernels' time.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from robust_ens import models
from robust_ens.bench import flops as _flops

T = TypeVar("T")
EPS, ALPHA = 8 / 255, 2 / 255

# (device, arch) -> full size, smoke size
SIZES: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {
    ("cpu", "resnet20"): ({"members": 4, "batch": 128, "steps": 10, "rounds": 3, "target": 2.0},
                          {"members": 2, "batch": 4, "steps": 2, "rounds": 1}),
    ("cuda", "resnet20"): ({"members": 8, "batch": 1024, "steps": 10, "rounds": 5, "target": 2.5},
                           {"members": 2, "batch": 8, "steps": 2, "rounds": 1}),
    ("cuda", "vit_b16"): ({"members": 4, "batch": 128, "steps": 10, "rounds": 3, "target": 7.0},
                          {"members": 2, "batch": 2, "steps": 2, "rounds": 1}),
}
# Side of a square matmul that reaches the device's peak (CPU: the 3072 at 2 threads).
PEAK_N = {"cpu": 3072, "cuda": 8192}
# ViT-B/16's configuration scaled down for a CPU test of the same code path (timm's same class).
TINY_VIT: dict[str, Any] = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


class LoopEnsemble(nn.Module):
    """What a torchattacks user writes: mean of the members' logits, one member after another."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def member(arch: str, *, tiny: bool = False) -> nn.Module:
    """One randomly initialized member: ``resnet20`` (robust-ens) or ``vit_b16`` (timm ViT-B/16;
    ``tiny``: the same timm class at 32 px, 2 blocks of width 32)."""
    if arch == "vit_b16":
        import timm

        return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10, **(TINY_VIT if tiny else {}))
    return models.create(arch, num_classes=10)


def image_side(arch: str, *, tiny: bool = False) -> int:
    """The input side the benchmark uses for ``arch``."""
    return 224 if arch == "vit_b16" and not tiny else 32


def sync(device: torch.device | str) -> None:
    """Wait for the device (CUDA work is asynchronous; timing without this measures the launch)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device | str) -> tuple[float, T]:
    """``fn()``'s wall seconds, the device synchronized before and after, and its result."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def median_seconds(fn: Callable[[], Any], device: torch.device | str, rounds: int) -> float:
    """The median of ``rounds`` timed calls."""
    return statistics.median(timed(fn, device)[0] for _ in range(max(rounds, 1)))


def matmul_peak(device: torch.device | str, dtype: torch.dtype, n: int | None = None, reps: int = 0) -> float:
    """GFLOP/s of an ``n`` x ``n`` matmul in ``dtype`` (``2 n^3`` FLOPs each), the best of a few timed batches.

    ``n`` defaults to :data:`PEAK_N` of the device type; ``reps`` (matmuls per timed batch) to
    about 0.1 s of work at the device's order of magnitude.
    """
    dev = torch.device(device)
    n = n or PEAK_N[dev.type]
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=dev).to(dtype)
    b = torch.randn(n, n, generator=g, device=dev).to(dtype)
    work = 2.0 * n ** 3
    reps = reps or min(1000, max(1, int((5e13 if dev.type == "cuda" else 2e10) // work)))
    c = a @ b  # warm-up: library handles, kernel choice; then every product is written into c (none is kept)

    def products() -> None:
        for _ in range(reps):
            torch.matmul(a, b, out=c)

    best = min(timed(products, dev)[0] for _ in range(3))
    return work * reps / best / 1e9


@dataclass(frozen=True)
class CostModel:
    """What one PGD round costs: FLOPs per member-image-step (a forward and an input gradient) and in all."""

    flops_per_member_image_step: float
    members: int
    batch: int
    steps: int

    @classmethod
    def of(cls, members: list[nn.Module], input_shape: tuple[int, ...], batch: int, steps: int,
           device: torch.device | str) -> CostModel:
        """Measured on one image per member (:func:`robust_ens.bench.flops.model_flops`)."""
        per = [_flops.model_flops(m, input_shape, device).step for m in members]
        return cls(sum(per) / len(per), len(members), batch, steps)

    @property
    def flops(self) -> float:
        """FLOPs of one round: members x images x steps x (forward + input gradient)."""
        return self.flops_per_member_image_step * self.members * self.batch * self.steps

    def gflops_per_s(self, seconds: float) -> float:
        """The achieved rate of a round that took ``seconds``."""
        return self.flops / seconds / 1e9

    def line(self, name: str, seconds: float, peak_gflops: float | None = None, peak_name: str = "") -> str:
        """``name: 163.3 MFLOP per member-image-step, 123.4 GFLOP/s (45% of the bf16 matmul peak 270.1 GFLOP/s)``."""
        rate = self.gflops_per_s(seconds)
        out = f"{name}: {self.flops_per_member_image_step / 1e6:.1f} MFLOP per member-image-step, {rate:.1f} GFLOP/s"
        if peak_gflops:
            out += f" ({100 * rate / peak_gflops:.0f}% of the {peak_name} matmul peak {peak_gflops:.1f} GFLOP/s)"
        return out


# Convolution and matmul ops (aten's and the oneDNN fusions inductor calls), wrappers included: the
# wrappers' self time is their dispatch, the kernels' self time the compute.
DENSE_OP = re.compile(r"(aten|mkldnn)::(\w*(convolution|conv[123]d|conv_dilated[23]d)\w*|addmm|mm|bmm|matmul|linear"
                      r"|_linear_pointwise)")


@dataclass(frozen=True)
class DenseSplit:
    """A call's wall seconds under ``torch.profiler`` and the self seconds of its convolution and matmul ops."""

    dense_s: float
    wall_s: float

    @property
    def share(self) -> float:
        """The part of the wall time spent in convolution and matmul ops."""
        return self.dense_s / self.wall_s

    def gflops_per_s(self, flops: float) -> float:
        """The dense kernels' own rate when the call does ``flops`` (all of them in those kernels)."""
        return flops / self.dense_s / 1e9


def dense_split(fn: Callable[[], Any]) -> DenseSplit:
    """Run ``fn`` once on the CPU under ``torch.profiler``: its wall time and the dense ops' self time.

    Raises:
        RuntimeError: no op matched :data:`DENSE_OP` (torch renamed its convolution ops: the split
            would read 0%, a number that looks like a finding).
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall, _ = timed(fn, "cpu")
    dense = sum(e.self_cpu_time_total for e in prof.key_averages() if DENSE_OP.fullmatch(e.key)) / 1e6
    if dense <= 0:
        names = sorted({e.key for e in prof.key_averages()})[:20]
        raise RuntimeError(f"no convolution or matmul op under the profiler; update DENSE_OP (ops seen: {names})")
    return DenseSplit(dense, wall)


__all__ = ["ALPHA", "DENSE_OP", "EPS", "PEAK_N", "SIZES", "TINY_VIT", "CostModel", "DenseSplit", "LoopEnsemble",
           "dense_split", "image_side", "matmul_peak", "median_seconds", "member", "sync", "timed"]
