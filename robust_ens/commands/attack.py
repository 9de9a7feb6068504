"""``robust-ens attack``: craft an adversarial set on a surrogate and save it with its record.

Example:
    robust-ens attack --attack mifgsm --param alpha=2/255 --param steps=10 \\
        --surrogate zoo:digits_small_cnn_s0,zoo:digits_small_cnn_s1 --data digits --n 200 \\
        --eps 8/255 --out runs/mifgsm_digits.safetensors

writes ``runs/mifgsm_digits.safetensors`` (``x_adv`` uint8 NCHW like the clean images, ``labels``,
``indices`` into the split, ``target`` when targeted) and ``runs/mifgsm_digits.json`` (the attack's
canonical configuration, the surrogate and the sha256 of its weights, the data subset, the budget
measured on the saved tensor and the budget uint8 storage enforces -- floor(255 eps) levels -- the
surrogate's clean accuracy and its accuracy on the float and on the stored set, and the cost).
Batches are made through the adversarial-set store (``--store``, default the cache), so the same
command run again reads them instead of attacking. Several comma-separated surrogates are
attacked as one logit-averaging Ensemble.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from typing import Any

import torch

from robust_ens import __version__, data
from robust_ens.attacks import Attack, create_attack, list_attacks
from robust_ens.commands.common import (
    check_device,
    check_output_file,
    check_output_folder,
    for_option,
    parse_number,
    parse_params,
    positive_int,
    progress_enabled,
    seed_int,
)
from robust_ens.ensemble import COMBINES, Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.evaluation import correct, predict
from robust_ens.precision import PRECISIONS

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
                   help="comma-separated checkpoint paths, zoo:NAME or pkg.module:factory; several form an Ensemble")
    p.add_argument("--combine", default="logits", choices=COMBINES, help="how an ensemble surrogate combines members")
    p.add_argument("--data", default="cifar10", help="dataset: cifar10, digits or imagefolder:<path>")
    p.add_argument("--split", default="test", help="split to attack (default test)")
    p.add_argument("--n", type=positive_int, default=1000, help="number of examples (default 1000)")
    p.add_argument("--data-seed", type=seed_int, default=0, help="seed of the example subset (default 0)")
    p.add_argument("--eps", default="8/255", help="perturbation budget, e.g. 8/255 (default) or 0.03")
    p.add_argument("--target", default="none", choices=["none", "random", "least-likely"],
                   help="targeted mode: random wrong class or the surrogate's least-likely class")
    p.add_argument("--seed", type=seed_int, default=0, help="attack seed (same seed, same device: same output)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="examples per attack batch (default 256)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="ensemble precision (default auto)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", required=True, help="output .safetensors path (a .json record is written beside it)")
    p.add_argument("--store", default=None, help="adversarial-set store folder (default: $ROBUST_ENS_CACHE/advsets)")
    p.set_defaults(func=run)


def _targets(kind: str, sur: torch.nn.Module, k: int, seed: int) -> Any:
    """A ``(batch, x, y) -> target labels`` function for ``--target`` (None when untargeted)."""
    if kind == "none":
        return None

    def pick(b: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if kind == "random":
            g = torch.Generator().manual_seed(seed + 1 + b)
            return ((y.cpu() + 1 + torch.randint(0, k - 1, y.shape, generator=g)) % k).to(y.device)
        return predict(sur, x).argmin(-1).to(y.device)

    return pick


def run(args: argparse.Namespace) -> int:
    """Run the ``attack`` subcommand; returns the exit status."""
    from robust_ens.bench.advsets import AdvSetStore, dataset_fingerprint
    from robust_ens.bench.craft import budget_check, craft_set, write_set
    from robust_ens.bench.runner import dataset_label
    from robust_ens.bench.targets import check_target, resolve_target

    eps = parse_number(str(args.eps), "--eps")
    params: dict[str, Any] = parse_params(args.param, "--param")
    if "eps" in params:
        raise RobustEnsError("give eps with --eps, not --param eps=...")
    with for_option("--param"):
        atk: Attack = create_attack(args.attack, eps=eps, **params)
    check_device(args.device)
    check_output_file(args.out)
    if args.store is not None:
        check_output_folder(args.store, "--store")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with for_option("--surrogate"):
        sur = resolve_target(args.surrogate, dataset=args.data, device=device, combine=args.combine,
                             precision=args.precision)
    if atk.ensemble_only and not (isinstance(sur.module, Ensemble) and len(sur.module) >= 2):
        raise RobustEnsError(f"--surrogate must list at least 2 models for the ensemble strategy {args.attack!r}")
    with for_option("--data"):
        xu, yall = data.load_uint8(args.data, args.split)
        k = data.info(args.data).num_classes
        label = dataset_label(args.data)
    try:
        check_target(sur, xu[:2].float().div(255), k, label)
    except RobustEnsError as err:
        raise RobustEnsError(f"--surrogate {args.surrogate} does not fit --data {args.data}: {err}") from None
    with for_option("--n"):
        idx = data.subset_indices(yall, args.n, args.data_seed)
    x_u8, y = xu[idx].contiguous(), yall[idx].contiguous()
    store = AdvSetStore(args.store or data.cache_dir() / "advsets")
    t0 = time.perf_counter()
    crafted = craft_set(store, atk, sur, x_u8, y, idx, dataset_fingerprint(x_u8, y, label), seed=args.seed,
                        batch_size=args.batch_size, device=device,
                        targets=_targets(args.target, sur.module, k, args.seed), progress=progress_enabled())
    wall = time.perf_counter() - t0
    budget = budget_check(x_u8, crafted.x_adv, eps)
    if not budget["within_budget"]:  # the store guarantees it; refuse to write a set that breaks it
        raise RobustEnsError(f"budget check failed ({budget}); not writing {args.out}")
    n = len(idx)
    clean = float(correct(sur.module, x_u8.to(device), y.to(device)).float().mean())
    acc = crafted.surrogate_accuracy()
    hit = None
    if crafted.target is not None:
        pred = predict(sur.module, crafted.x_adv.to(device)).argmax(-1).cpu()
        hit = float((pred == crafted.target).float().mean())
    costs = [r.get("cost", {}) for r in crafted.records]
    record = {
        "format": "robust-ens adversarial set v2 (uint8)",
        "attack": {"repr": repr(atk), **atk.config()},
        "surrogate": {"spec": args.surrogate, "sha256": sur.sha256s, "ensemble": isinstance(sur.module, Ensemble),
                      "combine": args.combine if isinstance(sur.module, Ensemble) else None, "precision": args.precision},
        "data": {"name": args.data, "label": label, "split": args.split, "n": n, "seed": args.data_seed},
        "eps": eps,
        "norm": atk.norm,
        "targeted": args.target,
        "seed": args.seed,
        "budget": {**budget, "in_box": True},
        "surrogate_accuracy": {"clean": clean, "adversarial": acc["surrogate_acc_uint8"],
                               "adversarial_before_uint8": acc["surrogate_acc_float"],
                               **({"target_hit_rate": hit} if hit is not None else {})},
        "cost": {"forward_per_example": sum(c.get("forward", 0) * c.get("examples", 0) for c in costs) / max(n, 1),
                 "backward_per_example": sum(c.get("backward", 0) * c.get("examples", 0) for c in costs) / max(n, 1),
                 "attack_seconds": sum(c.get("seconds", 0.0) for c in costs), "wall_seconds": wall,
                 "batches_from_store": crafted.hits, "device": str(device)},
        "provenance": {"robust_ens": __version__, "torch": torch.__version__, "python": platform.python_version(),
                       "command": sys.argv},
    }
    out, side = write_set(args.out, crafted, record)
    print(f"wrote {out} and {side.name}: {n} images, eps {eps:.6g} (stored within {budget['max_change_levels']}/255), "
          f"surrogate accuracy {clean:.3f} -> {acc['surrogate_acc_uint8']:.3f}")
    return 0
