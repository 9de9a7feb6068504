"""The spread, across seeds, precisions and thread counts, of every test threshold that trains a model.

Some tests train a small model and assert a statistical threshold on it (accuracy above chance, a
white-box attack fooling its own member, an implementation agreeing with a reference within a
binomial margin). Trained weights differ from one CPU to another (SIMD kernels, bf16 support,
thread count), so such a threshold must sit well outside the spread of what training can give.
This script retrains each case with seeds 0..N-1, in fp32 and bf16 autocast, with 1 and 2 torch
threads (a different machine is, for these numbers, one more draw of the same spread), and writes
the minimum (or maximum) next to the test's threshold in
``experiments/results/threshold_spread.{json,md}``. The tests quote these figures beside their
thresholds.

    .venv/bin/python experiments/threshold_spread.py --seeds 5
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robust_ens import data, models
from robust_ens.defenses import train_defense
from robust_ens.defenses.recipe_registry import default_recipe
from robust_ens.evaluation import accuracy
from robust_ens.train import TrainConfig, train_classifier

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def digits_90(seed: int, precision: str) -> float:
    """tests/test_train.py: small_cnn on digits with the default recipe; test accuracy (>= 0.90)."""
    xtr, ytr = data.load_uint8("digits", "train")
    xte, yte = data.load_uint8("digits", "test")
    torch.manual_seed(seed)
    info = data.info("digits")
    m = models.create("small_cnn", num_classes=10, in_chans=1, mean=info.mean, std=info.std)
    train_classifier(m, xtr, ytr, default_recipe("digits").replace(seed=seed, precision=precision), device="cpu",
                     progress=False)
    return accuracy(m, xte, yte)


def _defense_recipe(epochs: int, lr: float = 1e-2, warmup: int = 0, precision: str = "fp32") -> dict[str, Any]:
    common = dict(batch_size=32, optimizer="adam", weight_decay=1e-4, crop_padding=1, flip=False, precision=precision)
    rec: dict[str, Any] = {"train": dict(epochs=epochs, lr=lr, **common), "train_n": 320, "eval_n": 200}
    if warmup:
        rec["warmup"] = dict(epochs=warmup, lr=1e-2, **common)
    return rec


# tests/test_defenses_training.py's BUDGETS: (epochs, lr, warmup, overrides)
BUDGETS = {"baseline": (3, 1e-2, 0, {}), "adp": (3, 1e-2, 0, {}), "gal": (8, 1e-2, 0, {}),
           "trs": (2, 1e-3, 3, {}), "dverge": (1, 1e-3, 3, {"steps": 2})}


def defense_acc(name: str, arch: str) -> Callable[[int, str], float]:
    """tests/test_defenses_training.py: a defense on a tiny budget; test accuracy (> 0.25, chance 0.1)."""
    def run(seed: int, precision: str) -> float:
        epochs, lr, warmup, over = BUDGETS[name]
        ens = train_defense(name, arch=arch, n_members=2, dataset="digits", progress=False, seed=seed,
                            recipe=_defense_recipe(epochs, lr, warmup, precision), overrides=over,
                            arch_kwargs={"width": 16})
        return float(ens.metrics["test_acc"])
    return run


def fgsm_fools_source(seed: int, precision: str) -> float:
    """tests/test_defenses.py: the smallest diagonal of the FGSM(0.3) transferability matrix (> 0.5)."""
    from robust_ens.defenses import transferability_matrix

    rec = {"train": dict(epochs=3, batch_size=32, optimizer="adam", lr=1e-2, crop_padding=1, flip=False,
                         precision=precision), "train_n": 320, "eval_n": 100}
    ens = train_defense("baseline", arch="small_cnn", n_members=2, dataset="digits", progress=False, seed=seed,
                        arch_kwargs={"width": 16}, recipe=rec)
    x, y = data.load("digits", "test", n=40)

    def fgsm(model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        xx = xb.clone().requires_grad_(True)
        F.cross_entropy(model(xx), yb).backward()
        return (xb + 0.3 * xx.grad.sign()).clamp(0, 1)

    return float(transferability_matrix(ens, x, y, attack=fgsm).matrix.diagonal().min())


def _digits32(n_train: int = 600, n_test: int = 120) -> tuple[torch.Tensor, ...]:
    def prep(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = data.load("digits", split=split, n=n, seed=0)
        x = F.interpolate(x.repeat(1, 3, 1, 1), size=32, mode="nearest")
        return (x * 255).round().byte(), y
    return (*prep("train", n_train), *prep("test", n_test))


def _corruption_model(seed: int, precision: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    xtr, ytr, xte, yte = _digits32()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(4), models.create("small_cnn", in_chans=3))
    cfg = TrainConfig(epochs=5, batch_size=50, optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant",
                      crop_padding=0, flip=False, precision=precision, seed=seed)
    train_classifier(model, xtr, ytr, cfg, device="cpu", progress=False)
    return model.eval(), xte, yte


def corruption_clean(seed: int, precision: str) -> float:
    """tests/test_corruptions_evaluate.py: clean accuracy of the pooled small_cnn (> 0.6)."""
    model, xte, yte = _corruption_model(seed, precision)
    return accuracy(model, xte, yte)


def glass_vs_reference(seed: int, precision: str) -> float:
    """tests/test_corruptions_evaluate.py: the largest |ours - imagecorruptions| glass-blur accuracy gap (<= 0.08)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.test_corruptions_evaluate import glass_accuracy_vs_reference

    model, xte, yte = _corruption_model(seed, precision)
    return max(abs(a - b) for a, b in glass_accuracy_vs_reference(model, xte, yte).values())


