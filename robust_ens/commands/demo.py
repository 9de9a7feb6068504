"""``robust-ens demo``: the main job on an embedded default, ending on a leaderboard (``make demo``)."""

from __future__ import annotations

import argparse

from robust_ens.commands.common import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    p = sub.add_parser("demo", help="evaluate a zoo ensemble on CIFAR-10 (or the digits quickstart) and print its leaderboard")
    p.add_argument("--out", default="runs/demo", help="folder for the run folders (resumable; default runs/demo)")
    p.add_argument("--digits", action="store_true", help="the digits demo even when CIFAR-10 is found")
    p.add_argument("--epochs", type=positive_int, default=None, help="digits demo: the quickstart's epochs (default its recipe's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``demo``; returns the exit status."""
    from robust_ens import demo
    from robust_ens.commands.common import check_output_folder, progress_enabled

    check_output_folder(args.out)
    demo.run(args.out, progress=progress_enabled(), digits=True if args.digits else None, epochs=args.epochs,
             echo=lambda text: print(text, flush=True))
    return 0
