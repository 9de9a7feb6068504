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
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from robust_ens.errors import RobustEnsError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_FILE_CANDIDATES = (
    "splits/eigen.txt", "splits/eigen/test_files.txt", "eigen.txt", "eigen_test_files.txt", "test_files.txt",
)


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
    p.add_argument("--seed", type=int, default=42, help="corruption seed (default 42, RoboDepth's)")
    p.add_argument("--batch-size", type=int, default=16, help="images corrupted per batch")
    p.add_argument("--device", default="cpu", help="torch device for the corruptions (cpu, cuda)")
    p.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    p.add_argument("--clean", action="store_true", help="also write the resized clean images to <out>/clean/")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the corruptions on CPU (default 1: PNG writing dominates and runs in "
                        "the other cores' writer threads; more torch threads only contend with it)")
    p.add_argument("--png-compression", type=int, default=1,
                   help="zlib level of the PNGs, 0-9 (default 1: about 2-4x faster to write than Pillow's 6, "
                        "files about 8%% larger; the pixels are the same at every level)")
    p.set_defaults(func=run)


def _parse_split_line(line: str) -> str | None:
    parts = line.split()
    if not parts:
        return None
    if len(parts) == 1 or Path(parts[0]).suffix.lower() in IMAGE_EXTS:
        return parts[0]
    folder, frame = parts[0], parts[1]
    side = parts[2] if len(parts) > 2 else "l"
    cam = {"l": "image_02", "r": "image_03"}.get(side, "image_02")
    return f"{folder}/{cam}/data/{int(frame):010d}"


def resolve_split(src: Path, split: str, split_file: str | None) -> list[str]:
    """Relative image paths (without extension when the split file gives frame numbers)."""
    if split == "all" and split_file is None:
        files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise RobustEnsError(f"no images ({', '.join(IMAGE_EXTS)}) under {src}")
        return files
    path: Path | None = Path(split_file) if split_file else None
    if path is None and split not in ("eigen", "all"):
        path = Path(split)
    if path is None:
        for cand in SPLIT_FILE_CANDIDATES:
            if (src / cand).is_file():
                path = src / cand
                break
    if path is None or not path.is_file():
        looked = ", ".join(str(src / c) for c in SPLIT_FILE_CANDIDATES)
        raise RobustEnsError(
            f"split file for {split!r} not found (looked in: {looked}). Pass --split-file PATH with the Eigen "
            "test split (697 lines 'DATE/DRIVE FRAME l', e.g. MonoDepth2's splits/eigen/test_files.txt or "
            "RoboDepth's splits/eigen.txt), or use --split all"
        )
    entries = [e for e in (_parse_split_line(ln) for ln in path.read_text().splitlines()) if e]
    if not entries:
        raise RobustEnsError(f"split file {path} lists no images")
    return entries


def _find_image(src: Path, rel: str) -> Path:
    p = src / rel
    if p.suffix.lower() in IMAGE_EXTS and p.is_file():
        return p
    for ext in IMAGE_EXTS:
        if (src / (rel + ext)).is_file():
            return src / (rel + ext)
    raise RobustEnsError(f"image {rel} listed in the split is missing under {src} (tried {', '.join(IMAGE_EXTS)})")


def _parse_size(text: str | None, preset: str) -> tuple[int, int] | None:
    if text is None:
        return (192, 640) if preset == "kittic" else None
    if text.lower() in ("none", "native"):
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise RobustEnsError(f"--size must look like 192x640 (HxW), got {text!r}") from err
    return h, w


def run(args: argparse.Namespace) -> int:
    """Corrupt the split and write PNGs; returns 0 on success."""
    import numpy as np
    import torch
    from PIL import Image

    from robust_ens.commands.common import progress_enabled
    from robust_ens.corruptions import corrupt, list_corruptions

    src = Path(args.src).expanduser()
    if not src.is_dir():
        raise RobustEnsError(f"--src {src} is not a folder")
    names = list_corruptions(args.preset)
    if args.corruptions != "all":
        wanted = [c.strip() for c in args.corruptions.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise RobustEnsError(f"unknown corruption(s) {', '.join(unknown)} for preset {args.preset}; known: {', '.join(names)}")
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
    size = _parse_size(args.size, args.preset)
    rels = resolve_split(src, args.split, args.split_file)
    files = [_find_image(src, r) for r in rels]
    out_rel = [f.relative_to(src).with_suffix(".png").as_posix() for f in files]
    out = Path(args.out).expanduser()
    device = torch.device(args.device)

    def load(path: Path) -> np.ndarray:
        with Image.open(path) as f:
            im = f.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS)  # RoboDepth's ANTIALIAS
            return np.asarray(im, dtype=np.uint8)

    def save(arr: np.ndarray, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp, compress_level=level)
            tmp.replace(path)
        except OSError as err:
            raise RobustEnsError(f"cannot write {path}: {err}; finished images are kept, rerun to resume") from err

    from tqdm.auto import tqdm

    jobs = [(n, s) for n in names for s in sevs]
    bar = tqdm(total=len(jobs) * len(files), disable=not progress_enabled(), unit="img", desc="corrupt")
    written = 0
    # PNG encoding (Pillow releases the GIL) runs in writer threads while the next corruption is
    # computed; at most ``max_pending`` images wait to be written, so memory stays bounded
    workers = max(2, min(16, os.cpu_count() or 2))
    max_pending = max(2 * args.batch_size, 4 * workers)
    pending: deque[Future[None]] = deque()

    def write(arr: np.ndarray, path: Path) -> None:
        pending.append(pool.submit(save, arr, path))
        while len(pending) > max_pending:
            pending.popleft().result()  # also re-raises a failed write

    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise RobustEnsError(f"--threads must be at least 1, got {threads}")
    torch_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads or 1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(files), args.batch_size):
                idx = list(range(start, min(start + args.batch_size, len(files))))
                todo = [(n, s) for n, s in jobs
                        if args.overwrite or not all((out / n / str(s) / out_rel[i]).is_file() for i in idx)]
                want_clean = args.clean and (args.overwrite or not all((out / "clean" / out_rel[i]).is_file() for i in idx))
                if not todo and not want_clean:
                    bar.update(len(jobs) * len(idx))
                    continue
                arrays = list(pool.map(lambda i: load(files[i]), idx))
                shapes = {a.shape for a in arrays}
                if len(shapes) != 1:
                    raise RobustEnsError(f"images of different sizes {sorted(shapes)} in one batch; pass --size HxW")
                x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device).float().div_(255.0)
                index = torch.tensor(idx)
                if want_clean:
                    for i, a in zip(idx, arrays, strict=True):
                        write(a, out / "clean" / out_rel[i])
                for n, s in jobs:
                    if (n, s) in todo:
                        y = corrupt(x, n, s, preset=args.preset, seed=args.seed, index=index)
                        y8 = (y * 255.0 + 0.5).clamp_(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
                        for i, a in zip(idx, y8, strict=True):
                            write(a, out / n / str(s) / out_rel[i])
                        written += len(idx)
                    bar.update(len(idx))
            while pending:
                pending.popleft().result()
    finally:
        torch.set_num_threads(torch_threads)
    bar.close()
    log.info("wrote %d corrupted images (%d corruptions x %d severities x %d images) under %s",
             written, len(names), len(sevs), len(files), out)
    print(f"{len(files)} images x {len(names)} corruptions x {len(sevs)} severities -> {out} ({written} written)")
    return 0
