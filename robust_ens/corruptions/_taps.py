"""1-D Gaussian taps of the references (scipy/skimage and OpenCV), shared by the torch ops and the
compiled kernels (a module of its own so that neither imports the other for them)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=256)
def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> tuple[float, ...]:
    """scipy/skimage Gaussian taps: radius ``int(truncate * sigma + 0.5)``, normalised."""
    if sigma <= 0:
        return (1.0,)
    radius = int(truncate * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return tuple((k / k.sum()).tolist())


@lru_cache(maxsize=64)
def cv2_gaussian_kernel1d(ksize: int, sigma: float) -> tuple[float, ...]:
    """OpenCV ``getGaussianKernel(ksize, sigma)`` for ``sigma > 0``."""
    t = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    k = np.exp(-(t**2) / (2 * sigma * sigma))
    return tuple((k / k.sum()).tolist())
