"""Benchmark: a packed ensemble's batched forward against a loop over its members, in one run.

``PackedEnsemble.member_logits`` runs all M members in one pass over a batch repeated M times
(BatchEnsemble's vectorized form: adapters scale activations, one shared convolution);
``member_logits_loop`` runs member after member with each member's adapters folded into its
kernels (what M separate networks compute). Both give the same ``[M, N, K]`` (checked here). The
test times both in the same process, from the same weights, and records both times, their ratio
``loop / batched`` (> 1: batching wins) and the largest difference in ``benchmark.extra_info``;
it also times M independent ResNet-20s in an ``Ensemble`` (the full ensemble the packed one
replaces) and the forward + input-gradient pass an attack step costs.

Full size (``pytest suites/speed/bench_packed.py --benchmark``): packed ResNet-20 with 4 and 6
members, batch 128 on a CPU (1024 on a GPU), the ensemble's precision policy (``"auto"``: bf16
where the hardware has it) and fp32. Smoke size (``make test``): 2 members, batch 4, fp32.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from robust_ens import Ensemble, models
from robust_ens.device import default_device

DEVICE = str(default_device())


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after one warm-up run (device synchronized)."""
    fn()
    _sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _size(full: bool, members: int) -> dict[str, Any]:
    if full:
        return {"members": members, "batch": 1024 if DEVICE == "cuda" else 128, "reps": 3}
    return {"members": 2, "batch": 4, "reps": 1}


@pytest.mark.parametrize("members", [4, 6])
@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_packed_batched_vs_loop(benchmark, full_benchmark, members, precision):
    size = _size(full_benchmark, members)
    if not full_benchmark and (members != 4 or precision != "fp32"):
        pytest.skip("smoke size runs one configuration")
    m = size["members"]
    torch.manual_seed(0)
    ens = models.create("packed:resnet20", members=m, seed=0).to(DEVICE).eval()
    ens.precision = precision
    torch.manual_seed(0)
    full = Ensemble([models.create("resnet20") for _ in range(m)], precision=precision).to(DEVICE).eval()
    x = torch.rand(size["batch"], 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    with torch.no_grad():
        ref = ens.member_logits_loop(x)
        diff = float((ens.member_logits(x) - ref).abs().max())
        scale = float(ref.abs().max())
        t_loop = _time(lambda: ens.member_logits_loop(x), size["reps"])
        t_full = _time(lambda: full.member_logits(x), size["reps"])

        def batched() -> torch.Tensor:
            out = ens.member_logits(x)
            _sync()
            return out

        benchmark.pedantic(batched, rounds=size["reps"], iterations=1, warmup_rounds=1)
        t_batched = _time(batched, size["reps"])

    def grad_of(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(fn(xg).sum(), xg)
            return g

        return run

    g_batched = _time(grad_of(ens.member_logits), size["reps"])
    g_loop = _time(grad_of(ens.member_logits_loop), size["reps"])
    benchmark.extra_info.update({
        "device": DEVICE if DEVICE == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(), "members": m, "batch": size["batch"],
        "precision": ens.resolved_precision(x.device),
        "batched_s": t_batched, "loop_s": t_loop, "ratio_loop_over_batched": t_loop / t_batched,
        "full_ensemble_s": t_full, "ratio_full_over_batched": t_full / t_batched,
        "grad_batched_s": g_batched, "grad_loop_s": g_loop, "grad_ratio_loop_over_batched": g_loop / g_batched,
        "max_abs_diff": diff,
        "parameters_packed": sum(p.numel() for p in ens.parameters()),
        "parameters_full": sum(p.numel() for p in full.parameters()),
    })
    # fp32: the same numbers (random-sign adapters even make them bit-identical); bf16: rounding.
    tol = 1e-4 if ens.resolved_precision(x.device) == "fp32" else 0.05 * scale
    assert diff <= tol, (diff, scale)
