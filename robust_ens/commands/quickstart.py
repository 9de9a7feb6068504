"""``robust-ens quickstart``: train and evaluate ensembles on the embedded digits."""

from __future__ import annotations

import argparse
from pathlib import Path

from robust_ens.commands.common import check_device, check_output_folder, positive_int, progress_enabled
from robust_ens.errors import RobustEnsError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train surrogate and target ensembles on digits and report (about a minute)")
    p.add_argument("--out", default="runs/quickstart", help="folder for checkpoints and results.json")
    p.add_argument("--members", type=positive_int, default=3, help="members per ensemble (default 3, at least 2)")
    p.add_argument("--epochs", type=positive_int, default=None, help="override the digits recipe's epochs")
    p.add_argument("--n-eval", type=positive_int, default=500, help="test images to evaluate and attack (default 500)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from robust_ens import quickstart

    if not 2 <= args.members <= 64:
        raise RobustEnsError(f"--members must be between 2 and 64 (CWA attacks an ensemble), got {args.members}")
    check_device(args.device)
    check_output_folder(args.out)
    results = quickstart.run(
        args.out, n_members=args.members, epochs=args.epochs, n_eval=args.n_eval, progress=progress_enabled(),
        device=args.device,
    )
    print(quickstart.render(results))
    print(f"results written to {Path(args.out) / 'results.json'}")
    return 0
