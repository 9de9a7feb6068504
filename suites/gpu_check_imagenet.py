"""The ImageNet transfer track on the device (issue 24): two checks of ``suites/gpu_check.py``.

``imagenet_smoke``
    The imagenet-transfer protocol's smoke tier end to end through the engine
    (:func:`robust_ens.bench.runner.run_suite`) on the check's device, with a fresh adversarial-set
    store: its ten attacks on the smoke tier's random-weight tiny timm models
    (``timm-random:NAME@SEED``), on an ImageNet-compatible folder written here the way the tests
    write theirs (random RGB PNGs beside ``labels.csv``, TransferAttack's layout) into the check's
    temporary folder. ``ROBUST_ENS_DATA`` (and ``ROBUST_ENS_CACHE``) point at that folder for this
    run only and are restored after it.

``imagenet_slice``
    A slice of the full tier on random weights: the full tier's architectures, resolved by the
    smoke tier's route (``timm-random:``; nothing downloaded, nothing pretrained): MI-FGSM from
    ResNet-50 and Ens from ResNet-50 + VGG-16 + MobileNet-V2 + Inception-V3 (resized to 299 px
    inside, as TransferAttack's ``wrap_model`` does), each at the protocol's own settings (Linf
    16/255, alpha eps/10, 10 steps), on 32 images at 224 px, with ViT-B/16 as the transfer target.
    Each attack is crafted twice, once by an fp32 :class:`~robust_ens.Ensemble` and once by a bf16
    one (``precision="bf16"``: autocast and channels_last); both sets are rounded to uint8 as the
    store does and evaluated in fp32 by the same models.

How the slice is judged. A bf16 attack is not expected to give the fp32 pixels: MI-FGSM and Ens
step by the gradient's sign, and wherever a pixel's gradient is near zero bf16's 8-bit mantissa
flips that sign, so the two sets part after the first step (``agree`` reports how far: equal
pixels, equal perturbation signs, equal images, equal outcomes). Random networks are rough besides:
a sign step's linear regime ends far below alpha (in a CPU probe a step of 1e-4 along the sign of
the gradient raised random Inception-V3's loss from 1.8 to 6.1, one of 1.6/255 lowered it to 0.9),
so on random weights the fp32 and bf16 crafts behave as two draws of one attack (on 2 probe images
Ens's perturbation signs agreed on 45% of the pixels, MI-FGSM's on 99%). What must agree is then
what the attack achieves: its success rate, on the surrogate it was made on (white box) and on the
target (transfer). The check passes when each bf16 rate is within the binomial bound of the fp32
one that ``robust-ens regress`` applies across devices (:func:`robust_ens.bench.regress.tolerance`:
``3 sqrt(2 max(p (1 - p), 1 / 4n) / n) + 1 / n``, two measurements of a proportion ``p`` on ``n``
images: 0.41 at ``p = 0.5``, ``n = 32``; exactly the model of two draws). It catches a bf16 path
that moves a rate by more than sampling does, and fails outright on a non-finite set, a set over
the 16-level budget, or a bf16 attack that moved no pixel (a dead gradient); a small bias it cannot
see at 32 images. The rates say nothing of the attacks' strength: the weights are random (the
losses, ``loss``, are reported beside them: on random networks a sign attack may lower them).

Random weights, two choices stated in the report. Labels: random networks have no true labels, so
each image's label is the surrogate's own fp32 clean prediction (every image starts correctly
classified, as under the ``all-targets-correct`` filter), and transfer success is the target
leaving its own clean prediction. BatchNorm statistics: timm's random Inception-V3 gives logits
near 1e11 (its convolutions' init grows the activations through 90-odd layers), so its softmax is
exactly one-hot and its cross-entropy gradient exactly zero, and its logits would swamp the
ensemble's mean; each CNN's BatchNorm running statistics are therefore recomputed on the check's
own images (one forward in train mode) before anything is crafted, the weights left as drawn.

Cost, estimated from FLOPs (FlopCounterMode, one image: forward = input-gradient backward): ResNet-50
8.18 GFLOP, VGG-16 30.94, MobileNet-V2 0.60, Inception-V3 at 299 px 11.43, ViT-B/16 33.70. Crafting
per image and precision: MI-FGSM 10 x 2 x 8.18 = 164 GFLOP, Ens 10 x 2 x 51.15 = 1,023, so 2.37
TFLOP for both precisions; the fp32 evaluations (clean, both sets, surrogate and target), the
untimed warm-up passes and the BatchNorm pass add 0.86: 3.2 TFLOP per image, 103 TFLOP for 32
images, 7 s at a sustained 15 TFLOP/s, 34 s at 3 (an H100's TF32 and bf16 convolutions sustain
more). Drawing the random weights and their sha256 on the host took 3.6 s on this project's CPU.
The smoke tier (tiny models, 4 images) took 8 s on a 2-core CPU; on a GPU it is bound by kernel
launches. The check's budget reserves 60 s for the smoke tier and 90 s for the slice, both before
``vit_compile``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from robust_ens import Ensemble
    from suites.gpu_check import Check

SUITE = "imagenet-transfer"
EPS_LEVELS = 16  # the protocol's Linf budget, 16/255


class ImageNetCheckError(Exception):
    """An ImageNet check that ran and found something wrong (its one-line reason)."""


@dataclass(frozen=True)
class SliceSize:
    """The slice of the full tier: how many images, how many steps, and the models.

    Attributes:
        images: Images crafted (one batch).
        steps: Attack iterations (the full tier's 10).
        surrogate: MI-FGSM's surrogate (ResNet-50).
        ensemble: Ens's members (ResNet-50, VGG-16, MobileNet-V2, Inception-V3).
        target: The transfer target (ViT-B/16).
    """

    images: int
    steps: int
    surrogate: str
    ensemble: tuple[str, ...]
    target: str

    def specs(self) -> list[str]:
        """Every distinct model spec, in order."""
        return list(dict.fromkeys((self.surrogate, *self.ensemble, self.target)))


FULL = SliceSize(32, 10, "timm-random:resnet50@0",
                 ("timm-random:resnet50@0", "timm-random:vgg16@0", "timm-random:mobilenetv2_100@0",
                  "timm-random:inception_v3@0"), "timm-random:vit_base_patch16_224@0")
# the dry run: timm's tiny test_* architectures (160 px inside: the resize runs as Inception's does)
TINY = SliceSize(4, 2, "timm-random:test_resnet@0",
                 ("timm-random:test_resnet@0", "timm-random:test_efficientnet@0", "timm-random:test_convnext@0",
                  "timm-random:test_byobnet@0"), "timm-random:test_vit3@10")


# --------------------------------------------------------------------------- the data


def write_folder(root: Path, n: int, *, size: int = 224, seed: int = 0) -> Path:
    """Write ``n`` random RGB PNGs and their labels under ``root/imagenet-compatible`` (TransferAttack's layout).

    The same layout as ``tests/imagenet_transfer_data.make_folder``: ``images/imgNNNN.png``
    (lossless) beside ``labels.csv`` (``filename,label``, ImageNet classes 0..999).

    Args:
        root: What ``ROBUST_ENS_DATA`` points at.
        n: Number of images.
        size: Their side.
        seed: Pixel and label seed.

    Returns:
        ``root``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "imagenet-compatible"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = ["filename,label"]
    for i, label in enumerate(rng.integers(0, 1000, n).tolist()):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / "images" / f"img{i:04d}.png")
        rows.append(f"img{i:04d}.png,{label}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def data_root(c: Check) -> Path:
    """The check's ImageNet-compatible folder, written once per run (enough images for both checks)."""
    from robust_ens.bench import get_suite

    root = c.work / "imagenet-data"
    if not (root / "imagenet-compatible" / "labels.csv").is_file():
        n = max((TINY if c.tiny else FULL).images, get_suite(SUITE).tier("smoke").n)
        write_folder(root, n)
    return root


@contextlib.contextmanager
def data_env(root: Path, cache: Path) -> Iterator[None]:
    """``ROBUST_ENS_DATA=root`` and ``ROBUST_ENS_CACHE=cache`` for the block; the previous values after it."""
    before = {k: os.environ.get(k) for k in ("ROBUST_ENS_DATA", "ROBUST_ENS_CACHE")}
    os.environ.update(ROBUST_ENS_DATA=str(root), ROBUST_ENS_CACHE=str(cache))
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------- the smoke tier


def check_imagenet_smoke(c: Check) -> dict[str, Any]:
    """The imagenet-transfer smoke tier through the engine on this device, on a generated folder, a fresh store."""
    from robust_ens.bench import get_suite
    from robust_ens.bench.craft import device_name
    from robust_ens.bench.runner import run_suite

    tier = get_suite(SUITE).tier("smoke")
    with data_env(data_root(c), c.work / "imagenet-cache"):
        result = run_suite(SUITE, "smoke", [], c.work / "imagenet-smoke", device=c.device,
                           store=c.work / "advsets-imagenet", progress=False)
    cost = result.cost.to_dict()
    if cost["device"] != device_name(c.device):
        raise ImageNetCheckError(f"the engine ran on {cost['device']!r}, not on {device_name(c.device)!r}")
    if result.dataset != "imagenet-compatible" or result.n != tier.n:
        raise ImageNetCheckError(f"the smoke tier ran on {result.n} images of {result.dataset!r}, not {tier.n} "
                                 "of the generated imagenet-compatible folder")
    view = result.attack_view or {}
    if set(view) != set(tier.attacks) or cost["advsets_made"] <= 0 or not cost["flops"] > 0:
        raise ImageNetCheckError(f"attacks {sorted(view)} of {sorted(tier.attacks)}, {cost['advsets_made']} sets made "
                                 f"and {cost['flops']} FLOPs counted on a fresh store")
    rate = cost.get("gflops_per_s")
    return {"suite": SUITE, "tier": "smoke", "n": result.n, "dataset": result.dataset,
            "data": "generated: random PNGs at 224 px in TransferAttack's layout, in the check's temp folder",
            "attacks": list(tier.attacks), "targets": {name: t.clean.acc for name, t in result.targets.items()},
            "cells": len(result.cells),
            "success": {a: next(iter(by_eps.values())).mean for a, by_eps in view.items()},
            "enforced_eps": result.enforced_eps, "cost": cost,
            "share_of_fp32_peak": rate / c.peaks["fp32"] if rate and c.peaks.get("fp32") else None}


# --------------------------------------------------------------------------- the slice of the full tier


@torch.no_grad()
def recompute_bn_statistics(module: nn.Module, x: torch.Tensor) -> int:
    """Set every BatchNorm layer's running statistics to those of ``x`` (one forward); eval mode after.

    Returns:
        The number of BatchNorm layers set.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: exactly this batch's statistics
        m.train()
    try:
        module(x)
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        module.eval()
    return len(norms)


def _evaluate(model: nn.Module, x_u8: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``model`` (fp32) on the uint8 images: per image whether it predicts other than ``ref``, and its mean
    cross-entropy loss at ``ref`` (what the attack raises)."""
    from robust_ens.evaluation import predict

    logits = predict(model, x_u8.float().div(255), batch_size=64).float()
    return logits.argmax(-1) != ref, float(nn.functional.cross_entropy(logits, ref))


def _craft(c: Check, atk: Any, ens: Ensemble, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """One timed crafting run: the uint8 set and its figures (a one-step run of the attack first, untimed for
    kernel loading and bf16's folded view, but reported)."""
    from robust_ens.bench.flops import gflops_per_s, pass_flops
    from suites.speed.crafting import timed

    def warm() -> None:  # one step through the attack: kernels, layouts and bf16's folded view (built once, cached)
        atk.replace(steps=1)(ens, x, y, seed=0)

    warm_s, _ = timed(warm, c.device)
    seconds, res = timed(lambda: atk(ens, x, y, seed=0), c.device)
    if not torch.isfinite(res.x_adv).all():
        raise ImageNetCheckError(f"{atk.config()['name']} in {ens.precision}: the adversarial images are not finite")
    fwd, bwd = res.cost.forward * len(y), res.cost.backward * len(y)
    flops = pass_flops(ens, tuple(x.shape[1:]), fwd, bwd, c.device)
    rate = gflops_per_s(flops, seconds)
    precision = ens.precision
    return res.x_adv.mul(255).round_().clamp_(0, 255).to(torch.uint8), {
        "seconds": seconds, "warmup_seconds": warm_s, "forward": fwd, "backward": bwd, "flops": flops,
        "gflops_per_s": rate, f"share_of_{precision}_peak": rate / c.peaks[precision]
        if rate and c.peaks.get(precision) else None}


def _share(mask: torch.Tensor) -> float:
    return float(mask.float().mean())


def compare_precisions(c: Check, name: str, members: dict[str, nn.Module], target: nn.Module, x_u8: torch.Tensor,
                       steps: int) -> dict[str, Any]:
    """Craft attack ``name`` of the protocol on ``members`` (spec -> module) in fp32 and in bf16; rates, agreement, cost.

    Returns:
        The figures, with ``problems``: a set over budget, a bf16 set that did not move, a rate out of
        tolerance (empty when it passes).

    Raises:
        ImageNetCheckError: a set that is not finite.
    """
    from robust_ens import Ensemble
    from robust_ens.bench import get_suite
    from robust_ens.bench.regress import tolerance
    from robust_ens.evaluation import predict

    atk = get_suite(SUITE).attacks[name].build(EPS_LEVELS / 255, steps=steps)
    x = x_u8.float().div(255)
    nets = list(members.values())
    ensembles = {"fp32": Ensemble(nets, combine="logits", precision="fp32").eval(),
                 "bf16": Ensemble(copy.deepcopy(nets), combine="logits", precision="bf16").eval()}
    y = predict(ensembles["fp32"], x).argmax(-1)  # the label: the surrogate's own clean fp32 prediction
    clean_bf16 = predict(ensembles["bf16"], x).argmax(-1)
    target_clean = predict(target, x).argmax(-1)
    adv, runs = {}, {}
    for p, ens in ensembles.items():
        adv[p], runs[p] = _craft(c, atk, ens, x, y)
    del ensembles["bf16"]
    judged = {p: {"surrogate": _evaluate(ensembles["fp32"], a, y), "target": _evaluate(target, a, target_clean)}
              for p, a in {"clean": x_u8, **adv}.items()}
    fooled = {p: {k: v[0] for k, v in judged[p].items()} for p in adv}
    success = {p: {k: _share(v) for k, v in f.items()} for p, f in fooled.items()}
    n = len(y)
    tol = {k: tolerance((success["fp32"][k] + success["bf16"][k]) / 2, n, same_device=False) for k in success["fp32"]}
    diff = {k: success["bf16"][k] - success["fp32"][k] for k in success["fp32"]}
    a, b, x0 = adv["fp32"].int(), adv["bf16"].int(), x_u8.int()
    out: dict[str, Any] = {
        "surrogate": list(members), "attack": atk.config(), "runs": runs, "success": success, "difference": diff,
        "tolerance": tol, "loss": {p: {k: v[1] for k, v in j.items()} for p, j in judged.items()},
        "agree": {"pixels_equal": _share(a == b), "pixels_within_1_level": _share((a - b).abs() <= 1),
                  "perturbation_sign": _share((a - x0).sign() == (b - x0).sign()),
                  "examples_equal": _share((a == b).flatten(1).all(1)),
                  **{f"outcome_{k}": _share(fooled["fp32"][k] == fooled["bf16"][k]) for k in tol},
                  "clean_prediction": _share(clean_bf16 == y)},
        "max_change_levels": {p: int((s.int() - x0).abs().amax()) for p, s in adv.items()}}
    problems = [f"{p} set changes up to {m} levels (budget {EPS_LEVELS})"
                for p, m in out["max_change_levels"].items() if m > EPS_LEVELS]
    if out["max_change_levels"]["bf16"] == 0:
        problems.append("the bf16 attack moved no pixel (a dead gradient)")
    problems += [f"{k} success fp32 {success['fp32'][k]:.3f} vs bf16 {success['bf16'][k]:.3f}: |diff| "
                 f"{abs(diff[k]):.3f} > tolerance {tol[k]:.3f} (n={n})" for k in tol if abs(diff[k]) > tol[k]]
    out["problems"] = [f"{name}: {p}" for p in problems]
    return out


def check_imagenet_slice(c: Check, size: SliceSize | None = None) -> dict[str, Any]:
    """MI-FGSM and Ens of the full tier on its architectures (random weights), fp32 against bf16 crafting."""
    from robust_ens import data
    from robust_ens.bench.flops import gflops_per_s
    from robust_ens.bench.targets import resolve_target
    from suites.speed.crafting import timed

    size = size or (TINY if c.tiny else FULL)
    root = data_root(c)
    with data_env(root, c.work / "imagenet-cache"):
        x_u8, _ = data.load_uint8("imagenet-compatible", "test")
    x_u8 = x_u8[: size.images].to(c.device)
    if len(x_u8) < size.images:
        raise ImageNetCheckError(f"the folder holds {len(x_u8)} images, the slice needs {size.images}")

    def load() -> dict[str, nn.Module]:
        return {s: resolve_target(s, dataset="imagenet-compatible", device=c.device).module for s in size.specs()}

    load_s, nets = timed(load, c.device)
    x = x_u8.float().div(255)
    bn = {s: recompute_bn_statistics(nets[s], x) for s in dict.fromkeys((size.surrogate, *size.ensemble))}
    rows = {name: compare_precisions(c, name, {s: nets[s] for s in specs}, nets[size.target], x_u8, size.steps)
            for name, specs in (("mifgsm", (size.surrogate,)), ("ens", size.ensemble))}
    flops = sum(r["runs"][p]["flops"] for r in rows.values() for p in r["runs"])
    seconds = sum(r["runs"][p]["seconds"] for r in rows.values() for p in r["runs"])
    summary = "; ".join(f"{a} success fp32/bf16: surrogate {r['success']['fp32']['surrogate']:.2f}/"
                        f"{r['success']['bf16']['surrogate']:.2f}, target {r['success']['fp32']['target']:.2f}/"
                        f"{r['success']['bf16']['target']:.2f}, pixels equal {r['agree']['pixels_equal']:.2f}"
                        for a, r in rows.items())
    out = {"images": size.images, "image": list(x.shape[1:]), "eps": f"{EPS_LEVELS}/255", "steps": size.steps,
           "target": size.target,
           "labels": "each surrogate's own clean fp32 prediction; transfer success: the target leaves its own",
           "bn_statistics": {"recomputed_on_the_images": bn, "why": "timm's random Inception-V3 gives logits near "
                             "1e11: a one-hot softmax, a zero gradient, and the ensemble's mean swamped"},
           "tolerance_rule": "|bf16 - fp32 success| <= 3 sqrt(2 max(p (1 - p), 1 / 4n) / n) + 1 / n "
                             "(robust_ens.bench.regress.tolerance, across devices), on surrogate and target",
           "load_seconds": load_s, "attacks": rows, "flops": flops, "seconds_crafting": seconds,
           "gflops_per_s": gflops_per_s(flops, seconds), "summary": summary}
    problems = [p for r in rows.values() for p in r["problems"]]
    if problems:
        print(f"  [imagenet_slice] figures: {json.dumps(out, default=str)}", flush=True)  # kept in the log
        raise ImageNetCheckError("; ".join(problems))
    return out
