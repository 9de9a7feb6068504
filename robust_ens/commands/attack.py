"""``robust-ens attack``: craft an adversarial set on a surrogate and save it with its record.

Example:
    robust-ens attack --attack mifgsm --param alpha=2/255 --param steps=10 \\
        --surrogate zoo:digits_small_cnn_s0,zoo:digits_small_cnn_s1 --data digits --n 200 \\
        --eps 8/255 --out runs/mifgsm_digits.safetensors

writes ``runs/mifgsm_digits.safetensors`` (``x_adv`` float32 NCHW, ``labels``, ``indices`` into the
split, ``target`` when targeted) and ``runs/mifgsm_digits.json`` (the attack's configuration, the
surrogate, data subset, the budget check -- max |delta| measured on the saved tensor -- the
surrogate's clean and white-box adversarial accuracy, and the cost in passes and seconds).
Several comma-separated surrogates are attacked as one logit-averaging Ensemble.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from robust_ens import __version__, data
from robust_ens.attacks import Attack, create_attack, list_attacks
from robust_ens.commands.common import parse_number, parse_params, progress_enabled
from robust_ens.ensemble import Ensemble
from robust_ens.errors import RobustEnsError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``attack`` subcommand."""
    p = sub.add_parser(
        "attack",
        help="craft adversarial examples on a surrogate (model or ensemble) and save them",
        description=__doc__.split("Example:")[0].strip() if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="attacks: " + ", ".join(list_attacks()),
    )
    p.add_argument("--attack", required=True, help="registered attack name (see the list below)")
    p.add_argument("--param", action="append", default=[], metavar="K=V",
                   help="attack hyperparameter, repeatable (alpha=2/255, steps=20, decay=1.0, fusion=loss)")
    p.add_argument("--surrogate", required=True,
                   help="comma-separated checkpoint paths or zoo:NAME; several form an Ensemble")
    p.add_argument("--combine", default="logits", help="how an ensemble surrogate combines members (logits, probs)")
    p.add_argument("--data", default="cifar10", help="dataset: cifar10, digits or imagefolder:<path>")
    p.add_argument("--split", default="test", help="split to attack (default test)")
    p.add_argument("--n", type=int, default=1000, help="number of examples (default 1000)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the example subset (default 0)")
    p.add_argument("--eps", default="8/255", help="perturbation budget, e.g. 8/255 (default) or 0.03")
    p.add_argument("--target", default="none", choices=["none", "random", "least-likely"],
                   help="targeted mode: random wrong class or the surrogate's least-likely class")
    p.add_argument("--seed", type=int, default=0, help="attack seed (same seed, same device: same output)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per attack batch (default 256)")
    p.add_argument("--precision", default="auto", help="ensemble precision: auto, fp32 or bf16")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", required=True, help="output .safetensors path (a .json record is written beside it)")
    p.set_defaults(func=run)


def load_surrogate(spec: str, *, combine: str = "logits", precision: str = "auto",
                   device: torch.device | str = "cpu") -> torch.nn.Module:
    """``"a.safetensors,zoo:b"`` -> one model (eval mode) or an :class:`Ensemble` of them."""
    from robust_ens import models

    parts = [s.strip() for s in spec.split(",") if s.strip()]
    if not parts:
        raise RobustEnsError("--surrogate needs at least one checkpoint path or zoo:NAME")
    loaded = [models.load(s, device=device).eval() for s in parts]
    if len(loaded) == 1 and precision in ("auto", "fp32"):
        return loaded[0]
    return Ensemble(loaded, combine=combine, precision=precision).to(device).eval()


