"""How much do our batched corruptions change the numbers a benchmark reports, against the reference?

Two measurements, each on real data, ours vs the reference implementation (``imagecorruptions``,
the maintained fork on NumPy 2; RoboDepth's dark / color_quant / iso_noise written out in numpy,
see ``tests/corruption_reference.py``):

1. **Classification** (cifar10-jpeg): a ResNet-20 trained with the project's training loop
   (cached under ``--work-dir``, resumed after an interruption), evaluated on ``--n`` test images
   under each of the 19 corruptions at severities 1..5 with ImageNet-C's parameters (the preset
   ``imagecorruptions`` implements), ours (``preset="imagenetc"``) and the reference's.
2. **Depth** (KITTI-C parameters): OpenCV SGBM on scikit-image's real Motorcycle stereo pair,
   abs_rel clean and under each of the 18 KITTI-C corruptions at ``--depth-severity``, both views
   corrupted alike, ours vs the reference.

Random corruptions draw different numbers in the two implementations, so single-image numbers
differ by sampling noise; the accuracy over ``--n`` images and the depth error over a 370k-pixel
image are what a benchmark reports, and what is compared.

Run from the repository root (about 25 minutes on one core of the 2-core CPU, most of it training
and the reference's per-image loop)::

    ROBUST_ENS_DATA=../shared/data OMP_NUM_THREADS=1 .venv/bin/python -m experiments.corruption_agreement

Writes ``experiments/results/corruption_agreement.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robust_ens import data
from robust_ens.corruptions import corrupt, list_corruptions
from robust_ens.evaluation import accuracy
from tests.corruption_reference import reference

RESULTS = Path(__file__).resolve().parent / "results"


def train_model(work: Path, epochs: int) -> torch.nn.Module:
    """A ResNet-20 on the whole cifar10-jpeg training split (cached, resumable)."""
    from robust_ens.defenses.train import train_ensemble

    members, _ = train_ensemble("resnet20", 1, "cifar10", epochs=epochs, seed=0, out_dir=work / f"resnet20_e{epochs}")
    return members[0].eval()


def reference_set(x_u8: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """The reference's corrupted copy of a uint8 ``[N, 3, H, W]`` set (numpy's global RNG seeded
    from ``(seed, name, severity)``)."""
    np.random.seed(1000 * severity + sum(map(ord, name)) + 100_000 * seed)
    out = []
    for img in x_u8.permute(0, 2, 3, 1).numpy():
        r = np.asarray(reference(img, name, severity), dtype=np.float64)
        out.append(np.uint8(np.clip(r, 0, 255)))  # the reference's own final uint8 cast
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def ours_set(x_u8: torch.Tensor, name: str, severity: int, preset: str) -> torch.Tensor:
    """Our corrupted copy, truncated to uint8 like the reference's output."""
    y = corrupt(x_u8.float() / 255, name, severity, preset=preset, seed=0)
    return (y * 255 + 1e-3).floor().clamp(0, 255).to(torch.uint8)


def classification(model: torch.nn.Module, n: int, work: Path) -> dict[str, Any]:
    """Accuracy per corruption and severity, ours vs reference, cached per cell in ``work``."""
    x_u8, y = data.load_uint8("cifar10", "test")
    idx = data.subset_indices(y, n, seed=0)
    x_u8, y = x_u8[idx], y[idx]
    cache = work / f"classification_n{n}.json"
    cells: dict[str, Any] = json.loads(cache.read_text()) if cache.exists() else {}
    names = list_corruptions("imagenetc")
    todo = [(c, s) for c in names for s in range(1, 6) if f"{c}/{s}" not in cells]
    for name, s in tqdm(todo, desc="classification cells"):
        t0 = time.perf_counter()
        ours = accuracy(model, ours_set(x_u8, name, s, "imagenetc"), y)
        t1 = time.perf_counter()
        ref = accuracy(model, reference_set(x_u8, name, s), y)
        cells[f"{name}/{s}"] = {"ours": ours, "reference": ref, "ours_s": t1 - t0, "reference_s": time.perf_counter() - t1}
        cache.write_text(json.dumps(cells))
    return {"n": n, "clean": accuracy(model, x_u8, y), "cells": cells, "corruptions": names}


