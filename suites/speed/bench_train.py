"""Training throughput of ResNet-20 on this machine: fp32 vs bf16 + channels_last, and ``fit`` vs a plain loop.

``pytest suites/speed/bench_train.py --benchmark -s`` runs two tests at full size; without
``--benchmark`` the same code runs once at a tiny size, on one torch thread, as a smoke test.

* ``test_resnet20_train_throughput`` times one epoch of :func:`~robust_ens.train.fit` (512 images,
  batch 128) in both precisions and records the bf16/fp32 speed ratio in ``extra_info``.
* ``test_fit_vs_plain_loop`` (issue 27, goal 2: ``fit`` at least 1.3x the plain loop) times one
  epoch of ``fit`` in bf16 (skipped on a CPU without native bf16) against the loop a PyTorch user
  writes for the same work: SGD with TrainConfig's momentum, Nesterov, rate and weight decay, the
  per-iteration cosine rate, ``torch.autocast("cpu", dtype=torch.bfloat16)``, members and batches
  channels_last, the same batch size, the same uint8 -> [0, 1] conversion and the same crop and
  flip (:func:`~robust_ens.train.augment_batch`, fit's default augmentation). One ResNet-20, and
  three trained together as ``fit`` trains a dict of models: one optimizer over all parameters and
  one joint loss, the sum of the members' cross-entropies (the baseline defense's step). The peer
  runs interleaved with ``fit`` in pytest-benchmark's untimed setup, every round of both from the
  same weights. Recorded (``extra_info``, printed with ``-s``): images/s of both, the ratio
  ``fit / peer`` (> 1: fit is faster), training FLOPs per member-image (forward + backward with
  weight gradients, measured with FlopCounterMode on one training step), the GFLOP/s of both and
  their share of a bf16 matmul's GFLOP/s measured in the same run (:func:`suites.speed.crafting.matmul_peak`).
  Then one more epoch of ``fit`` runs under ``torch.profiler`` (:func:`suites.speed.crafting.dense_split`):
  the share of it spent in convolution and matmul kernels, their own GFLOP/s, and the ceiling that
  split sets: the plain loop's time over the kernels' time, what ``fit`` would reach against the
  plain loop if BatchNorm, ReLU, adds, casts and the optimizer cost nothing.
  No assertion on time; at smoke size it also checks, in fp32, that the plain loop trains the very
  same weights as ``fit`` (so the two do the same work).

Full size: 512 images per epoch, batch 128, 3 rounds (median), torch's default threads
(``OMP_NUM_THREADS`` chooses). Smoke size: 16 images, batch 8, one round.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from robust_ens import models
from robust_ens.defenses.base import DEFENSES, make_params
from robust_ens.precision import resolve
from robust_ens.train import TrainConfig, _epoch_generator, augment_batch, cross_entropy_step, fit
from suites.speed.crafting import DenseSplit, dense_split, matmul_peak

_RESULTS: dict[str, float] = {}
SMOKE_PEAK_N = 256  # smoke size: the same peak measurement, at a size that takes milliseconds


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


# --------------------------------------------------------------------------- fit vs the plain loop


@pytest.fixture(scope="module")
def bf16_peak(full_benchmark: bool, threads: int) -> float:
    """GFLOP/s of a bf16 matmul on this CPU, measured in this run."""
    return matmul_peak("cpu", torch.bfloat16, None if full_benchmark else SMOKE_PEAK_N)


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def train_flops_per_image(model: nn.Module, side: int = 32) -> float:
    """FLOPs of one training step per image: forward, cross-entropy and backward with weight gradients.

    FlopCounterMode on a copy of ``model`` in train mode (the model itself is not touched) with a
    batch of 2 (BatchNorm in train mode needs more than one value per channel), halved.
    """
    m = copy.deepcopy(model).train()
    x = torch.full((2, 3, side, side), 0.5)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(m(x), torch.zeros(2, dtype=torch.long)).backward()
    return float(counter.get_total_flops()) / 2


def plain_loop(members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> float:
    """One epoch the way a PyTorch user writes it (bf16 autocast + channels_last when ``cfg.precision``
    is ``"bf16"``); the sum of the epoch's losses.

    The same work as ``fit`` on a one-epoch run (``cfg.epochs == 1``): the batch order, crops and
    flips come from the generator fit seeds for (seed, epoch 0), and the rate follows the same
    per-iteration cosine.
    """
    bf16 = cfg.precision == "bf16"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    for m in members:
        m.to(memory_format=fmt).train()
    params = [p for m in members for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    gen = _epoch_generator(cfg.seed, 0)
    steps = math.ceil(len(x) / cfg.batch_size)
    perm = torch.randperm(len(x), generator=gen)
    total = 0.0
    for b in range(steps):
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        xb = augment_batch(x[idx].float().div_(255.0), cfg.crop_padding, cfg.flip, gen)
        xb = xb.contiguous(memory_format=fmt)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * b / steps))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(F.cross_entropy(m(xb).float(), y[idx]) for m in members)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
    return total


def _fit(members: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> Any:
    """``fit`` on one model (cross-entropy) or several trained jointly (the baseline defense's summed cross-entropy)."""
    if len(members) == 1:
        step = cross_entropy_step(members[0])
    else:
        spec = DEFENSES.get("baseline")
        step = spec.make_step(members, make_params(spec.params_cls, {}, "baseline"), cfg)
    return fit({f"m{i}": m for i, m in enumerate(members)}, step, x, y, cfg, device="cpu", progress=False)


def _same_weights_as_fit(start: list[nn.Module], x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> None:
    """In fp32 the plain loop trains bit-identical weights (and BatchNorm statistics) to ``fit``'s."""
    cfg32 = cfg.replace(precision="fp32")
    ours, peer = copy.deepcopy(start), copy.deepcopy(start)
    _fit(ours, x, y, cfg32)
    plain_loop(peer, x, y, cfg32)
    for a, b in zip(ours, peer, strict=True):
        for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(ta, tb), f"the plain loop and fit differ in {name}"


@pytest.mark.parametrize("members", [1, 3])
def test_fit_vs_plain_loop(benchmark: Any, full_benchmark: bool, threads: int, bf16_peak: float, members: int) -> None:
    if resolve("auto", "cpu") != "bf16":
        pytest.skip("this CPU has no native bf16")
    n, batch, rounds = (512, 128, 3) if full_benchmark else (16, 8, 1)
    x, y = _data(n)
    torch.manual_seed(0)
    start = [models.create("resnet20", num_classes=10) for _ in range(members)]
    cfg = TrainConfig(epochs=1, batch_size=batch, precision="bf16")
    if not full_benchmark:
        _same_weights_as_fit(start, x, y, cfg)
    _fit(copy.deepcopy(start), x[:batch], y[:batch], cfg)  # warm-up: oneDNN primitives of both layouts
    plain_loop(copy.deepcopy(start), x[:batch], y[:batch], cfg)
    fit_times: list[float] = []
    peer_times: list[float] = []

    def run_peer() -> tuple[tuple[list[nn.Module]], dict[str, Any]]:  # untimed setup: the peer, then fresh members
        ms = copy.deepcopy(start)
        t0 = time.perf_counter()
        loss = plain_loop(ms, x, y, cfg)
        peer_times.append(time.perf_counter() - t0)
        assert math.isfinite(loss)
        return (copy.deepcopy(start),), {}

    def ours(ms: list[nn.Module]) -> Any:
        t0 = time.perf_counter()
        res = _fit(ms, x, y, cfg)
        fit_times.append(time.perf_counter() - t0)
        return res

    res = benchmark.pedantic(ours, setup=run_peer, rounds=rounds, iterations=1, warmup_rounds=0)
    assert res.history[0]["loss"] > 0
    profiled = copy.deepcopy(start)
    split = dense_split(lambda: _fit(profiled, x, y, cfg))
    assert 0 < split.dense_s <= split.wall_s, split
    _record(benchmark, members, n, batch, statistics.median(fit_times), statistics.median(peer_times),
            train_flops_per_image(start[0]), bf16_peak, threads, split)


def _record(benchmark: Any, members: int, n: int, batch: int, fit_s: float, peer_s: float, flops: float,
            peak: float, threads: int, split: DenseSplit) -> None:
    """Images/s, the ratio, GFLOP/s and share of the bf16 matmul peak of both, the dense-kernel split
    of ``fit`` and the ceiling it sets, in extra_info and printed."""
    rate = {k: flops * members * n / s / 1e9 for k, s in (("fit", fit_s), ("peer", peer_s))}
    kernels = split.gflops_per_s(flops * members * n)
    benchmark.extra_info.update({
        "model": f"{members}x resnet20", "precision": "bf16+channels_last", "device": "cpu", "torch_threads": threads,
        "images": n, "batch": batch, "fit_img_per_s": n / fit_s, "plain_loop_img_per_s": n / peer_s,
        "fit_over_plain_loop": peer_s / fit_s, "target": ">= 1.3x",
        "train_flops_per_member_image": flops, "bf16_matmul_peak_gflops_per_s": peak,
        "fit_gflops_per_s": rate["fit"], "plain_loop_gflops_per_s": rate["peer"],
        "fit_share_of_bf16_peak": rate["fit"] / peak, "plain_loop_share_of_bf16_peak": rate["peer"] / peak,
        "fit_dense_kernel_share": split.share, "dense_kernel_gflops_per_s": kernels,
        "dense_kernel_share_of_bf16_peak": kernels / peak, "ceiling_over_plain_loop": peer_s / split.dense_s,
    })
    print(f"\n{members}x ResNet-20, bf16+channels_last, batch {batch}, {n} images, {threads} thread(s); "
          f"{flops / 1e6:.1f} MFLOP per member-image (forward + backward)")
    for name, key, s in (("fit", "fit", fit_s), ("plain loop", "peer", peer_s)):
        print(f"  {name}: {n / s:.1f} img/s, {rate[key]:.1f} GFLOP/s "
              f"({100 * rate[key] / peak:.0f}% of the bf16 matmul peak {peak:.1f} GFLOP/s)")
    print(f"  fit / plain loop: {peer_s / fit_s:.2f}x (target >= 1.3x)")
    print(f"  fit under torch.profiler: convolutions and matmuls {100 * split.share:.0f}% of its time "
          f"({split.dense_s:.3f} of {split.wall_s:.3f} s), at {kernels:.1f} GFLOP/s ({100 * kernels / peak:.0f}% of the "
          f"peak); with every other pass at zero cost, fit would be at most {peer_s / split.dense_s:.2f}x the plain loop")
