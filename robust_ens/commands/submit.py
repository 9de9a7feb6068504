"""``robust-ens submit``: evaluate a model under a suite and write its leaderboard entry.

Example:
    robust-ens submit --model zoo:digits_small_cnn_s2 --suite digits-transfer --tier smoke --name cnn-s2
    robust-ens submit --model mypkg.models:wide_resnet --weights wrn.safetensors --suite cifar10-transfer \\
        --tier small --name WRN-28-10-AT --paper-url https://arxiv.org/abs/...
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``submit`` subcommand."""
    p = sub.add_parser("submit", help="evaluate a model under a suite and write its leaderboard entry",
                       description=__doc__.split("Example:")[0].strip() if __doc__ else None)
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="zoo:NAME, a checkpoint path or folder, pkg.module:factory, timm:NAME, or SPEC,SPEC")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="weights for pkg.module:factory or timm:NAME (safetensors or tensors-only; never unpickled)")
    p.add_argument("--suite", required=True, help="a suite that ranks defenses (see 'robust-ens bench list')")
    p.add_argument("--tier", default="small", help="smoke, small (default) or full")
    p.add_argument("--name", required=True, help="the entry's name, unique within the suite")
    p.add_argument("--paper-url", default=None, help="the paper's URL")
    p.add_argument("--paper-title", default="", help="the paper's title")
    p.add_argument("--paper-venue", default=None, help="where the paper appeared")
    p.add_argument("--defense", default=None, help="the defense's name, for the table")
    p.add_argument("--description", default="", help="one line about the model")
    p.add_argument("--replace", action="store_true", help="overwrite an entry of the same name")
    p.add_argument("--root", default=None, help="leaderboard folder (default: $ROBUST_ENS_LEADERBOARD, else ./leaderboards)")
    p.add_argument("--out", default=None, help="run folder (default runs/submit-<suite>-<tier>-<name>)")
    p.add_argument("--store", default=None, help="adversarial-set store to share between runs")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``submit``: evaluate, write the entry, re-render, print the row and what to commit."""
    from robust_ens import leaderboard as lb
    from robust_ens import progress
    from robust_ens.bench.protocol import get_suite
    from robust_ens.bench.submit import submit
    from robust_ens.commands.common import check_device, check_input_file, check_output_folder, for_option

    with for_option("--suite"):
        proto = get_suite(args.suite)
    with for_option("--tier"):
        proto.tier(args.tier)
    check_device(args.device)
    if args.weights is not None:
        check_input_file(args.weights, "--weights")
    for opt, folder in (("--out", args.out), ("--store", args.store), ("--root", args.root)):
        if folder is not None:
            check_output_folder(folder, opt)

    paper = None
    if args.paper_url or args.paper_title or args.paper_venue:
        paper = lb.Paper(title=args.paper_title, url=args.paper_url, venue=args.paper_venue)
    res = submit(args.model, args.suite, args.tier, args.name, weights=args.weights, paper=paper,
                 defense=args.defense, description=args.description, root=args.root, replace=args.replace,
                 out=args.out, store=args.store, device=args.device, progress=progress.enabled(),
                 command=" ".join(["robust-ens", *sys.argv[1:]]))
    print(lb.render([res.entry]))
    print(f"\nwrote {res.path} (per-example results in {res.run_dir})")
    from robust_ens.bench.submit import recorded_path

    files = [recorded_path(f) for f in (res.path, *res.rendered)]
    print("to commit:\n  git add " + " ".join(files))
    return 0
