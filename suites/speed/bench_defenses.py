"""Benchmark: one training epoch of each ensemble defense, and DVERGE's batched vs looped distillation.

DVERGE dominates training cost: per batch, N distillations of 10 steps plus N(N-1) training
passes. ``test_dverge_epoch`` times one epoch with the members' distillations advanced in lock step
(``distill_mode="batched"``: one autograd call per step for all members) and with the
straightforward per-member loop (``"loop"``), in the same run and from the same weights, and
records both times, their ratio and the largest weight difference in ``benchmark.extra_info``.
``test_defense_epoch`` times one epoch of every defense. ``test_defense_step_profile`` runs one
training step of DVERGE and of TRS under ``torch.profiler`` with ``record_function`` regions around
the step's parts (the defense's functions and :func:`robust_ens.train.optimizer_step`'s phases,
wrapped by this test: the library is unchanged) and prints (``-s``) and records the split of the
step's wall time: DVERGE's feature distillation (all members in lock step; per member: its
share / members), cross-training forward and backward, optimizer; TRS's forward with input
gradients (CE and the cos term), smoothness PGD, smoothness input gradients, backward (with the
part spent in second-order autograd nodes: the double backward of the gradient terms), optimizer;
and the rest (augmentation, setup, batch gather, metrics).

Full size (``pytest suites/speed/bench_defenses.py --benchmark``): 3 x ResNet-20 at batch 128 on
CIFAR-shaped data, one epoch of 50,000 images on a GPU or 512 on a CPU; bf16 where the hardware
has it (``precision="auto"``); the profile: one step of that size, TRS with its 6 PGD steps. Smoke
size (``make test``): 2 x ResNet-20, 16 images, batch 8, 2 distillation steps (2 TRS PGD steps), fp32.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import importlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

import robust_ens.train as train_module
from robust_ens import models
from robust_ens.defenses.base import DEFENSES, make_params
from robust_ens.device import default_device
from robust_ens.precision import resolve
from robust_ens.train import TrainConfig, fit
from suites.speed.crafting import sync

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


# --------------------------------------------------------------------------- where a defense step's time goes

STEP = "step function"
BACKWARD = "backward"
# Per defense: the functions its step calls, each wrapped in record_function regions (labels of the
# 1st, 2nd, ... call within a step; the last one repeats), and what the rest of its step does.
_PHASES: dict[str, dict[str, Any]] = {
    "dverge": {
        "patch": [("robust_ens.defenses.dverge", "distill_features", ("feature distillation (all members)",)),
                  ("robust_ens.defenses.dverge", "dverge_loss", ("cross-training forward (all pairs)",))],
        "rest": "rest of the step (target order, layer draw)",
    },
    "trs": {
        "patch": [("robust_ens.defenses.trs", "input_gradients", ("forward + input gradients (CE, cos term)",
                                                                 "smoothness input gradients (2nd forward)")),
                  ("robust_ens.defenses.trs", "magnitude_pgd", ("smoothness PGD (gradient-magnitude attack)",))],
        "rest": "rest of the step (cos/magnitude terms, accuracy pass)",
    },
}


@contextlib.contextmanager
def _region(name: str) -> Iterator[None]:
    """A ``record_function`` region; on CUDA the device is synchronized before it closes (wall time)."""
    with record_function(name):
        yield
        if DEVICE == "cuda":
            torch.cuda.synchronize()


def _labelled(fn: Callable[..., Any], labels: tuple[str, ...], calls: collections.Counter[str]) -> Callable[..., Any]:
    """``fn`` with each call inside a region named by its index within the step (``calls`` counts)."""
    key = f"{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        i = calls[key]
        calls[key] += 1
        with _region(labels[min(i, len(labels) - 1)]):
            return fn(*args, **kwargs)

    return wrapper


def _labelled_optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: Any,
                             grad_clip: float | None) -> None:
    """:func:`robust_ens.train.optimizer_step`, phase by phase."""
    with _region("zero_grad"):
        optimizer.zero_grad(set_to_none=True)
    with _region(BACKWARD):
        loss.backward()
    if grad_clip:
        with _region("gradient clipping"):
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
    with _region("optimizer step"):
        optimizer.step()


def _events(prof: Any) -> list[tuple[str, int, int]]:
    """(name, start ns, end ns) of every profiled op and region.

    The raw events where this torch exposes them: building ``prof.events()`` takes seconds for
    the 50,000 ops of a smoke-size TRS step, reading the raw ones milliseconds.
    """
    raw = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if raw is not None:
        return [(e.name(), e.start_ns(), e.start_ns() + e.duration_ns()) for e in raw.events()]
    return [(e.name, int(e.time_range.start * 1000), int(e.time_range.end * 1000)) for e in prof.events()]


def _phase_table(prof: Any, name: str, wall: float) -> list[tuple[str, float]]:
    """(phase, seconds) rows from the profiler's regions: the step's parts, backward, optimizer, other."""
    inner = [label for _, _, labels in _PHASES[name]["patch"] for label in labels]
    top = ["augmentation", STEP, "zero_grad", BACKWARD, "gradient clipping", "optimizer step"]
    secs = dict.fromkeys(top + inner, 0.0)
    spans: list[tuple[int, int]] = []
    events = _events(prof)
    for label, start, end in events:
        if label in secs:
            secs[label] += (end - start) / 1e9
            if label == BACKWARD:
                spans.append((start, end))
    # second-order autograd nodes (``*BackwardBackward*``) inside the training backward: the double backward
    double = sum((end - start) / 1e9 for label, start, end in events
                 if label.startswith("autograd::engine::evaluate_function") and "BackwardBackward" in label
                 and any(s <= start < t for s, t in spans))
    rows = [("augmentation", secs["augmentation"])] + [(label, secs[label]) for label in inner]
    rows.append((_PHASES[name]["rest"], secs[STEP] - sum(secs[label] for label in inner)))
    rows.append((BACKWARD, secs[BACKWARD]))
    if double:
        rows.append(("  of which double-backward nodes", double))
    rows += [(k, secs[k]) for k in ("zero_grad", "gradient clipping", "optimizer step") if k != "gradient clipping" or secs[k]]
    rows.append(("other (setup, batch gather, rate, metrics)", wall - sum(secs[k] for k in top)))
    return rows


@pytest.mark.parametrize("name", ["dverge", "trs"])
def test_defense_step_profile(benchmark, full_benchmark, monkeypatch, name):
    """One training step of DVERGE and of TRS under torch.profiler, its wall time split by phase (``-s`` prints it)."""
    size = _size(full_benchmark)
    params: dict[str, Any] = {"steps": size["steps"]} if name == "dverge" else {"adv_steps": 6 if full_benchmark else 2}
    calls: collections.Counter[str] = collections.Counter()
    for module, fn_name, labels in _PHASES[name]["patch"]:
        mod = importlib.import_module(module)
        monkeypatch.setattr(mod, fn_name, _labelled(getattr(mod, fn_name), labels, calls))
    monkeypatch.setattr(train_module, "augment_batch", _labelled(train_module.augment_batch, ("augmentation",), calls))
    monkeypatch.setattr(train_module, "optimizer_step", _labelled_optimizer_step)
    spec = DEFENSES.get(name)
    cfg = TrainConfig(epochs=1, batch_size=size["batch"], optimizer="sgd", lr=0.01, precision=size["precision"])
    p = make_params(spec.params_cls, params, name)
    x, y = _data(size["batch"])
    start = _members(size["members"])

    def one_step(members: list[torch.nn.Module]) -> float:
        step = spec.make_step(members, p, cfg)

        def labelled_step(xb: torch.Tensor, yb: torch.Tensor, ctx: Any) -> Any:
            calls.clear()
            with _region(STEP):
                return step(xb, yb, ctx)

        t0 = time.perf_counter()
        fit({f"m{i}": m for i, m in enumerate(members)}, labelled_step, x, y, cfg, device=DEVICE, progress=False)
        sync(DEVICE)
        return time.perf_counter() - t0

    one_step(copy.deepcopy(start))  # warm-up: kernels, oneDNN primitives
    walls: list[float] = []

    def profiled() -> Any:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            walls.append(one_step(copy.deepcopy(start)))
        return prof

    rows = _phase_table(benchmark.pedantic(profiled, rounds=1, iterations=1), name, walls[-1])
    what = (f"{size['members']} x ResNet-20, batch {size['batch']}, {resolve(size['precision'], DEVICE)}, "
            + ", ".join(f"{k} {v}" for k, v in params.items()))
    print(f"\n{name}: one training step ({what}; {DEVICE}), {walls[-1]:.3f} s under torch.profiler")
    print(f"  {'phase':<56} {'seconds':>8} {'share':>6}")
    for label, s in rows:
        print(f"  {label:<56} {s:8.3f} {100 * s / walls[-1]:5.1f}%")
    if name == "dverge":
        per = dict(rows)["feature distillation (all members)"] / size["members"]
        print(f"  distillation per member: {per:.3f} s ({100 * per / walls[-1]:.1f}%)")
        benchmark.extra_info["distillation_per_member_s"] = per
    benchmark.extra_info.update({
        "defense": name, "setting": what, "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "step_s": walls[-1], "phases_s": {label.strip(): s for label, s in rows},
        "phase_shares": {label.strip(): s / walls[-1] for label, s in rows},
    })
    assert all(s >= -1e-3 for _, s in rows), rows  # the regions are disjoint: no phase is negative
