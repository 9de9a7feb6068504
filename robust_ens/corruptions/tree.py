"""Writing a corrupted copy of an image tree (KITTI-C in RoboDepth's layout) as PNG files.

``write_corrupted_tree`` is what ``robust-ens corrupt`` runs: images are read and corrupted in
batches (per-example seeding, so the output does not depend on the batch size), PNG encoding
overlaps the next corruption in writer threads, every file is written through a temp file and a
rename, and images already present are kept, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from robust_ens.atomic import atomic_write
from robust_ens.errors import RobustEnsError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_FILE_CANDIDATES = (
    "splits/eigen.txt", "splits/eigen/test_files.txt", "eigen.txt", "eigen_test_files.txt", "test_files.txt",
)


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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RobustEnsError(f"--split-file {path} is not a readable text file ({type(err).__name__})") from None
    try:
        entries = [e for e in (_parse_split_line(ln) for ln in lines) if e]
    except ValueError:
        raise RobustEnsError(f"--split-file {path}: lines must be 'DATE/DRIVE FRAME l|r' or relative paths") from None
    if not entries:
        raise RobustEnsError(f"split file {path} lists no images")
    return entries


def find_image(src: Path, rel: str) -> Path:
    p = src / rel
    if p.suffix.lower() in IMAGE_EXTS and p.is_file():
        return p
    for ext in IMAGE_EXTS:
        if (src / (rel + ext)).is_file():
            return src / (rel + ext)
    raise RobustEnsError(f"image {rel} listed in the split is missing under {src} (tried {', '.join(IMAGE_EXTS)})")


def parse_size(text: str | None, preset: str) -> tuple[int, int] | None:
    if text is None:
        return (192, 640) if preset == "kittic" else None
    if text.lower() in ("none", "native"):
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise RobustEnsError(f"--size must look like 192x640 (HxW), got {text!r}") from err
    if h < 1 or w < 1:
        raise RobustEnsError(f"--size must be positive (HxW like 192x640), got {text!r}")
    return h, w


def write_corrupted_tree(
    src: Path,
    out: Path,
    names: Sequence[str],
    severities: Sequence[int],
    *,
    preset: str = "kittic",
    split: str = "all",
    split_file: str | None = None,
    size: tuple[int, int] | None = None,
    seed: int = 42,
    batch_size: int = 16,
    device: str = "cpu",
    overwrite: bool = False,
    clean: bool = False,
    threads: int | None = None,
    png_compression: int = 1,
    progress: bool = True,
) -> tuple[int, int]:
    """Corrupt the split's images and write ``<out>/<corruption>/<severity>/<relative path>.png``.

    Returns:
        ``(number of source images, number of PNGs written now)``.

    Raises:
        RobustEnsError: missing images, images of different sizes in one batch (pass ``size``),
            or a write that fails (finished images are kept).
    """
    import numpy as np
    import torch

    from robust_ens import progress as _progress
    from robust_ens.corruptions import corrupt
    from robust_ens.threads import small_work_threads, use_threads

    level = png_compression
    rels = resolve_split(src, split, split_file)
    files = [find_image(src, r) for r in rels]
    out_rel = [f.relative_to(src).with_suffix(".png").as_posix() for f in files]
    dev = torch.device(device)

    def load(path: Path) -> np.ndarray:
        return _load_rgb(path, size)

    def save(arr: np.ndarray, path: Path) -> None:
        _save_png(arr, path, level)

    jobs = [(n, s) for n in names for s in severities]
    bar = _progress.bar(total=len(jobs) * len(files), enable=progress, unit="img", desc="corrupt")
    written = 0
    # PNG encoding (Pillow releases the GIL) runs in writer threads while the next corruption is
    # computed; at most ``max_pending`` images wait to be written, so memory stays bounded
    workers = max(2, min(16, os.cpu_count() or 2))
    max_pending = max(2 * batch_size, 4 * workers)
    pending: deque[Future[None]] = deque()

    def write(arr: np.ndarray, path: Path) -> None:
        pending.append(pool.submit(save, arr, path))
        while len(pending) > max_pending:
            pending.popleft().result()  # also re-raises a failed write

    # torch threads: the explicit ``threads``, else the small-work policy (one unless the user chose)
    torch_threads = use_threads(threads) if threads and dev.type == "cpu" else small_work_threads(dev)
    with torch_threads:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(files), batch_size):
                idx = list(range(start, min(start + batch_size, len(files))))
                todo = [(n, s) for n, s in jobs
                        if overwrite or not all((out / n / str(s) / out_rel[i]).is_file() for i in idx)]
                want_clean = clean and (overwrite or not all((out / "clean" / out_rel[i]).is_file() for i in idx))
                if not todo and not want_clean:
                    bar.update(len(jobs) * len(idx))
                    continue
                arrays = list(pool.map(lambda i: load(files[i]), idx))
                shapes = {a.shape for a in arrays}
                if len(shapes) != 1:
                    raise RobustEnsError(f"images of different sizes {sorted(shapes)} in one batch; pass --size HxW")
                x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(dev).float().div_(255.0)
                index = torch.tensor(idx)
                if want_clean:
                    for i, a in zip(idx, arrays, strict=True):
                        write(a, out / "clean" / out_rel[i])
                for n, s in jobs:
                    if (n, s) in todo:
                        y = corrupt(x, n, s, preset=preset, seed=seed, index=index)
                        y8 = (y * 255.0 + 0.5).clamp_(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
                        for i, a in zip(idx, y8, strict=True):
                            write(a, out / n / str(s) / out_rel[i])
                        written += len(idx)
                    bar.update(len(idx))
            while pending:
                pending.popleft().result()
    bar.close()
    log.info("wrote %d corrupted images (%d corruptions x %d severities x %d images) under %s",
             written, len(names), len(severities), len(files), out)
    return len(files), written


def _load_rgb(path: Path, size: tuple[int, int] | None) -> Any:
    """An image as uint8 ``[H, W, 3]``, resized to ``size`` (H, W) with Lanczos (RoboDepth's ANTIALIAS)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as f:
        im = f.convert("RGB")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8)


def _save_png(arr: Any, path: Path, level: int) -> None:
    """Write a uint8 ``[H, W, 3]`` array as a PNG atomically; a failure names the file in one line."""
    from PIL import Image

    try:
        atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG", compress_level=level),
                     suffix=".png")
    except OSError as err:
        raise RobustEnsError(f"cannot write {path}: {err}; finished images are kept, rerun to resume") from err