CASES: dict[str, tuple[Callable[[int, str], float], str, float]] = {
    # name: (measure, "min" or "max" is the side the threshold guards, threshold)
    "test_train: digits accuracy": (digits_90, "min", 0.90),
    **{f"test_defenses_training: {d} small_cnn": (defense_acc(d, "small_cnn"), "min", 0.25) for d in BUDGETS},
    **{f"test_defenses_training: {d} packed": (defense_acc(d, "packed:small_cnn"), "min", 0.25) for d in BUDGETS},
    "test_defenses: FGSM fools its source member": (fgsm_fools_source, "min", 0.5),
    "test_corruptions_evaluate: clean accuracy": (corruption_clean, "min", 0.6),
    "test_corruptions_evaluate: glass blur gap": (glass_vs_reference, "max", 0.08),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--only", default="", help="substring of the case names to run")
    args = ap.parse_args()
    out: dict[str, Any] = {"machine": cpu_name(), "torch": torch.__version__,
                           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cases": {}}
    for name, (fn, side, threshold) in CASES.items():
        if args.only not in name:
            continue
        values = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for precision in ("fp32", "bf16"):
                for seed in range(args.seeds):
                    with torch.random.fork_rng():
                        np.random.seed(seed)
                        v = fn(seed, precision)
                    values.append({"seed": seed, "precision": precision, "threads": threads, "value": round(v, 4)})
        vs = [v["value"] for v in values]
        worst = min(vs) if side == "min" else max(vs)
        out["cases"][name] = {"side": side, "threshold": threshold, "worst": worst, "mean": round(float(np.mean(vs)), 4),
                              "std": round(float(np.std(vs)), 4), "n": len(vs), "values": values}
        print(f"{name}: worst {worst:.3f} (mean {np.mean(vs):.3f}, sd {np.std(vs):.3f}, n {len(vs)}) "
              f"vs threshold {side} {threshold}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threshold_spread.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["| case | threshold | worst | mean | sd | runs |", "|---|---|---:|---:|---:|---:|"]
    for name, c in out["cases"].items():
        op = ">" if c["side"] == "min" else "<="
        lines.append(f"| {name} | {op} {c['threshold']} | {c['worst']:.3f} | {c['mean']:.3f} | {c['std']:.3f} | {c['n']} |")
    (RESULTS / "threshold_spread.md").write_text(
        f"Seeds 0..{args.seeds - 1} x fp32/bf16 x 1/2 threads on {out['machine']} ({out['cpu_capability']}), "
        f"torch {out['torch']}.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
