"""The ``depth`` task (suite ``kitti-c``): a user's depth model on a KITTI-C tree, RoboDepth's metrics.

The tree is what ``robust-ens corrupt --preset kittic --clean`` writes:
``<root>/clean/<relative path>`` and ``<root>/<corruption>/<severity>/<relative path>``, plus the
ground truth ``<root>/gt_depths.npz`` (MonoDepth2's export, one map per image in sorted path
order) unless ``gt`` names another file. The model is ``pkg.module:factory``: the factory returns
a torch module (wrapped in :class:`~robust_ens.depth.TorchDepthModel`, sigmoid disparities by
default) or any object following :class:`~robust_ens.depth.DepthModel`. The tier's ``n`` takes
the first images in sorted order. Results are DES per corruption and severity, mCE and mRR
against MonoDepth2 (RoboDepth's baseline), as :func:`robust_ens.depth.evaluate_kittic` computes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from robust_ens import __version__
from robust_ens.atomic import atomic_write_json
from robust_ens.bench.protocol import Protocol, get_suite
from robust_ens.bench.runfolder import RunFolder
from robust_ens.errors import RobustEnsError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def load_depth_model(spec: str) -> Any:
    """``pkg.module:factory`` -> a :class:`~robust_ens.depth.DepthModel`."""
    from robust_ens.depth import TorchDepthModel

    if ":" not in spec:
        raise RobustEnsError(f"a depth target is pkg.module:factory, got {spec!r}")
    mod_name, fn_name = spec.rsplit(":", 1)
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as err:
        raise RobustEnsError(f"depth target {spec!r} does not resolve: {err}") from None
    model = factory()
    return TorchDepthModel(model.eval()) if isinstance(model, torch.nn.Module) else model


def run_depth(
    suite: str | Protocol,
    tier: str,
    target: str,
    root: str | Path,
    out: str | Path,
    *,
    gt: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Score a depth model on a KITTI-C tree under one tier of a depth suite.

    Raises:
        RobustEnsError: a missing tree, ground truth or image, or a tier larger than the tree.
    """
    from robust_ens.depth import evaluate_kittic, load_gt_depths

    proto = suite if isinstance(suite, Protocol) else get_suite(suite)
    t = proto.tier(tier)
    root = Path(root)
    clean = root / "clean"
    if not clean.is_dir():
        raise RobustEnsError(f"--data {root} holds no clean/ folder; build it with `robust-ens corrupt --preset kittic --clean`")
    files = sorted(str(p.relative_to(clean)) for p in clean.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    gt_path = Path(gt) if gt is not None else root / "gt_depths.npz"
    if not gt_path.is_file():
        raise RobustEnsError(f"no ground truth at {gt_path}; pass --gt PATH (MonoDepth2's gt_depths.npz)")
    gts = load_gt_depths(gt_path)
    if len(gts) != len(files):
        raise RobustEnsError(f"{gt_path} has {len(gts)} depth maps but {clean} has {len(files)} images")
    n = min(t.n, len(files))
    folder = RunFolder(out, proto, tier)
    model = load_depth_model(target)
    folder.open()
    res = evaluate_kittic(model, root, files[:n], gts[:n], corruptions=list(t.corruptions),
                          severities=list(t.severities), batch_size=t.batch_size, device=device)
    summary = {"suite": proto.suite, "version": proto.version, "kind": proto.kind, "task": proto.task, "tier": tier,
               "digest": proto.digest(tier), "dataset": "kitti-c", "split": proto.split, "n": n, "seed": proto.seed,
               "norm": proto.norm, "eps": [], "attacks": [], "surrogates": [], "reference": proto.reference,
               "robust_ens": __version__, "depth": {target: res}}
    atomic_write_json(folder.root / "summary.json", summary)
    return summary


def depth_table(summary: dict[str, Any], target: str) -> str:
    """The table printed at the end of a depth run: abs_rel per corruption and severity, then mCE and mRR."""
    from tabulate import tabulate

    res = summary["depth"][target]
    rows = [[c, *(f"{m['abs_rel']:.4f}" for m in per_sev.values())] for c, per_sev in res["corrupted"].items()]
    table = tabulate(rows, headers=["corruption", *(f"abs_rel s{s}" for s in next(iter(res["corrupted"].values())))],
                     tablefmt="github")
    s = res.get("summary") or {}
    return (f"{table}\nclean abs_rel {res['clean']['abs_rel']:.4f}; mCE {s.get('mCE', float('nan')):.1f}, "
            f"mRR {s.get('mRR', float('nan')):.1f} (RoboDepth, vs MonoDepth2)")
