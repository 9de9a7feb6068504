"""``robust-ens corrupt``: build a corrupted copy of an image set (KITTI-C from a KITTI raw copy).

Example:
    robust-ens corrupt --preset kittic --src /data/kitti_raw --split eigen --out /data/kitti_c

reads the Eigen test split's left images (``<date>/<drive>/image_02/data/<frame>.png``), resizes
them to 640x192 (Pillow LANCZOS, RoboDepth's ``ANTIALIAS``) and writes every corruption and
severity as PNG in RoboDepth's layout ``<out>/<corruption>/<severity>/<relative path>``. Existing
outputs are kept, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robust_ens.commands.common import positive_int, seed_int
from robust_ens.corruptions.tree import IMAGE_EXTS, SPLIT_FILE_CANDIDATES, resolve_split  # noqa: F401 - re-exported
from robust_ens.errors import RobustEnsError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``corrupt`` subcommand."""
    p = sub.add_parser(
        "corrupt",
        help="write a corrupted copy of an image set (KITTI-C, CIFAR-10-C style) as PNG",
        description=__doc__.split("Example:")[0].strip() if __doc__ else None,
    )
    p.add_argument("--preset", default="kittic", help="kittic (default), imagenetc or cifar10c")
    p.add_argument("--src", required=True, help="KITTI raw root (or any image folder with --split all)")
    p.add_argument("--split", default="eigen",
                   help="'eigen' (Eigen test split; file looked up under --src or given by --split-file), "
                        "'all' (every image under --src) or a path to a split file")
    p.add_argument("--split-file", default=None, help="split file: lines 'DATE/DRIVE FRAME l|r' or relative paths")
    p.add_argument("--out", required=True, help="output root: <out>/<corruption>/<severity>/<relative path>")
    p.add_argument("--corruptions", default="all", help="comma-separated names (default: all of the preset)")
    p.add_argument("--severities", default="1,2,3,4,5", help="comma-separated severities (default 1..5)")
    p.add_argument("--size", default=None, help="HxW to resize to (default 192x640 for kittic, none otherwise)")
    p.add_argument("--seed", type=seed_int, default=42, help="corruption seed (default 42, RoboDepth's)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images corrupted per batch")
    p.add_argument("--device", default="cpu", help="torch device for the corruptions (cpu, cuda)")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    p.add_argument("--clean", action="store_true", help="also write the resized clean images to <out>/clean/")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads for the corruptions on CPU (default 1: PNG writing dominates and runs in "
                        "the other cores' writer threads; more torch threads only contend with it)")
    p.add_argument("--png-compression", type=int, default=1,
                   help="zlib level of the PNGs, 0-9 (default 1: about 2-4x faster to write than Pillow's 6, "
                        "files about 8%% larger; the pixels are the same at every level)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse the options, write the corrupted tree; returns 0 on success."""
    from robust_ens.commands.common import (
        check_device,
        check_input_file,
        check_output_folder,
        progress_enabled,
    )
    from robust_ens.corruptions import list_corruptions
    from robust_ens.corruptions.tree import parse_size, write_corrupted_tree

    src = Path(args.src).expanduser()
    if not src.is_dir():
        raise RobustEnsError(f"--src {src} is not a folder")
    names = list_corruptions(args.preset)
    if args.corruptions != "all":
        wanted = [c.strip() for c in args.corruptions.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in names]
        if unknown or not wanted:
            raise RobustEnsError(f"--corruptions: unknown corruption(s) {', '.join(unknown) or repr(args.corruptions)} "
                                 f"for preset {args.preset}; known: {', '.join(names)}")
        names = wanted
    try:
        sevs = [int(s) for s in args.severities.split(",")]
    except ValueError as err:
        raise RobustEnsError(f"--severities must be comma-separated integers, got {args.severities!r}") from err
    if any(s not in range(1, 6) for s in sevs):
        raise RobustEnsError(f"severities must be within 1..5, got {sevs}")
    if args.batch_size < 1:
        raise RobustEnsError("--batch-size must be at least 1")
    level = int(getattr(args, "png_compression", 1))
    if level not in range(10):
        raise RobustEnsError(f"--png-compression must be within 0..9, got {level}")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise RobustEnsError(f"--threads must be at least 1, got {threads}")
    check_device(args.device)
    if args.split_file is not None:
        check_input_file(args.split_file, "--split-file")
    out = check_output_folder(Path(args.out).expanduser())
    n_files, written = write_corrupted_tree(
        src, out, names, sevs, preset=args.preset, split=args.split, split_file=args.split_file,
        size=parse_size(args.size, args.preset), seed=args.seed, batch_size=args.batch_size, device=args.device,
        overwrite=args.overwrite, clean=args.clean, threads=threads, png_compression=level,
        progress=progress_enabled(),
    )
    print(f"{n_files} images x {len(names)} corruptions x {len(sevs)} severities -> {out} ({written} written)")
    return 0
