"""The reference corruptions, one HxWx3 uint8 image at a time (a test-only peer).

The 15 ImageNet-C corruptions and the 4 extra ones come from ``imagecorruptions`` (the maintained
fork ``imagecorruptions-imaug`` on NumPy 2); RoboDepth's three KITTI-C additions (dark,
color_quant, iso_noise) are written out in numpy from RoboDepth's description. Used by the speed
suite and the agreement experiment; never by the library.
"""

from __future__ import annotations

import numpy as np


def _ref_dark(img: np.ndarray, s: int) -> np.ndarray:
    c = [0.60, 0.50, 0.40, 0.30, 0.20][s - 1]
    p = [600, 250, 120, 50, 30][s - 1]
    sig = [0.008, 0.012, 0.018, 0.026, 0.038][s - 1]
    x = img / 255.0
    lo, hi = x.min(), x.max()
    y = ((x - lo) / (hi - lo)) ** 2 * c
    y = np.clip(np.random.poisson(y * p) / p, 0, 1)
    y = np.clip(y + np.random.normal(0, sig, y.shape), 0, 1)
    return np.uint8(y * 255)


def _ref_color_quant(img: np.ndarray, s: int) -> np.ndarray:
    from PIL import Image, ImageOps

    return np.asarray(ImageOps.posterize(Image.fromarray(img), 6 - s))


def _ref_iso(img: np.ndarray, s: int) -> np.ndarray:
    sig = 0.7 * [0.08, 0.12, 0.18, 0.26, 0.38][s - 1]
    x = np.clip(np.random.poisson(img / 255.0 * 25) / 25.0, 0, 1)
    return np.uint8(np.clip(x + np.random.normal(0, sig, x.shape), 0, 1) * 255)


def reference(img: np.ndarray, name: str, s: int) -> np.ndarray:
    """One HxWx3 uint8 image through the reference implementation."""
    custom = {"dark": _ref_dark, "color_quant": _ref_color_quant, "iso_noise": _ref_iso}
    if name in custom:
        return custom[name](img, s)
    import imagecorruptions

    return imagecorruptions.corrupt(img, severity=s, corruption_name=name)
