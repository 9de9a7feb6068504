"""``robust-ens corruptions evaluate``: a model under the cifar10-corruptions suite, as a leaderboard entry.

Example:
    robust-ens corruptions evaluate --model zoo:digits_small_cnn_s0,zoo:digits_small_cnn_s1 \\
        --data digits --n 200 --severities 1-5 --baseline base.json --out leaderboards/

runs the engine's corruptions task (the suite's protocol, with one tier made from the options) on
the model (several comma-separated models form an Ensemble) under the preset's 15 common
corruptions at each severity, and writes the schema-2 entry
``<out>/<dataset>/cifar10-corruptions/<name>.json``: clean accuracy and one cell per (corruption,
severity) with k of n and a 95% interval, the mean corruption accuracy and, with ``--baseline``,
the mCE and relative mCE against that entry. Corrupted sets are cached as uint8 in the data cache,
so a repeated run regenerates nothing and costs forward passes only. With the options of one of
the suite's tiers (``robust-ens bench show cifar10-corruptions``) the entry is that tier's.

Images smaller than 32 px (digits: 8x8) are upsampled by an integer factor before corrupting
(the corruptions' minimum size) and the model sees them average-pooled back to the native size.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any

from robust_ens.commands.common import positive_int, seed_int
from robust_ens.errors import RobustEnsError
from robust_ens.precision import PRECISIONS, REFERENCE_PRECISION

log = logging.getLogger(__name__)

#: Options of the command's schema-1 days that the engine's protocol replaced: option -> what replaces it.
DROPPED = {
    "--data-seed": "--data-seed is gone: --seed is the protocol seed, which picks both the examples and the "
                   "corruptions' random numbers (as in every suite)",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``corruptions`` subcommand."""
    p = sub.add_parser(
        "corruptions",
        help="evaluate a model under common corruptions (cifar10-corruptions suite) into a leaderboard entry",
        description=__doc__.split("Example:")[0].strip() if __doc__ else None,
    )
    action = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = action.add_parser("evaluate", help="accuracy per corruption and severity, mean accuracy, (relative) mCE",
                          description=__doc__.split("Example:")[0].strip() if __doc__ else None)
    e.add_argument("--model", required=True, help="comma-separated checkpoint paths or zoo:NAME; several form an Ensemble")
    e.add_argument("--combine", default="logits", choices=("logits", "probs", "vote"),
                   help="how an ensemble of comma-separated models combines members (default logits)")
    e.add_argument("--precision", default=REFERENCE_PRECISION, choices=PRECISIONS,
                   help=f"precision of an ensemble of comma-separated models (default {REFERENCE_PRECISION}, "
                        "the precision entries are measured in)")
    e.add_argument("--data", default="cifar10", help="dataset: cifar10, digits or imagefolder:<path>")
    e.add_argument("--split", default="test", help="split (default test)")
    e.add_argument("--n", type=positive_int, default=None, help="number of examples (default: the whole split)")
    e.add_argument("--data-seed", type=seed_int, default=None, help=argparse.SUPPRESS)
    e.add_argument("--preset", default="cifar10c", help="corruption parameters (default cifar10c)")
    e.add_argument("--corruptions", default="common",
                   help="'common' (the 15 of the mean corruption accuracy, default), 'all' or comma-separated names")
    e.add_argument("--severities", default="1-5", help="severities: '1-5' (default), '3' or '1,3,5'")
    e.add_argument("--seed", type=seed_int, default=0,
                   help="protocol seed: the example subset and the corruptions' random numbers (default 0)")
    e.add_argument("--upscale", default="auto",
                   help="integer upsampling factor for images below 32 px ('auto': the smallest that reaches 32)")
    e.add_argument("--baseline", default=None,
                   help="a cifar10-corruptions entry (JSON, schema 2 or legacy 1) to compute mCE against")
    e.add_argument("--name", default=None, help="entry name (default: --model made file-safe, as bench run names it)")
    e.add_argument("--dataset-label", default=None,
                   help="dataset name recorded in the entry (default: --data; e.g. cifar10-jpeg)")
    e.add_argument("--batch-size", type=positive_int, default=500, help="images per forward batch")
    e.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    e.add_argument("--no-cache", action="store_true", help="do not read or write cached corrupted sets")
    e.add_argument("--out", required=True, help="leaderboard root: the entry goes to <out>/<dataset>/<suite>/<name>.json")
    p.set_defaults(func=run)


