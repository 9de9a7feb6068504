"""``robust-ens train``: train an ensemble of independent members, or a defense (``--defense``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from robust_ens.commands.common import parse_number, parse_params, progress_enabled
from robust_ens.errors import RobustEnsError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train ensemble members (resumable) and save safetensors checkpoints")
    p.add_argument("--arch", default="resnet20", help="registered architecture or timm:<name> (default resnet20)")
    p.add_argument("--members", type=int, default=3, help="number of members (default 3)")
    p.add_argument("--data", default="cifar10", help="cifar10, digits or imagefolder:<path>")
    p.add_argument("--data-root", default=None, help="folder to search for the dataset first")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's)")
    p.add_argument("--train-n", type=int, default=None, help="train on a deterministic subset of N images")
    p.add_argument("--seed", type=int, default=0, help="seed of member 0 (member i uses seed+i)")
    p.add_argument("--defense", default=None, help="train an ensemble defense instead (see robust_ens.defenses)")
    p.add_argument("--tier", default=None, help="recipe tier for --defense (e.g. small, full)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a training option, e.g. --set lr=0.05 --set precision=fp32")
    p.add_argument("--arch-param", action="append", metavar="KEY=VALUE", help="architecture keyword argument")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", required=True, help="output folder (rerun with the same folder to resume)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robust_ens.train import default_recipe, train_ensemble

    if args.members < 1:
        raise RobustEnsError(f"--members must be >= 1, got {args.members}")
    overrides = parse_params(args.overrides)
    arch_kwargs = parse_params(args.arch_param)
    if args.defense or args.tier:
        from robust_ens.defenses import train_defense

        ens = train_defense(
            args.defense or "baseline", arch=args.arch, n_members=args.members, dataset=args.data,
            train_n=args.train_n, epochs=args.epochs, recipe=args.tier, seed=args.seed, device=args.device,
            progress=progress_enabled(), out_dir=args.out, overrides=overrides, data_root=args.data_root,
            arch_kwargs=arch_kwargs,
        )
        print(f"trained {args.defense} ensemble of {len(ens)} members; checkpoints in {args.out}")
        return 0
    recipe = default_recipe(args.data)
    if overrides:
        if "milestones" in overrides and isinstance(overrides["milestones"], str):
            overrides["milestones"] = tuple(int(parse_number(m)) for m in str(overrides["milestones"]).split(","))
        recipe = recipe.replace(**overrides)
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
    summary.write_text(json.dumps({"arch": args.arch, "data": args.data, "members": records}, indent=2) + "\n")
    print(f"checkpoints and {summary.name} in {args.out}")
    return 0
