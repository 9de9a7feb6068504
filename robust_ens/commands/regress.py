"""``robust-ens regress``: re-run committed leaderboard entries and fail when a number moved.

Example:
    robust-ens regress                                    # every entry under ./leaderboards
    robust-ens regress --tier smoke leaderboards/digits   # only smoke-tier entries under a folder

Exit status 0 when every number is within its tolerance (exact on the same device and seed, a
binomial bound from n across devices), 1 with a table of what moved otherwise. The last line is a
summary; without ``--quiet`` every skipped entry is listed above it with the reason.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``regress`` subcommand."""
    p = sub.add_parser("regress", help="re-run committed leaderboard entries; exit 1 with a table when a number moved",
                       description=__doc__.split("Example:")[0].strip() if __doc__ else None)
    p.add_argument("paths", nargs="*", default=[], help="entry files or folders (default: every entry under --root)")
    p.add_argument("--tier", default=None, help="only entries recorded at this tier (smoke, demo, small, full)")
    p.add_argument("--root", default=None, help="leaderboard folder (default: $ROBUST_ENS_LEADERBOARD, else ./leaderboards)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--out", default=None, help="keep the re-runs' folders here (default: a temporary folder)")
    p.add_argument("--store", default=None,
                   help="adversarial-set store (default: the machine-wide $ROBUST_ENS_CACHE/advsets, shared by every run)")
    p.add_argument("--weights-dir", action="append", default=[], metavar="FOLDER",
                   help="where submitted models' weights are, by the file name their entry records (repeatable; "
                        "the entry's own folder is searched first)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``regress``; returns 0 when nothing moved, 1 otherwise."""
    from robust_ens import progress
    from robust_ens.bench.regress import regress
    from robust_ens.commands.common import check_device, check_output_folder

    check_device(args.device)
    if args.root is not None and not Path(args.root).is_dir():
        from robust_ens.errors import RobustEnsError

        raise RobustEnsError(f"--root {args.root} is not a folder of leaderboard entries")
    if args.out is not None:
        check_output_folder(args.out, "--out")
    if args.store is not None:
        check_output_folder(args.store, "--store")
    for folder in args.weights_dir:
        if not Path(folder).is_dir():
            from robust_ens.errors import RobustEnsError

            raise RobustEnsError(f"--weights-dir {folder} is not a folder")

    from robust_ens.bench.protocol import TIERS

    if args.tier is not None and args.tier not in TIERS:
        from robust_ens.errors import RobustEnsError

        raise RobustEnsError(f"--tier {args.tier!r}: use {', '.join(TIERS)}")
    rep = regress(args.paths, root=args.root, tier=args.tier, device=args.device, out=args.out,
                  progress=progress.enabled(), store=args.store, weights_dirs=args.weights_dir)
    if not progress.quiet():  # the details; under --quiet only the summary line (and what moved)
        for line in rep.skipped:
            print(f"skipped {line}")
    if rep.moved:
        print(rep.table())
        print()
    print(rep.summary())
    return 1 if rep.moved else 0