def _targets(kind: str, sur: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, seed: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "random":
        g = torch.Generator().manual_seed(seed + 1)
        return ((y.cpu() + 1 + torch.randint(0, k - 1, y.shape, generator=g)) % k).to(y.device)
    with torch.no_grad():
        return sur(x).argmin(-1)


def run(args: argparse.Namespace) -> int:
    """Run the ``attack`` subcommand; returns the exit status."""
    eps = parse_number(str(args.eps), "--eps")
    params: dict[str, Any] = parse_params(args.param)
    if "eps" in params:
        raise RobustEnsError("give eps with --eps, not --param eps=...")
    if args.n is not None and args.n < 1:
        raise RobustEnsError(f"--n must be a positive integer, got {args.n}")
    if args.batch_size < 1:
        raise RobustEnsError(f"--batch-size must be a positive integer, got {args.batch_size}")
    atk: Attack = create_attack(args.attack, eps=eps, **params)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sur = load_surrogate(args.surrogate, combine=args.combine, precision=args.precision, device=device)
    if atk.ensemble_only and not (isinstance(sur, Ensemble) and len(sur) >= 2):
        raise RobustEnsError(f"--surrogate must list at least 2 models for the ensemble strategy {args.attack!r}")
    xu, yall = data.load_uint8(args.data, args.split)
    idx = data.subset_indices(yall, args.n, args.data_seed)
    x_all = xu[idx].to(device)
    y_all = yall[idx].to(device)
    k = int(getattr(sur, "num_classes", None) or data.info(args.data).num_classes)

    out_x, out_t = [], []
    fwd = bwd = secs = 0.0
    clean_ok = adv_ok = hit = 0
    from tqdm import tqdm

    batches = tqdm(range(0, len(idx), args.batch_size), desc=f"attack {args.attack}", unit="batch",
                   file=sys.stderr, disable=not progress_enabled())
    t0 = time.perf_counter()
    for b, i in enumerate(batches):
        x = x_all[i : i + args.batch_size].float().div_(255.0)
        y = y_all[i : i + args.batch_size]
        t = _targets(args.target, sur, x, y, k, args.seed + b)
        res = atk(sur, x, y, target=t, seed=args.seed + b)
        n = len(y)
        fwd += res.cost.forward * n
        bwd += res.cost.backward * n
        secs += res.cost.seconds
        with torch.no_grad():
            clean_ok += int((sur(x).argmax(-1) == y).sum())
            pred = sur(res.x_adv).argmax(-1)
            adv_ok += int((pred == y).sum())
            if t is not None:
                hit += int((pred == t).sum())
                out_t.append(t.cpu())
        out_x.append(res.x_adv.float().cpu())
    wall = time.perf_counter() - t0

    x_adv = torch.cat(out_x)
    x_clean = xu[idx].float().div_(255.0)
    delta = (x_adv.double() - x_clean.double()).flatten(1)
    linf = float(delta.abs().max()) if len(delta) else 0.0
    l2 = float(delta.norm(dim=1).max()) if len(delta) else 0.0
    within = (linf <= eps) if atk.norm == "Linf" else (l2 <= eps)
    in_box = bool(x_adv.min() >= 0 and x_adv.max() <= 1)
    if not (within and in_box):  # the base class guarantees it; refuse to write a set that breaks it
        raise RobustEnsError(f"budget check failed (max Linf {linf}, max L2 {l2}, eps {eps}); not writing {args.out}")

    out = Path(args.out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(out.suffix + ".safetensors") if out.suffix else out.with_suffix(".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"x_adv": x_adv.contiguous(), "labels": yall[idx].contiguous(), "indices": idx.to(torch.int64).contiguous()}
    if out_t:
        tensors["target"] = torch.cat(out_t).contiguous()
    from safetensors.torch import save_file

    save_file(tensors, str(out), metadata={"format": "robust-ens adversarial set", "attack": args.attack})
    n = len(idx)
    record = {
        "format": "robust-ens adversarial set v1",
        "file": out.name,
        "attack": {"name": args.attack, "repr": repr(atk), **atk.config()},
        "surrogate": {"spec": args.surrogate, "ensemble": isinstance(sur, Ensemble),
                      "combine": args.combine if isinstance(sur, Ensemble) else None,
                      "precision": sur.resolved_precision(device) if isinstance(sur, Ensemble) else "fp32"},
        "data": {"name": args.data, "split": args.split, "n": n, "seed": args.data_seed},
        "eps": eps,
        "norm": atk.norm,
        "targeted": args.target,
        "seed": args.seed,
        "budget": {"max_linf": linf, "max_l2": l2, "eps": eps, "within_budget": within, "in_box": in_box},
        "surrogate_accuracy": {"clean": clean_ok / n, "adversarial": adv_ok / n,
                               **({"target_hit_rate": hit / n} if out_t else {})},
        "cost": {"forward_per_example": fwd / n, "backward_per_example": bwd / n,
                 "attack_seconds": secs, "wall_seconds": wall, "device": str(device)},
        "provenance": {"robust_ens": __version__, "torch": torch.__version__, "python": platform.python_version(),
                       "command": sys.argv},
    }
    side = out.with_suffix(".json")
    side.write_text(json.dumps(record, indent=2, default=str) + "\n")
    log.info("wrote %s and %s: surrogate accuracy %.3f -> %.3f (max Linf %.5f)", out, side,
             clean_ok / n, adv_ok / n, linf)
    return 0
