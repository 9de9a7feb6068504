"""``robust-ens zoo``: list the committed reference checkpoints, or retrain them into a folder.

``rebuild`` never writes over the shipped zoo: it trains into ``--out`` (resumable) and leaves the
shippable copy in ``--out/<dataset>/`` (cifar10) or ``--out/`` (digits), in the shipped layout.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``zoo`` subcommand."""
    p = sub.add_parser("zoo", help="list the committed reference checkpoints, or retrain them into a folder",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("action", choices=("list", "rebuild"), help="list: names, hashes and accuracy; rebuild: retrain into --out")
    p.add_argument("--out", default=None, help="rebuild: output folder (never the shipped zoo)")
    p.add_argument("--dataset", default=None, help="rebuild: digits (the quickstart models; default) or cifar10 (the reference zoo)")
    p.add_argument("--only", action="append", metavar="NAME", help="rebuild: just this entry (repeatable; with what it starts from)")
    p.add_argument("--device", default=None, help="rebuild: torch device (default: cuda if available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``zoo``; returns the exit status."""
    from tabulate import tabulate

    from robust_ens import zoo_build
    from robust_ens.commands.common import check_device, progress_enabled
    from robust_ens.errors import RobustEnsError
    from robust_ens.models import zoo

    if args.action == "list":
        given = [flag for flag, value in (("--out", args.out), ("--dataset", args.dataset), ("--only", args.only),
                                          ("--device", args.device)) if value is not None]
        if given:
            raise RobustEnsError(f"{given[0]} applies to 'zoo rebuild'; 'zoo list' takes no options")
        rows = []
        for name, e in sorted(zoo.index().items()):
            acc = (e.get("accuracy") or {}).get("test_acc")
            secs = (e.get("cost") or {}).get("train_seconds")
            sha = e.get("sha256") or next(iter(e.get("files", {}).values()), "")
            n_train = (e.get("recipe") or {}).get("train_n")
            rows.append([name, e.get("arch", ""), e.get("members", 1), e.get("dataset", ""), e.get("tier", ""),
                         "" if n_train is None else f"{n_train:,}", "" if acc is None else f"{100 * acc:.1f}%",
                         "" if secs is None else f"{secs:.0f}", sha[:16]])
        print(tabulate(rows, headers=["name", "arch", "members", "dataset", "tier", "train images", "test acc",
                                      "train s", "sha256"]))
        return 0
    if args.out is None:
        raise RobustEnsError("zoo rebuild needs --out DIR (it never writes over the shipped zoo)")
    check_device(args.device)
    if args.dataset in (None, "digits"):
        if args.only:
            raise RobustEnsError("--only applies to --dataset cifar10; the digits zoo is rebuilt whole")
        entries = zoo_build.rebuild_digits_zoo(args.out)
    else:
        entries = zoo_build.rebuild_zoo(args.out, dataset=args.dataset, names=args.only, device=args.device,
                                  progress=progress_enabled())
    print(tabulate([[n, e.get("arch", ""), e.get("members", 1),
                     (e.get("sha256") or next(iter(e.get("files", {}).values()), ""))[:16]] for n, e in sorted(entries.items())],
                   headers=["name", "arch", "members", "sha256 (first file)"]))
    print(f"rebuilt into {args.out}; compare with the shipped zoo, then copy what you mean to ship")
    return 0
