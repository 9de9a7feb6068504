"""``robust-ens submit``: evaluate a model under a suite and write its leaderboard entry.

Example:
    robust-ens submit --model zoo:digits_small_cnn_s2 --suite digits-transfer --tier smoke --name cnn-s2
    robust-ens submit --model mypkg.models:wide_resnet --weights wrn.safetensors --suite cifar10-transfer \\
        --tier small --name WRN-28-10-AT --paper-url https://arxiv.org/abs/...
    robust-ens submit --model zoo:digits_small_cnn_s2 --suite all --tier smoke --name cnn-s2

Adversarial sets come from the machine-wide store ($ROBUST_ENS_CACHE/advsets) unless --store names
another: a set any earlier run made (make demo, bench run, another submit) is read, not made again,
and runs started together make each set once between them. --suite all evaluates the model under
every suite that ranks defenses and takes its data, one entry each; rerun it after an interruption
and finished suites are skipped.
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
    p.add_argument("--suite", required=True,
                   help="a suite that ranks defenses (see 'robust-ens bench list'), or 'all': every such suite "
                        "that takes the model's data, one entry each (resumable)")
    p.add_argument("--tier", default="small", help="smoke, demo, small (default) or full")
    p.add_argument("--name", required=True, help="the entry's name, unique within the suite")
    p.add_argument("--paper-url", default=None, help="the paper's URL")
    p.add_argument("--paper-title", default="", help="the paper's title")
    p.add_argument("--paper-venue", default=None, help="where the paper appeared")
    p.add_argument("--defense", default=None, help="the defense's name, for the table")
    p.add_argument("--description", default="", help="one line about the model")
    p.add_argument("--replace", action="store_true", help="overwrite an entry of the same name")
    p.add_argument("--root", default=None, help="leaderboard folder (default: $ROBUST_ENS_LEADERBOARD, else ./leaderboards)")
    p.add_argument("--out", default=None, help="run folder (default runs/submit-<suite>-<tier>-<name>; "
                   "--suite all: runs/submit-all-<tier>-<name>, a run folder per suite)")
    p.add_argument("--store", default=None, help="adversarial-set store folder (default: the machine-wide "
                   "$ROBUST_ENS_CACHE/advsets, shared by every run)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``submit``: evaluate, write the entry, re-render, print the row and what to commit."""
    from robust_ens import leaderboard as lb
    from robust_ens import progress
    from robust_ens.bench.protocol import TIERS, get_suite
    from robust_ens.bench.submit import ALL, recorded_path, submit, submit_all
    from robust_ens.commands.common import check_device, check_input_file, check_output_folder, for_option

    if args.suite != ALL:
        with for_option("--suite"):
            proto = get_suite(args.suite)
        with for_option("--tier"):
            proto.tier(args.tier)
    elif args.tier not in TIERS:
        from robust_ens.errors import RobustEnsError

        raise RobustEnsError(f"--tier {args.tier!r}: use {', '.join(TIERS)}")
    check_device(args.device)
    if args.weights is not None:
        check_input_file(args.weights, "--weights")
    for opt, folder in (("--out", args.out), ("--store", args.store), ("--root", args.root)):
        if folder is not None:
            check_output_folder(folder, opt)

    paper = None
    if args.paper_url or args.paper_title or args.paper_venue:
        paper = lb.Paper(title=args.paper_title, url=args.paper_url, venue=args.paper_venue)
    opts = {"weights": args.weights, "paper": paper, "defense": args.defense, "description": args.description,
            "root": args.root, "replace": args.replace, "out": args.out, "store": args.store, "device": args.device,
            "progress": progress.enabled(), "command": " ".join(["robust-ens", *sys.argv[1:]])}
    if args.suite == ALL:
        return _print_all(submit_all(args.model, args.tier, args.name, **opts))
    res = submit(args.model, args.suite, args.tier, args.name, **opts)
    print(lb.render([res.entry]))
    print(f"\nwrote {res.path} (per-example results in {res.run_dir}; {res.advsets_made} adversarial sets made, "
          f"{res.advsets_reused} reused)")
    files = [recorded_path(f) for f in (res.path, *res.rendered)]
    print("to commit:\n  git add " + " ".join(files))
    return 0


def _print_all(res: object) -> int:
    """Print what ``submit --suite all`` did: a table per suite, what it skipped and why, what to commit."""
    from robust_ens import leaderboard as lb
    from robust_ens.bench.submit import SubmitAll, recorded_path

    assert isinstance(res, SubmitAll)
    files: list[str] = []
    for sub in res.submitted:
        print(f"{sub.entry.protocol.suite}:\n{lb.render([sub.entry])}")
        print(f"wrote {sub.path} ({sub.advsets_made} adversarial sets made, {sub.advsets_reused} reused)\n")
        files += [recorded_path(f) for f in (sub.path, *sub.rendered) if recorded_path(f) not in files]
    for suite, path in res.finished.items():
        print(f"{suite}: finished by an earlier run ({path})")
        files += [recorded_path(path)] if recorded_path(path) not in files else []
    for suite, why in res.skipped.items():
        print(f"{suite}: skipped ({why})")
    made = sum(s.advsets_made for s in res.submitted)
    reused = sum(s.advsets_reused for s in res.submitted)
    print(f"\n{len(res.submitted)} suites evaluated, {len(res.finished)} already finished; {made} adversarial sets "
          f"made, {reused} reused; run folders in {res.out}")
    if files:
        print("to commit:\n  git add " + " ".join(files))
    return 0
