"""Benchmark: one training epoch of each ensemble defense, and DVERGE's batched vs looped distillation.

DVERGE dominates training cost: per batch, N distillations of 10 steps plus N(N-1) training
passes. ``test_dverge_epoch`` times one epoch with the members' distillations advanced in lock step
(``distill_mode="batched"``: one autograd call per step for all members) and with the
straightforward per-member loop (``"loop"``), in the same run and from the same weights, and
records both times, their ratio and the largest weight difference in ``benchmark.extra_info``.
``test_defense_epoch`` times one epoch of every defense.

Full size (``pytest suites/speed/bench_defenses.py --benchmark``): 3 x ResNet-20 at batch 128 on
CIFAR-shaped data, one epoch of 50,000 images on a GPU or 512 on a CPU; bf16 where the hardware
has it (``precision="auto"``). Smoke size (``make test``): 2 x ResNet-20, 16 images, batch 8,
2 distillation steps, fp32.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import torch

from robust_ens import models
from robust_ens.defenses.base import DEFENSES, make_params
from robust_ens.device import default_device
from robust_ens.train import TrainConfig, fit

DEVICE = str(default_device())


def _size(full: bool) -> dict[str, Any]:
    if full:
        return {"members": 3, "n": 50_000 if DEVICE == "cuda" else 512, "batch": 128, "steps": 10,
                "precision": "auto"}
    return {"members": 2, "n": 16, "batch": 8, "steps": 2, "precision": "fp32"}


def _members(k: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [models.create("resnet20", num_classes=10) for _ in range(k)]


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _epoch(name: str, members: list[torch.nn.Module], size: dict[str, Any], **params: Any) -> float:
    spec = DEFENSES.get(name)
    cfg = TrainConfig(epochs=1, batch_size=size["batch"], optimizer="sgd", lr=0.01, precision=size["precision"])
    p = make_params(spec.params_cls, params, name)
    x, y = _data(size["n"])
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fit({f"m{i}": m for i, m in enumerate(members)}, spec.make_step(members, p, cfg), x, y, cfg, device=DEVICE,
        progress=False, desc=name)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def test_dverge_epoch_batched_vs_loop(benchmark, full_benchmark):
    size = _size(full_benchmark)
    start = _members(size["members"])
    times: dict[str, float] = {}
    trained: dict[str, list[torch.nn.Module]] = {}

    def run(mode: str) -> None:
        ms = copy.deepcopy(start)
        times[mode] = _epoch("dverge", ms, size, steps=size["steps"], distill_mode=mode,
                             layer="net.layer2.1.act2:in")
        trained[mode] = ms

    run("loop")
    benchmark.pedantic(run, args=("batched",), rounds=1, iterations=1)
    diff = max(
        float((a - b).detach().abs().max())
        for ma, mb in zip(trained["batched"], trained["loop"], strict=True)
        for a, b in zip(ma.parameters(), mb.parameters(), strict=True)
    )
    benchmark.extra_info.update({
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "images": size["n"],
        "members": size["members"], "batch": size["batch"], "distill_steps": size["steps"],
        "batched_s": round(times["batched"], 3), "loop_s": round(times["loop"], 3),
        "speedup": round(times["loop"] / times["batched"], 3), "max_weight_diff": diff,
    })
    # Same images up to float rounding of near-zero gradient signs: the weights barely differ.
    assert diff < 5e-2


@pytest.mark.parametrize("name", ["baseline", "adp", "gal", "trs", "dverge"])
def test_defense_epoch(benchmark, full_benchmark, name):
    size = _size(full_benchmark)
    params: dict[str, Any] = {"steps": size["steps"]} if name == "dverge" else {}
    seconds: list[float] = []
    benchmark.pedantic(lambda: seconds.append(_epoch(name, _members(size["members"]), size, **params)),
                       rounds=1, iterations=1)
    benchmark.extra_info.update({
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "images": size["n"],
        "members": size["members"], "epoch_s": round(seconds[0], 3),
        "images_per_s": round(size["n"] / seconds[0], 1),
    })
