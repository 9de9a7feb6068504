"""``robust-ens corruptions evaluate``: the cifar10-corruptions suite as a leaderboard entry.

Example:
    robust-ens corruptions evaluate --model zoo:digits_small_cnn_s0,zoo:digits_small_cnn_s1 \\
        --data digits --n 200 --severities 1-5 --baseline base.json --out leaderboards/

evaluates the model (several comma-separated models form a logit-averaging Ensemble) on the
preset's 15 common corruptions at each severity, and writes the entry
``<out>/<dataset>/cifar10-corruptions/<name>.json`` (clean accuracy, mean corruption accuracy,
per-corruption accuracies ``acc/<corruption>/<severity>``, and with ``--baseline`` the mCE and
relative mCE against that entry). Corrupted sets are cached as uint8 in the data cache, so an
interrupted or repeated run regenerates nothing and costs forward passes only.

Images smaller than 32 px (digits: 8x8) are upsampled by an integer factor before corrupting
(the corruptions' minimum size) and the model sees them average-pooled back to the native size.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from robust_ens.commands.common import positive_int, seed_int
from robust_ens.device import resolve_device
from robust_ens.errors import RobustEnsError
from robust_ens.precision import PRECISIONS, REFERENCE_PRECISION

log = logging.getLogger(__name__)


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
                   help="how an ensemble combines members (default logits)")
    e.add_argument("--precision", default=REFERENCE_PRECISION, choices=PRECISIONS,
                   help=f"ensemble precision (default {REFERENCE_PRECISION}, the precision entries are measured in)")
    e.add_argument("--data", default="cifar10", help="dataset: cifar10, digits or imagefolder:<path>")
    e.add_argument("--split", default="test", help="split (default test)")
    e.add_argument("--n", type=positive_int, default=None, help="number of examples (default: the whole split)")
    e.add_argument("--data-seed", type=seed_int, default=0, help="seed of the example subset (default 0)")
    e.add_argument("--preset", default="cifar10c", help="corruption parameters (default cifar10c)")
    e.add_argument("--corruptions", default="common",
                   help="'common' (the 15 of the mean corruption accuracy, default), 'all' or comma-separated names")
    e.add_argument("--severities", default="1-5", help="severities: '1-5' (default), '3' or '1,3,5'")
    e.add_argument("--seed", type=seed_int, default=0, help="corruption seed (default 0)")
    e.add_argument("--upscale", default="auto",
                   help="integer upsampling factor for images below 32 px ('auto': the smallest that reaches 32)")
    e.add_argument("--baseline", default=None, help="a cifar10-corruptions entry (JSON) to compute mCE against")
    e.add_argument("--name", default=None, help="entry name (default: derived from --model)")
    e.add_argument("--dataset-label", default=None,
                   help="dataset name recorded in the entry (default: --data; e.g. cifar10-jpeg)")
    e.add_argument("--batch-size", type=positive_int, default=500, help="images per corruption/forward batch")
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


def run(args: argparse.Namespace) -> int:
    """Run ``corruptions evaluate``; returns the exit status."""
    import re

    from robust_ens import data
    from robust_ens import leaderboard as lb
    from robust_ens.bench.runner import dataset_label
    from robust_ens.bench.submit import NAME
    from robust_ens.bench.targets import check_target, resolve_target
    from robust_ens.commands.common import (
        check_device,
        check_input_file,
        check_output_folder,
        for_option,
        progress_enabled,
    )
    from robust_ens.corruptions import evaluate as ev
    from robust_ens.corruptions import list_corruptions
    from robust_ens.ensemble import Ensemble

    severities = parse_severities(args.severities)
    if args.corruptions in ("common", "all"):
        names = list_corruptions(args.preset, subset=args.corruptions)
    else:
        names = [c.strip() for c in args.corruptions.split(",") if c.strip()]
        known = list_corruptions(args.preset)
        bad = [c for c in names if c not in known]
        if bad or not names:
            raise RobustEnsError(f"--corruptions: unknown corruption(s) {', '.join(bad) or repr(args.corruptions)} "
                                 f"for preset {args.preset!r}; choose from: {', '.join(known)}")
    if args.dataset_label is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", args.dataset_label):
        raise RobustEnsError(f"--dataset-label must be a plain name like cifar10-jpeg (it becomes a folder), "
                             f"got {args.dataset_label!r}")
    if args.name is not None and not NAME.match(args.name):
        raise RobustEnsError(f"--name {args.name!r}: use letters, digits and . _ + - only (it becomes a file name)")
    check_device(args.device)
    check_output_folder(args.out)
    baseline = None
    if args.baseline:
        check_input_file(args.baseline, "--baseline")
        with for_option("--baseline"):
            baseline = ev.result_from_entry(args.baseline)
    if baseline is not None:
        missing = [c for c in names if c not in baseline["accuracy"]]
        if missing:
            raise RobustEnsError(f"the baseline {args.baseline} has no accuracies for: {', '.join(missing)}")
        if baseline["protocol"].get("preset") not in (None, args.preset):
            raise RobustEnsError(f"the baseline used preset {baseline['protocol'].get('preset')!r}, not {args.preset!r}")
    device = resolve_device(args.device)
    with for_option("--model"):
        target = resolve_target(args.model, dataset=args.data, device=device, combine=args.combine,
                                precision=args.precision)
    with for_option("--data"):
        xu, yall = data.load_uint8(args.data, args.split)
        num_classes = data.info(args.data).num_classes
        label = args.dataset_label or dataset_label(args.data)
    try:
        check_target(target, xu[:2].float().div(255), num_classes, label)
    except RobustEnsError as err:
        raise RobustEnsError(f"--model {args.model} does not fit --data {args.data}: {err}") from None
    with for_option("--n"):
        idx = data.subset_indices(yall, args.n, args.data_seed)
    x, y = xu[idx], yall[idx]
    factor = ev.upscale_factor(str(args.upscale), x.shape[-2], x.shape[-1])
    x, model = ev.upscale(x, target.module, factor)
    log.info("evaluating %s on %d %s images (%dx%d) under %d corruptions x %d severities",
             args.model, len(y), args.data, x.shape[-2], x.shape[-1], len(names), len(severities))
    res = ev.evaluate_corruptions(
        model, x, y, preset=args.preset, corruptions=names, severities=severities, seed=args.seed,
        batch_size=args.batch_size, device=device, cache=not args.no_cache, baseline=baseline,
        baseline_name=baseline["name"] if baseline else None, progress=progress_enabled(),
    )
    inner = target.module
    members = list(inner.members) if isinstance(inner, Ensemble) else [inner]
    arch = target.architecture if len(members) == 1 else f"ensemble({target.architecture})"
    settings: dict[str, Any] = {"split": args.split, "data_seed": args.data_seed, "upscale": factor,
                                "models": args.model}
    if isinstance(inner, Ensemble):
        settings.update({"combine": args.combine, "precision": args.precision})
    entry = ev.to_entry(
        res, name=args.name or ev.default_entry_name(args.model), architecture=arch, n_members=len(members),
        checkpoint_sha256=target.sha256s,
        parameters={"n_parameters": int(sum(p.numel() for p in inner.parameters()))},
        dataset=label, settings=settings, device=str(device),
        forward_passes=len(y) * (1 + len(names) * len(severities)) * len(members),
        command=" ".join(["robust-ens", *sys.argv[1:]]) if sys.argv else None,
    )
    path = lb.write(entry, root=args.out)
    metrics = entry.results.metrics
    summary = (f"clean {100 * entry.results.clean_accuracy:.2f}%, mean corruption accuracy "
               f"{100 * metrics['mean_corruption_accuracy']:.2f}%")
    if "relative_mCE" in metrics:
        summary += f", mCE {metrics.get('mCE', float('nan')):.1f}, relative mCE {metrics['relative_mCE']:.1f}"
    print(f"wrote {path}: {summary}")
    return 0
