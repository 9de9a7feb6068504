"""``robust-ens data``: locate, decode and cache a dataset once."""

from __future__ import annotations

import argparse
from pathlib import Path

from robust_ens.commands.common import data_hints, for_option, positive_int
from robust_ens.errors import RobustEnsError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` subcommand."""
    p = sub.add_parser("data", help="find a dataset, decode it once into the uint8 cache, print a summary")
    p.add_argument("name", help="cifar10, digits or imagefolder:<path>")
    p.add_argument("--root", default=None, help="folder to search first")
    p.add_argument("--download", action="store_true", help="allow torchvision to download CIFAR-10")
    p.add_argument("--size", type=positive_int, default=None, help="image size for imagefolder sources")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``data``: decode every split the dataset has and print a summary line per split."""
    from robust_ens import data
    from robust_ens.commands.common import progress_enabled

    if args.root is not None and not Path(args.root).is_dir():
        raise RobustEnsError(f"--root {args.root} is not an existing folder")
    with for_option("name"):
        splits = data.splits(args.name)
    for split in splits:
        with for_option("name"), data_hints(root="--root", download="--download"):
            x, y = data.load_uint8(args.name, split, root=args.root, download=args.download, size=args.size,
                                   progress=progress_enabled())
        print(f"{args.name} {split}: {tuple(x.shape)} uint8, {int(y.max()) + 1 if len(y) else 0} classes; "
              f"cache: {data.cache_dir()}")
    return 0
