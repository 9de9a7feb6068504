"""``robust-ens bench``: list, show and run the benchmark protocols.

Example:
    robust-ens bench list
    robust-ens bench show digits-transfer
    robust-ens bench run digits-transfer --tier smoke --target zoo:digits_small_cnn_s2 --out runs/dt-smoke

A run folder is resumable: run the same command again after an interruption and finished cells
are read, not recomputed. Adversarial sets go to the machine-wide store ($ROBUST_ENS_CACHE/advsets)
unless --store names another: adding a --target to a finished run, or running another command on
the same protocol (make demo, submit), costs forward passes only, and runs started together make
each set once between them. Under ``torchrun --nproc-per-node N`` the batches are sharded across
the processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from robust_ens.bench.protocol import FILTERS
from robust_ens.errors import RobustEnsError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand and its ``list``, ``show`` and ``run`` actions."""
    p = sub.add_parser("bench", help="list, show and run the benchmark protocols (suites)",
                       description=__doc__.split("Example:")[0].strip() if __doc__ else None)
    acts = p.add_subparsers(dest="bench_command", metavar="ACTION")
    ls = acts.add_parser("list", help="the registered suites, one line each")
    ls.set_defaults(func=run_list)
    show = acts.add_parser("show", help="a suite's protocol: dataset, threat model, tiers")
    show.add_argument("suite", help="suite name (see 'bench list') or a protocol .toml file")
    show.add_argument("--json", action="store_true", help="print the protocol as JSON")
    show.set_defaults(func=run_show)
    r = acts.add_parser("run", help="run one tier of a suite on some targets and print the summary table")
    r.add_argument("suite", help="suite name (see 'bench list') or a protocol .toml file")
    r.add_argument("--target", action=_TargetAction, metavar="SPEC",
                   help="zoo:NAME, a checkpoint path or folder, pkg.module:factory, timm:NAME, or SPEC,SPEC "
                        "(an ensemble); repeatable; default: the tier's own target panel")
    r.add_argument("--weights", action=_TargetAction, metavar="PATH",
                   help="weights of the --target before it (pkg.module:factory or timm:NAME)")
    r.add_argument("--name", action=_TargetAction, metavar="NAME",
                   help="display name of the --target before it")
    r.add_argument("--tier", default="smoke", help="smoke (seconds), small (CPU minutes) or full (GPU); default smoke")
    r.add_argument("--out", default=None, help="run folder (default runs/<suite>-<tier>)")
    r.add_argument("--store", default=None, help="adversarial-set store folder (default: the machine-wide "
                   "$ROBUST_ENS_CACHE/advsets, shared by every run)")
    r.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--entries", action="store_true", help="also write leaderboard entries into <out>/entries/")
    r.add_argument("--filter", default=None, choices=FILTERS,
                   help="keep only the examples every target classifies correctly (TA-Bench's rule; the entry records "
                        "how many were kept); default: the tier's own (default run folder runs/<suite>-<tier>-<filter>)")
    r.add_argument("--data", default=None, help="a folder searched first for the suite's dataset (imagenet-transfer: "
                   "TransferAttack's images/ + labels.csv); depth suites: the KITTI-C tree (robust-ens corrupt "
                   "--preset kittic --clean)")
    r.add_argument("--gt", default=None, help="depth suites: ground-truth depths (default <data>/gt_depths.npz)")
    r.set_defaults(func=run_run, targets=[])
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


