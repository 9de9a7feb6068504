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
from typing import Any

from robust_ens import data
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
from robust_ens.device import resolve_device
from robust_ens.ensemble import COMBINES, Ensemble
from robust_ens.errors import RobustEnsError
from robust_ens.overrides import OutOfRange
from robust_ens.precision import DEFAULT_PRECISION, PRECISIONS

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
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS,
                   help=f"ensemble precision (default {DEFAULT_PRECISION})")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", required=True, help="output .safetensors path (a .json record is written beside it)")
    p.add_argument("--store", default=None, help="adversarial-set store folder (default: $ROBUST_ENS_CACHE/advsets)")
    p.set_defaults(func=run)


def _build_attack(name: str, eps: float, params: dict[str, Any]) -> Attack:
    """The attack, its ranges checked by the attack itself; an out-of-range value names its flag."""
    try:
        with for_option("--param"):
            return create_attack(name, eps=eps, **params)
    except RobustEnsError as err:
        oor = err if isinstance(err, OutOfRange) else err.__cause__
        if isinstance(oor, OutOfRange):
            raise oor.renamed("--eps" if oor.option == "eps" else f"--param {oor.option}") from None
        raise


def run(args: argparse.Namespace) -> int:
    """Run the ``attack`` subcommand; returns the exit status."""
    from robust_ens.bench.advsets import AdvSetStore
    from robust_ens.bench.craft import attack_set, write_set
    from robust_ens.bench.examples import Examples, dataset_label
    from robust_ens.bench.targets import check_target, resolve_target

    eps = parse_number(str(args.eps), "--eps")
    params: dict[str, Any] = parse_params(args.param, "--param")
    if "eps" in params:
        raise RobustEnsError("give eps with --eps, not --param eps=...")
    atk = _build_attack(args.attack, eps, params)
    check_device(args.device)
    check_output_file(args.out)
    if args.store is not None:
        check_output_folder(args.store, "--store")
    device = resolve_device(args.device)
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
    ex = Examples.of(xu[idx], yall[idx], idx, label, k, args.batch_size)
    crafted, record = attack_set(
        atk, sur, ex, store=AdvSetStore(args.store), device=device, seed=args.seed,
        targeted=args.target, spec=args.surrogate, combine=args.combine, precision=args.precision,
        data_name=args.data, split=args.split, data_seed=args.data_seed, progress=progress_enabled())
    out, side = write_set(args.out, crafted, record)
    acc = record["surrogate_accuracy"]
    print(f"wrote {out} and {side.name}: {len(idx)} images, eps {eps:.6g} "
          f"(stored within {record['budget']['max_change_levels']}/255), "
          f"surrogate accuracy {acc['clean']:.3f} -> {acc['adversarial']:.3f}")
    return 0
