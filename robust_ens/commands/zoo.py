"""``robust-ens zoo``: list or rebuild the committed reference checkpoints."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="list the committed reference checkpoints, or retrain the digits ones")
    p.add_argument("action", choices=("list", "rebuild"), help="list: names and hashes; rebuild: retrain digits models")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from robust_ens.models import zoo

    index = zoo.rebuild_digits_zoo() if args.action == "rebuild" else zoo.index()
    print(tabulate([[name, e.get("arch", ""), e.get("dataset", ""), e["sha256"][:16]] for name, e in sorted(index.items())],
                   headers=["name", "arch", "dataset", "sha256"]))
    return 0