def parse_severities(text: str) -> list[int]:
    """``"1-5"``, ``"3"`` or ``"1,3,5"`` -> sorted severities in 1..5."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
    except ValueError as err:
        raise RobustEnsError(f"--severities must look like '1-5', '3' or '1,3,5', got {text!r}") from err
    if not out or not all(1 <= s <= 5 for s in out):
        raise RobustEnsError(f"--severities must name severities in 1..5, got {text!r}")
    return sorted(out)


def parse_corruptions(text: str, preset: str) -> list[str]:
    """``"common"``, ``"all"`` or comma-separated names -> corruption names of ``preset``."""
    from robust_ens.commands.common import for_option
    from robust_ens.corruptions import list_corruptions

    with for_option("--preset"):
        known = list_corruptions(preset)
    if text in ("common", "all"):
        return list_corruptions(preset, subset=text)
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in known]
    if bad or not names:
        raise RobustEnsError(f"--corruptions: unknown corruption(s) {', '.join(bad) or repr(text)} "
                             f"for preset {preset!r}; choose from: {', '.join(known)}")
    return names


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Check every option before any work; returns the parsed corruptions, severities, baseline and upscale."""
    from robust_ens.bench.submit import NAME
    from robust_ens.commands.common import check_device, check_input_file, check_output_folder, for_option
    from robust_ens.corruptions import evaluate as ev

    for option, message in DROPPED.items():
        if getattr(args, option[2:].replace("-", "_"), None) is not None:
            raise RobustEnsError(message)
    severities = parse_severities(args.severities)
    names = parse_corruptions(args.corruptions, args.preset)
    if args.dataset_label is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", args.dataset_label):
        raise RobustEnsError(f"--dataset-label must be a plain name like cifar10-jpeg (it becomes a folder), "
                             f"got {args.dataset_label!r}")
    if args.name is not None and not NAME.match(args.name):
        raise RobustEnsError(f"--name {args.name!r}: use letters, digits and . _ + - only (it becomes a file name)")
    with for_option("--upscale"):
        upscale = "auto" if args.upscale == "auto" else ev.upscale_factor(args.upscale, 32, 32)
    check_device(args.device)
    check_output_folder(args.out)
    baseline = None
    if args.baseline:
        check_input_file(args.baseline, "--baseline")
        with for_option("--baseline"):
            baseline = ev.result_from_entry(args.baseline)
            ev.check_baseline(baseline, names, severities, args.preset)
    return {"corruptions": names, "severities": severities, "baseline": baseline, "upscale": upscale}


def preflight(args: argparse.Namespace, upscale: str | int, device: Any) -> int:
    """Refuse bad ``--data``, ``--model``, ``--n`` or ``--upscale`` before any work; returns the number of examples.

    Refused: data that does not load, a model that does not fit it, ``--n`` beyond the split and
    images that stay below the corruptions' 32 px.
    """
    from robust_ens import data
    from robust_ens.bench.examples import dataset_label
    from robust_ens.bench.targets import check_target, resolve_target
    from robust_ens.commands.common import for_option
    from robust_ens.corruptions.evaluate import upscale_factor

    with for_option("--data"):
        xu, yall = data.load_uint8(args.data, args.split)
        num_classes = data.info(args.data).num_classes
    with for_option("--model"):
        target = resolve_target(args.model, dataset=args.data, device=device, combine=args.combine,
                                precision=args.precision)
    try:
        check_target(target, xu[:2].float().div(255), num_classes, dataset_label(args.data))
    except RobustEnsError as err:
        raise RobustEnsError(f"--model {args.model} does not fit --data {args.data}: {err}") from None
    if args.n is not None and args.n > len(yall):
        raise RobustEnsError(f"--n {args.n} exceeds the {len(yall)} examples of --data {args.data} {args.split}")
    side = min(xu.shape[-2:])
    if side * upscale_factor(upscale, side, side) < 32:
        raise RobustEnsError(f"--upscale {upscale}: {args.data} images ({side} px) stay below the corruptions' "
                             f"32 px; use --upscale auto")
    return args.n or len(yall)


def run(args: argparse.Namespace) -> int:
    """Run ``corruptions evaluate``; returns the exit status."""
    import dataclasses
    import tempfile

    from robust_ens.bench.corruptions_task import corruptions_protocol, with_mce
    from robust_ens.bench.report import to_entries
    from robust_ens.bench.runner import TargetArg, run_suite
    from robust_ens.commands.common import progress_enabled
    from robust_ens.device import resolve_device
    from robust_ens.leaderboard import write_entries

    opts = check_args(args)
    device = resolve_device(args.device)
    n = preflight(args, opts["upscale"], device)
    proto = corruptions_protocol(args.data, n=n, corruptions=opts["corruptions"], severities=opts["severities"],
                                 split=args.split, seed=args.seed, preset=args.preset, batch_size=args.batch_size,
                                 upscale=opts["upscale"])
    (tier,) = proto.tiers
    arg = TargetArg(args.model, name=args.name, combine=args.combine, precision=args.precision)
    log.info("evaluating %s on %d %s images under %d corruptions x %d severities (tier %s)", args.model, n,
             args.data, len(opts["corruptions"]), len(opts["severities"]), tier)
    with tempfile.TemporaryDirectory(prefix="robust-ens-corruptions-") as run_dir:
        result = run_suite(proto, tier, [arg], run_dir, device=device, progress=progress_enabled(),
                           target_option="--model", corruption_cache=not args.no_cache)
        if args.dataset_label is not None:
            result = dataclasses.replace(result, dataset=args.dataset_label)
        command = " ".join(["robust-ens", *sys.argv[1:]]) if sys.argv else None
        (entry,) = to_entries(result, command, run_dir=run_dir, targets=[arg])
    if opts["baseline"] is not None:
        entry = with_mce(entry, opts["baseline"])
    (path,) = write_entries([entry], args.out)
    metrics = entry.results.metrics
    summary = (f"clean {100 * entry.results.clean.acc:.2f}%, mean corruption accuracy "
               f"{100 * metrics['mean_corruption_accuracy']:.2f}%")
    if "relative_mCE" in metrics:
        summary += f", mCE {metrics.get('mCE', float('nan')):.1f}, relative mCE {metrics['relative_mCE']:.1f}"
    print(f"wrote {path}: {summary}")
    return 0