class _TargetAction(argparse.Action):
    """``--target SPEC [--weights PATH] [--name NAME]``: weights and name belong to the target before them.

    All three fill ``namespace.targets`` (a list of ``{"spec", "weights", "name"}``).
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        targets = list(getattr(namespace, "targets", None) or [])
        if option_string == "--target":
            targets.append({"spec": values, "weights": None, "name": None})
        elif not targets:
            parser.error(f"{option_string} must follow the --target it belongs to")
        else:
            key = "weights" if option_string == "--weights" else "name"
            if targets[-1][key] is not None:
                parser.error(f"{option_string} is given twice for --target {targets[-1]['spec']}")
            targets[-1] = {**targets[-1], key: values}
        namespace.targets = targets


def run_list(args: argparse.Namespace) -> int:
    """Print the registered suites."""
    from tabulate import tabulate

    from robust_ens.bench import get_suite, list_suites

    rows = []
    for name in list_suites():
        proto = get_suite(name)
        rows.append([name, proto.version, proto.task, proto.kind, proto.dataset, ", ".join(proto.tiers), proto.description])
    print(tabulate(rows, headers=["suite", "version", "task", "ranks", "dataset", "tiers", "what"], tablefmt="github"))
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print one suite's protocol."""
    from dataclasses import asdict

    from tabulate import tabulate

    from robust_ens.bench import get_suite

    proto = get_suite(args.suite)
    if args.json:
        print(json.dumps(asdict(proto), indent=1, default=str))
        return 0
    print(f"{proto.suite} v{proto.version} ({proto.task}, ranks {proto.kind}s): {proto.description}")
    print(f"dataset {proto.dataset} {proto.split}, seed {proto.seed}, threat model {proto.norm}")
    if proto.reference:
        print(f"reference: {proto.reference}")
    if proto.success == "all-images":
        print("success rate: over every example (1 - accuracy, TransferAttack's ASR), not over the clean-correct ones")
    for t in proto.tiers.values():
        if t.filter:
            print(f"tier {t.name}: filter {t.filter} (only the examples every target classifies correctly)")
    rows = [[t.name, t.n, t.batch_size, ", ".join(f"{e:.4g}" for e in t.eps) or "-",
             ", ".join(t.attacks) or ", ".join(t.corruptions) or "-", _surrogates(t),
             ", ".join(t.targets) or "(--target)", t.steps or "-", t.sanity.n or "-"]
            for t in proto.tiers.values()]
    print(tabulate(rows, headers=["tier", "n", "batch", "eps", "attacks / corruptions", "surrogates", "targets",
                                  "steps", "sanity n"], tablefmt="github"))
    if proto.attacks:
        print(tabulate([[a.name, a.attack, a.alpha if a.alpha is not None else "-",
                         ", ".join(f"{k}={v}" for k, v in a.params.items())] for a in proto.attacks.values()],
                       headers=["attack", "registered", "alpha", "parameters"], tablefmt="github"))
    return 0


def run_run(args: argparse.Namespace) -> int:
    """Run one tier of a suite and print its summary table."""
    from robust_ens import progress
    from robust_ens.bench import distributed, get_suite
    from robust_ens.bench.report import summary_table, to_entries
    from robust_ens.bench.runner import TargetArg, run_suite
    from robust_ens.commands.common import check_device, check_input_file, check_output_folder, for_option
    from robust_ens.device import resolve_device
    from robust_ens.leaderboard import write_entries

    proto = get_suite(args.suite)
    with for_option("--tier"):
        proto.tier(args.tier)
    check_device(args.device)
    if proto.task != "depth" and args.gt is not None:
        raise RobustEnsError(f"--gt is for depth suites (kitti-c); {proto.suite} uses {proto.dataset}")
    if args.gt is not None:
        check_input_file(args.gt, "--gt")
    if args.data is not None and not Path(args.data).is_dir():
        what = "a KITTI-C tree" if proto.task == "depth" else f"holding {proto.dataset}"
        raise RobustEnsError(f"--data {args.data} is not a folder ({what})")
    for t in args.targets:
        if t["weights"] is not None:
            check_input_file(t["weights"], "--weights")
    if args.store is not None:
        check_output_folder(args.store, "--store")
    default_out = f"runs/{proto.suite}-{args.tier}" + (f"-{args.filter}" if args.filter else "")
    check_output_folder(args.out or default_out, "--out")
    targets = [TargetArg(t["spec"], t["weights"], t["name"]) for t in args.targets]
    out = Path(args.out or default_out)
    device = resolve_device(args.device)
    if proto.task == "depth":
        return _run_depth(proto, args, out, device)
    result = run_suite(proto, args.tier, targets, out, device=device, store=args.store,
                       progress=progress.enabled(), filter=args.filter, data_root=args.data)
    if not distributed.is_main():
        return 0
    if args.entries:
        write_entries(to_entries(result, " ".join(["robust-ens", *sys.argv[1:]]), run_dir=out, targets=targets),
                      out / "entries", flat=True)
    print(summary_table(result))
    c = result.cost
    print(f"\n{proto.suite} v{proto.version} tier {args.tier} on {result.dataset} (n={result.n}): "
          f"{c.seconds:.1f} s on {c.device}, {c.advsets_made} adversarial sets made, "
          f"{c.advsets_reused} reused{'; ' + c.speed_text() if c.speed_text() else ''}; "
          f"per-example results and summary.json in {out}")
    return 0


def _run_depth(proto: object, args: argparse.Namespace, out: Path, device: torch.device) -> int:
    from robust_ens.bench.depth_task import depth_table, run_depth

    if len(args.targets) != 1 or args.data is None:
        raise RobustEnsError("a depth suite takes one --target pkg.module:factory and --data KITTI_C_ROOT")
    spec = args.targets[0]["spec"]
    summary = run_depth(proto, args.tier, spec, args.data, out, gt=args.gt, device=device)  # type: ignore[arg-type]
    print(f"{depth_table(summary, spec)}; summary.json in {out}")
    return 0


def _surrogates(t: Any) -> str:
    """A tier's surrogates, with the attacks that have their own (``attack_surrogates``)."""
    own = "; ".join(f"{a}: {', '.join(v)}" for a, v in t.attack_surrogates.items())
    return (", ".join(t.surrogates) or "-") + (f" ({own})" if own else "")
