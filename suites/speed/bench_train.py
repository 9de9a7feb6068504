"""Training throughput of ResNet-20 on this machine: fp32 vs bf16 + channels_last.

``pytest suites/speed/bench_train.py --benchmark`` times one training step at batch 128 in both
precisions and records the bf16/fp32 speed ratio in ``extra_info``; without ``--benchmark`` the
same code runs once at a tiny size as a smoke test.
"""

from __future__ import annotations

import pytest
import torch

from robust_ens import models
from robust_ens.precision import resolve
from robust_ens.train import TrainConfig, cross_entropy_step, fit

_RESULTS: dict[str, float] = {}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resnet20_train_throughput(benchmark, full_benchmark, precision):
    if precision == "bf16" and resolve("auto", "cpu") != "bf16":
        pytest.skip("this CPU has no native bf16")
    n = 512 if full_benchmark else 32
    batch = 128 if full_benchmark else 16
    torch.manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    model = models.create("resnet20")
    cfg = TrainConfig(epochs=1, batch_size=batch, precision=precision)

    def one_epoch():
        return fit({"m": model}, cross_entropy_step(model), x, y, cfg, device="cpu", progress=False)

    res = benchmark.pedantic(one_epoch, rounds=3 if full_benchmark else 1, iterations=1, warmup_rounds=1 if full_benchmark else 0)
    assert res.history[0]["loss"] > 0
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        ips = n / stats.stats.median
        _RESULTS[precision] = ips
        benchmark.extra_info["images_per_second"] = ips
        if "fp32" in _RESULTS and precision == "bf16":
            benchmark.extra_info["bf16_over_fp32"] = ips / _RESULTS["fp32"]