def depth(severity: int, seeds: int) -> dict[str, Any]:
    """SGBM abs_rel on the Motorcycle pair, clean and per KITTI-C corruption, ours vs reference.

    One pair gives one noisy draw per corruption (SGBM's failures are all-or-nothing per region), so
    each random corruption is drawn with ``seeds`` seeds and the mean and range are reported.
    """
    from robust_ens.depth import SGBMStereo, evaluate_stereo_under_corruptions, motorcycle_pair

    left, right, gt, calib = motorcycle_pair()
    model = SGBMStereo(calib)

    def ref_fn(x: torch.Tensor, name: str, s: int, *, seed: int = 0, **_: Any) -> torch.Tensor:
        # the two views get different seeds (the right view ``seed + 1``), as in ours: identical
        # noise in both views would be matched at zero disparity
        u8 = (x * 255 + 1e-3).floor().clamp(0, 255).to(torch.uint8)
        return reference_set(u8, name, s, seed=seed).float() / 255

    names = list_corruptions("kittic")
    draws: dict[str, dict[str, list[float]]] = {c: {"ours": [], "reference": []} for c in names}
    clean = None
    for k in tqdm(range(seeds), desc="depth seeds"):
        for label, fn in (("ours", None), ("reference", ref_fn)):
            r = evaluate_stereo_under_corruptions(model, left, right, [gt], names, [severity], seed=10 * k, corrupt_fn=fn)
            clean = r["clean"]["abs_rel"]
            for c in names:
                draws[c][label].append(r["corrupted"][c][severity]["abs_rel"])
    return {"severity": severity, "seeds": seeds, "clean_abs_rel": clean, "abs_rel": draws}


def to_markdown(res: dict[str, Any]) -> str:
    """The two tables of the closing note."""
    cl = res["classification"]
    lines = [
        f"## Classification: ResNet-20 ({res['model']['epochs']} epochs, cifar10-jpeg), {cl['n']} test images, "
        f"imagenetc parameters at 32 px; clean accuracy {100 * cl['clean']:.1f}%",
        "",
        "Accuracy in % per severity, ours / reference; last column: mean |difference| over severities (points).",
        "",
        "| corruption | s1 | s2 | s3 | s4 | s5 | mean abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    diffs = []
    for c in cl["corruptions"]:
        row = [cl["cells"][f"{c}/{s}"] for s in range(1, 6)]
        d = float(np.mean([abs(r["ours"] - r["reference"]) for r in row])) * 100
        diffs.append(d)
        lines.append(f"| {c} | " + " | ".join(f"{100 * r['ours']:.1f} / {100 * r['reference']:.1f}" for r in row)
                     + f" | {d:.1f} |")
    common = list_corruptions("imagenetc", subset="common")
    mca = {k: 100 * float(np.mean([cl["cells"][f"{c}/{s}"][k] for c in common for s in range(1, 6)]))
           for k in ("ours", "reference")}
    lines += ["", f"Mean corruption accuracy (15 common x 5): ours {mca['ours']:.2f}%, reference {mca['reference']:.2f}% "
              f"(difference {mca['ours'] - mca['reference']:+.2f} points). "
              f"Binomial standard error of one cell: about {100 * np.sqrt(0.25 / cl['n']):.1f} points.", ""]
    dp = res["depth"]
    lines += [f"## Depth: SGBM on the Motorcycle pair, KITTI-C parameters, severity {dp['severity']}; "
              f"clean abs_rel {dp['clean_abs_rel']:.4f}", "",
              f"abs_rel, mean [min, max] over {dp['seeds']} seeds (one draw for deterministic corruptions).", "",
              "| corruption | ours | reference |", "|---|---|---|"]
    for c, v in dp["abs_rel"].items():
        cells = []
        for k in ("ours", "reference"):
            a = np.asarray(v[k])
            cells.append(f"{a.mean():.4f}" if np.ptp(a) == 0 else f"{a.mean():.4f} [{a.min():.4f}, {a.max():.4f}]")
        lines.append(f"| {c} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and write the results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--work-dir", default=".cache/experiments/corruption_agreement", help="cache of models and cells")
    p.add_argument("--epochs", type=int, default=4, help="ResNet-20 training epochs (whole training split)")
    p.add_argument("--n", type=int, default=1000, help="test images for the classification table")
    p.add_argument("--depth-severity", type=int, default=3)
    p.add_argument("--depth-seeds", type=int, default=5, help="draws per random corruption in the depth table")
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = train_model(work, args.epochs)
    res: dict[str, Any] = {"model": {"arch": "resnet20", "epochs": args.epochs, "data": "cifar10-jpeg"}}
    res["classification"] = classification(model, args.n, work)
    res["depth"] = depth(args.depth_severity, args.depth_seeds)
    res["wall_s"] = time.time() - t0
    res["torch"] = torch.__version__
    res["threads"] = torch.get_num_threads()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "corruption_agreement.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "corruption_agreement.md").write_text(to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
