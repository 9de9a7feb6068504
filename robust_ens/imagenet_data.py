"""TransferAttack's ImageNet-compatible layout: ``<folder>/images/*.png`` beside ``<folder>/labels.csv``.

The layout (TransferAttack's ``AdvDataset``, ``transferattack/utils.py``):

* ``labels.csv``: a header row with at least the columns ``filename`` and ``label``; an optional
  ``targeted_label`` column (TransferAttack's targeted track) is read by :func:`read_labels` and
  otherwise ignored. ``label`` is the **0-based** ImageNet-1k class index (0..999), the index a
  torchvision or timm classifier's ``argmax`` returns: TransferAttack compares it with
  ``model(x).argmax(1)`` directly, and its README's class numbers (24 great grey owl, 919 street
  sign) are 0-based. The NIPS 2017 development set's ``images.csv`` is 1-based instead
  (``TrueLabel``/``TargetClass`` in 1..1000, from TF-slim's 1,001-way Inception with class 0 as
  background); :func:`convert_nips17` subtracts 1.
* ``images/<filename>``: one image per row, in the order of the rows (that order is the example
  index). TransferAttack's set is 1,000 lossless PNGs.

Images are decoded exactly as TransferAttack does: ``PIL.Image.open``, ``resize((224, 224))`` with
Pillow's default filter (bicubic; nearest for palette and 1-bit images, which Pillow forces), then
``convert("RGB")``, kept as uint8 (TransferAttack then divides by 255). A 224x224 image is
copied pixel for pixel (Pillow's resize to the same size is a copy). Nothing goes through JPEG.

This module holds the layout only; :mod:`robust_ens.data` finds the folder and caches the decoded
arrays under a key that covers the content (:func:`content_digest`) and the resize.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robust_ens.errors import DatasetNotFoundError, RobustEnsError

NAME = "imagenet-compatible"
PREFIX = NAME + ":"
LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"
SIZE = 224  # TransferAttack's img_height, img_width
NUM_CLASSES = 1000
LAYOUT = (
    "<folder>/images/<file>.png beside <folder>/labels.csv with columns filename,label[,targeted_label] "
    "(label: 0-based ImageNet class id 0..999; TransferAttack's layout)"
)
# What the decode does, in the cache key: a change here must never reuse old arrays.
DECODE_RULE = "PIL open; resize((s, s)) default filter (bicubic; nearest for P/1); convert RGB; uint8 v1"


@dataclass(frozen=True)
class LabelsTable:
    """The rows of a ``labels.csv``, in file order.

    Attributes:
        folder: The dataset folder (holding ``labels.csv`` and ``images/``).
        filenames: ``filename`` column.
        labels: ``label`` column, 0-based ImageNet class ids.
        targets: ``targeted_label`` column when the file has one, else ``None``.
    """

    folder: Path
    filenames: tuple[str, ...]
    labels: tuple[int, ...]
    targets: tuple[int, ...] | None = None

    def files(self) -> list[Path]:
        """The image paths, in row order."""
        return [self.folder / IMAGES_DIR / f for f in self.filenames]


def is_dataset_folder(folder: Path) -> bool:
    """True when ``folder`` holds a ``labels.csv`` (the layout's marker)."""
    return (folder / LABELS_FILE).is_file()


def _class_id(raw: str, column: str, row: int, where: Path) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise RobustEnsError(
            f"{where} row {row}: {column} {raw!r} is not an integer; expected {LAYOUT}"
        ) from None
    if not 0 <= value < NUM_CLASSES:
        hint = " (1-based labels such as the NIPS 2017 images.csv's TrueLabel: convert with data.convert_nips17)" \
            if value == NUM_CLASSES else ""
        raise RobustEnsError(
            f"{where} row {row}: {column} {value} is outside 0..{NUM_CLASSES - 1}{hint}; expected {LAYOUT}"
        )
    return value


def read_labels(folder: str | Path) -> LabelsTable:
    """Read and check ``<folder>/labels.csv`` (see the module docstring for the layout).

    Args:
        folder: The dataset folder.

    Returns:
        The rows, in file order.

    Raises:
        DatasetNotFoundError: no ``labels.csv`` in ``folder``.
        RobustEnsError: one line for a file without the ``filename``/``label`` columns, an empty
            table, a repeated file name, a label that is not an integer in 0..999, or a listed
            image missing from ``images/``.
    """
    folder = Path(folder)
    path = folder / LABELS_FILE
    if not path.is_file():
        raise DatasetNotFoundError(f"{folder} has no {LABELS_FILE}; expected {LAYOUT}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("filename", "label") if c not in columns]
        if missing:
            raise RobustEnsError(
                f"{path} has columns {columns or '(none)'}, lacking {', '.join(missing)}; expected {LAYOUT}"
            )
        reader.fieldnames = columns
        rows = list(reader)
    if not rows:
        raise RobustEnsError(f"{path} lists no images; expected {LAYOUT}")
    names = tuple((r.get("filename") or "").strip() for r in rows)
    seen: set[str] = set()
    for i, name in enumerate(names, start=2):
        if not name or Path(name).name != name:
            raise RobustEnsError(f"{path} row {i}: filename {name!r} is not a plain file name in images/; expected {LAYOUT}")
        if name in seen:
            raise RobustEnsError(f"{path} row {i}: filename {name!r} is listed twice")
        seen.add(name)
    labels = tuple(_class_id(r.get("label") or "", "label", i, path) for i, r in enumerate(rows, start=2))
    targets = None
    if "targeted_label" in columns:
        targets = tuple(_class_id(r.get("targeted_label") or "", "targeted_label", i, path)
                        for i, r in enumerate(rows, start=2))
    table = LabelsTable(folder, names, labels, targets)
    absent = [f.name for f in table.files() if not f.is_file()]
    if absent:
        shown = ", ".join(absent[:3]) + (f", ... {len(absent) - 3} more" if len(absent) > 3 else "")
        raise RobustEnsError(
            f"{path} lists {len(absent)} of its {len(names)} files that are not in {folder / IMAGES_DIR} "
            f"({shown}); expected {LAYOUT}"
        )
    return table


def content_digest(table: LabelsTable, size: int = SIZE) -> str:
    """sha256 over ``labels.csv``'s bytes, every listed image's name and bytes, and the decode rule.

    Two folders with equal digests decode to equal arrays, so the digest keys the uint8 cache and
    fingerprints the data (a changed, renamed or re-labelled file changes it).
    """
    from PIL import __version__ as pil_version

    h = hashlib.sha256(f"{DECODE_RULE}|size={size}|pillow={pil_version}\n".encode())
    h.update(hashlib.sha256((table.folder / LABELS_FILE).read_bytes()).digest())
    for f in table.files():
        fh = hashlib.sha256()
        with open(f, "rb") as src:
            while block := src.read(1 << 20):
                fh.update(block)
        h.update(f"{f.name}\0".encode() + fh.digest())
    return h.hexdigest()


def decode(path: Path, size: int = SIZE) -> np.ndarray:
    """One image as TransferAttack reads it: uint8 ``[3, size, size]``.

    ``Image.open``, ``resize((size, size))`` with Pillow's default filter (bicubic, or nearest,
    which Pillow forces for palette and 1-bit images), then ``convert("RGB")``, in that order.
    """
    from PIL import Image

    with Image.open(path) as src:
        im = src.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def decode_all(table: LabelsTable, size: int = SIZE, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every listed image, decoded by :func:`decode`, with its label: ``(x uint8 [N,3,s,s], y int64 [N])``."""
    from robust_ens import progress as _progress

    files = table.files()
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        jobs = pool.map(lambda f: decode(f, size), files)
        arrays = list(_progress.bar(jobs, total=len(files), desc=f"decode {table.folder.name}",
                                    enable=progress, unit="img"))
    return np.stack(arrays), np.asarray(table.labels, dtype=np.int64)


def candidates(roots: Sequence[Path]) -> list[Path]:
    """Where the named dataset ``imagenet-compatible`` is looked for, in order, for these roots.

    The first root (a caller's ``root=``) may be the dataset folder itself; every root is also
    searched for an ``imagenet-compatible/`` folder.
    """
    out: list[Path] = []
    for i, base in enumerate(roots):
        if i == 0:
            out.append(base)
        out.append(base / NAME)
    return list(dict.fromkeys(out))


def missing_message(searched: Sequence[Path], env: str, ways: Sequence[str]) -> str:
    """One line: where the ImageNet-compatible set was looked for, the layout, and how to provide it."""
    near = [p for p in searched if p.is_dir() and not is_dataset_folder(p)]
    found = f" ({', '.join(map(str, near))} exist but hold no {LABELS_FILE})" if near else ""
    return (
        f"ImageNet-compatible set not found; looked in: {', '.join(map(str, searched))} ({env}){found}. "
        f"Expected layout: {LAYOUT}. To provide it: " + "; or ".join(ways) + "."
    )


def _read_nips17_rows(src: Path) -> list[dict[str, str]]:
    path = src / "images.csv" if src.is_dir() else src
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{path} does not exist; expected the NIPS 2017 development set: images.csv "
            "(columns ImageId,...,TrueLabel,TargetClass; 1-based labels) beside images/<ImageId>.png"
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        lacking = [c for c in ("ImageId", "TrueLabel") if c not in columns]
        if lacking:
            raise RobustEnsError(f"{path} has columns {columns or '(none)'}, lacking {', '.join(lacking)}")
        reader.fieldnames = columns
        return list(reader)


def _one_based(raw: str, column: str, row: int, where: Path) -> int:
    """A NIPS 2017 label (1..1000; 0 is TF-slim's background class) shifted to 0-based."""
    try:
        value = int(raw.strip())
    except ValueError:
        raise RobustEnsError(f"{where} row {row}: {column} {raw!r} is not an integer") from None
    if not 1 <= value <= NUM_CLASSES:
        raise RobustEnsError(f"{where} row {row}: {column} {value} is outside 1..{NUM_CLASSES} "
                             "(the NIPS 2017 labels are 1-based; 0 is TF-slim's background class)")
    return value - 1


def convert_nips17(src: str | Path, dst: str | Path, *, link: bool = False) -> LabelsTable:
    """Turn the NIPS 2017 development set into this layout (labels shifted to 0-based).

    Args:
        src: The NIPS 2017 folder (``images.csv`` beside ``images/<ImageId>.png``) or its
            ``images.csv``.
        dst: The new dataset folder; gets ``images/<ImageId>.png`` (copied, or hard-linked with
            ``link=True``) and ``labels.csv`` with ``filename,label,targeted_label`` where
            ``label = TrueLabel - 1`` and ``targeted_label = TargetClass - 1`` (when given).
        link: Hard-link the images instead of copying them (same file system only).

    Returns:
        The written table, read back and checked by :func:`read_labels`.

    Raises:
        DatasetNotFoundError: ``images.csv`` or a listed image is missing.
        RobustEnsError: a label outside 1..1000, or ``dst`` already holding a ``labels.csv``.

    Example:
        >>> from robust_ens import data
        >>> data.convert_nips17("nips17-dev", "data/imagenet-compatible")  # doctest: +SKIP
    """
    src, dst = Path(src), Path(dst)
    rows = _read_nips17_rows(src)
    folder = src if src.is_dir() else src.parent
    if (dst / LABELS_FILE).exists():
        raise RobustEnsError(f"{dst / LABELS_FILE} already exists; convert into an empty folder")
    has_target = all((r.get("TargetClass") or "").strip() for r in rows)
    out: list[tuple[str, int, int | None]] = []
    for i, r in enumerate(rows, start=2):
        image = folder / IMAGES_DIR / f"{r['ImageId'].strip()}.png"
        if not image.is_file():
            raise DatasetNotFoundError(f"{folder / 'images.csv'} row {i} names {image}, which does not exist")
        label = _one_based(r["TrueLabel"], "TrueLabel", i, folder / "images.csv")
        target = _one_based(r["TargetClass"], "TargetClass", i, folder / "images.csv") if has_target else None
        out.append((image.name, label, target))
    (dst / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for name, _, _ in out:
        s, d = folder / IMAGES_DIR / name, dst / IMAGES_DIR / name
        if link:
            d.unlink(missing_ok=True)
            os.link(s, d)
        else:
            shutil.copyfile(s, d)
    from robust_ens.atomic import atomic_write_text

    header = "filename,label,targeted_label" if has_target else "filename,label"
    body = [f"{n},{lab},{t}" if has_target else f"{n},{lab}" for n, lab, t in out]
    atomic_write_text(dst / LABELS_FILE, "\n".join([header, *body]) + "\n")
    return read_labels(dst)
