"""``robust-ens quickstart``: train and evaluate ensembles on the embedded digits."""

from __future__ import annotations

import argparse
from pathlib import Path

from robust_ens.commands.common import progress_enabled


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train surrogate and target ensembles on digits and report (about a minute)")
    p.add_argument("--out", default="runs/quickstart", help="folder for checkpoints and results.json")
    p.add_argument("--members", type=int, default=3, help="members per ensemble (default 3)")
    p.add_argument("--epochs", type=int, default=None, help="override the digits recipe's epochs")
    p.add_argument("--n-eval", type=int, default=500, help="test images to evaluate and attack (default 500)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robust_ens import quickstart

    results = quickstart.run(
        args.out, n_members=args.members, epochs=args.epochs, n_eval=args.n_eval, progress=progress_enabled(),
        device=args.device,
    )
    print(quickstart.render(results))
    print(f"results written to {Path(args.out) / 'results.json'}")
    return 0
