"""``robust-ens train``: train an ensemble of independent members, or a defense (``--defense``).

Overrides (``--set KEY=VALUE``, repeatable) name their section when it matters:
``train.<option>`` (the training recipe), ``defense.<option>`` (the defense's hyperparameters),
``warmup.<option>`` (DVERGE's and TRS's baseline warm-up). A bare name is accepted when it
belongs to exactly one of ``train`` and ``defense``; DVERGE's ``momentum`` (a distillation flag
and SGD's momentum) must be dotted. ``--epochs`` sets the defense's epochs only; the warm-up
has ``--warmup-epochs`` (0 skips it). The command prints what it will run before it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from robust_ens.atomic import atomic_write_text
from robust_ens.commands.common import (
    check_device,
    check_output_folder,
    for_option,
    nonnegative_int,
    parse_params,
    positive_int,
    progress_enabled,
    seed_int,
)
from robust_ens.errors import RobustEnsError
from robust_ens.overrides import OutOfRange


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = sub.add_parser("train", help="train ensemble members (resumable) and save safetensors checkpoints",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet20", help="registered architecture or timm:<name> (default resnet20)")
    p.add_argument("--members", type=int, default=3, help="number of members (default 3)")
    p.add_argument("--data", default="cifar10", help="cifar10, digits or imagefolder:<path>")
    p.add_argument("--data-root", default=None, help="folder to search for the dataset first")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="epochs of the training (of the defense with --defense; default: the recipe's)")
    p.add_argument("--warmup-epochs", type=nonnegative_int, default=None,
                   help="epochs of DVERGE's/TRS's baseline warm-up (default: the recipe's; 0 skips it)")
    p.add_argument("--train-n", type=positive_int, default=None, help="train on a deterministic subset of N images")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of member 0 (member i uses seed+i)")
    p.add_argument("--defense", default=None, help="train an ensemble defense instead (see robust_ens.defenses)")
    p.add_argument("--tier", default=None, help="recipe tier for --defense (e.g. small, full)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a recipe option: train.lr=0.05, defense.eps=0.05, warmup.epochs=4 "
                        "(a bare name where unambiguous, e.g. lr=0.05)")
    p.add_argument("--arch-param", action="append", metavar="KEY=VALUE",
                   help="architecture keyword argument (e.g. width=16 for small_cnn)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", required=True, help="output folder (rerun with the same folder to resume)")
    p.set_defaults(func=run)


def _plain_overrides(overrides: dict[str, object]) -> dict[str, object]:
    """``--set`` for plain members: ``train.<option>`` or a bare training option."""
    out: dict[str, object] = {}
    for key, value in overrides.items():
        section, dot, option = key.partition(".")
        if dot and section != "train":
            raise RobustEnsError(
                f"--set {key}: {section}.* options need --defense (plain members have only train.<option>)"
            )
        out[option if dot else key] = value
    return out


@contextlib.contextmanager
def _as_set(overrides: dict[str, object]) -> Iterator[None]:
    """Name an out-of-range ``--set`` value as the user wrote it: ``--set defense.eps=7 is out of range: ...``."""
    try:
        yield
    except OutOfRange as err:
        keys = [k for k in overrides if k == err.option or k.partition(".")[2] == err.option]
        if len(keys) == 1:
            raise err.renamed(f"--set {keys[0]}") from None
        raise


MAX_MEMBERS = 1024


def run(args: argparse.Namespace) -> int:
    """Run ``train``; returns the exit status."""
    from robust_ens import data
    from robust_ens.defenses.recipe_registry import default_recipe
    from robust_ens.defenses.train import check_train_n, train_ensemble
    from robust_ens.models.registry import check_arch, check_arch_kwargs

    if not 1 <= args.members <= MAX_MEMBERS:
        raise RobustEnsError(f"--members must be >= 1 (and at most {MAX_MEMBERS}), got {args.members}")
    with for_option("--data"):
        info = data.info(args.data, args.data_root)
        data.check_split(args.data, "train")
        data.check_split(args.data, "test")
    check_device(args.device)
    overrides = parse_params(args.overrides, "--set")
    arch_kwargs = parse_params(args.arch_param, "--arch-param")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise RobustEnsError(f"--data-root {args.data_root} is not an existing folder")
    with for_option("--arch"):
        check_arch(args.arch)
    if not args.arch.startswith("timm:"):
        check_arch_kwargs(args.arch, arch_kwargs, where="--arch-param")
    if args.defense or args.tier:
        from robust_ens.defenses import defense_plan, train_defense

        name = args.defense or "baseline"
        with for_option("--defense" if args.defense and "defense" in _unknown_name(name) else "--set"), \
                _as_set(overrides):
            plan = defense_plan(
                name, arch=args.arch, n_members=args.members, dataset=args.data, train_n=args.train_n,
                epochs=args.epochs, warmup_epochs=args.warmup_epochs, recipe=args.tier, overrides=overrides,
            )
        check_output_folder(args.out)
        print(f"plan: {plan}", flush=True)
        ens = train_defense(
            name, arch=args.arch, n_members=args.members, dataset=args.data,
            train_n=args.train_n, epochs=args.epochs, recipe=args.tier, seed=args.seed, device=args.device,
            progress=progress_enabled(), out_dir=args.out, overrides=overrides, data_root=args.data_root,
            arch_kwargs=arch_kwargs, warmup_epochs=args.warmup_epochs,
        )
        print(f"trained {name} ensemble of {len(ens)} members; checkpoints in {args.out}")
        return 0
    if args.warmup_epochs:
        raise RobustEnsError("--warmup-epochs applies to --defense dverge/trs; plain members have no warm-up")
    recipe = default_recipe(args.data)
    if overrides:
        with for_option("--set"), _as_set(overrides):
            recipe = recipe.replace(**_plain_overrides(overrides))
    if args.epochs is not None:
        recipe = recipe.replace(epochs=args.epochs)
    check_output_folder(args.out)
    with for_option("--data"):
        _, ytr = data.load_uint8(args.data, "train", root=args.data_root, progress=progress_enabled())
    check_train_n(args.train_n, len(ytr), args.data)
    print(f"plan: {args.members} x {args.arch} on {args.data} ({info.num_classes} classes), "
          f"train_n={args.train_n or len(ytr)}, {recipe.epochs} epochs, {recipe.optimizer} lr {recipe.lr}, "
          f"batch {recipe.batch_size}", flush=True)
    members, records = train_ensemble(
        args.arch, args.members, args.data, epochs=args.epochs, train_n=args.train_n, recipe=recipe,
        seed=args.seed, out_dir=args.out, device=args.device, progress=progress_enabled(),
        data_root=args.data_root, arch_kwargs=arch_kwargs,
    )
    from tabulate import tabulate

    print(tabulate(
        [[i, f"{100 * r['test_acc']:.2f}%", f"{r.get('images_per_second', 0):.0f}"] for i, r in enumerate(records)],
        headers=["member", "test acc", "train img/s"],
    ))
    summary = Path(args.out) / "summary.json"
    atomic_write_text(summary, json.dumps({"arch": args.arch, "data": args.data, "members": records}, indent=2) + "\n")
    print(f"checkpoints and {summary.name} in {args.out}")
    return 0


def _unknown_name(name: str) -> str:
    """``"defense"`` when ``name`` is not a registered defense, else ``""``."""
    from robust_ens.defenses import DEFENSES

    return "" if name in DEFENSES else "defense"
