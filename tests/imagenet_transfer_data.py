"""A small ImageNet-compatible folder for the imagenet-transfer tests (TransferAttack's layout).

``make_folder(root, n)`` writes ``root/imagenet-compatible/images/imgNN.png`` (random RGB, lossless
PNG) beside ``labels.csv`` (``filename,label``, 0-based ImageNet classes), the layout
``data.load("imagenet-compatible")`` reads from ``$ROBUST_ENS_DATA``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, n: int = 6, *, size: int = 224, seed: int = 0,
                labels: Sequence[int] | None = None, brightness: Sequence[float] | None = None) -> Path:
    """Write ``n`` PNGs and their labels under ``root/imagenet-compatible``; return ``root``.

    Args:
        root: What ``ROBUST_ENS_DATA`` points at.
        n: Number of images.
        size: Their side (the loader resizes to 224 as TransferAttack does).
        seed: Pixel and label seed.
        labels: Labels to write (default: random classes in 0..999).
        brightness: Per image, a constant grey level in [0, 1] instead of random pixels.
    """
    rng = np.random.default_rng(seed)
    folder = root / "imagenet-compatible"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    ys = list(labels) if labels is not None else [int(v) for v in rng.integers(0, 1000, n)]
    rows = ["filename,label"]
    for i in range(n):
        if brightness is not None:
            arr = np.full((size, size, 3), round(255 * brightness[i]), dtype=np.uint8)
        else:
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / "images" / f"img{i:02d}.png")
        rows.append(f"img{i:02d}.png,{ys[i]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return root
