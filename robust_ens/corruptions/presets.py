"""Parameter tables of the three presets (numbers only; see ``shared/reference/corruption-parameters.md``).

* ``cifar10c``: Hendrycks & Dietterich's ``make_cifar_c.py`` (CIFAR-10-C), 15 common + 4 extra.
* ``imagenetc``: ImageNet-C's parameters as generalised to any image size by ``imagecorruptions``
  1.1.2 (Michaelis et al.), 15 common + 4 extra ("validation") corruptions.
* ``kittic``: RoboDepth's KITTI-C (Kong et al.): 15 ImageNet-C corruptions with the ``imagenetc``
  parameters plus ``dark``, ``color_quant`` and ``iso_noise`` with RoboDepth's own parameters, in
  RoboDepth's order.

Each entry is a list of five parameter tuples (severities 1..5).
"""

from __future__ import annotations

from typing import Any

COMMON = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
KITTIC = (
    "brightness", "dark", "fog", "frost", "snow", "contrast", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "elastic_transform", "color_quant", "gaussian_noise", "impulse_noise",
    "shot_noise", "iso_noise", "pixelate", "jpeg_compression",
)


def _zooms(step: float, last: float) -> tuple[float, ...]:
    n = int(round((last - 1.0) / step)) + 1
    delta = (1.0 + step) - 1.0  # numpy arange's float values: start + i * ((start + step) - start)
    return tuple(1.0 + i * delta for i in range(n))


CIFAR10C: dict[str, list[Any]] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [_zooms(0.01, 1.06), _zooms(0.01, 1.11), _zooms(0.01, 1.15), _zooms(0.01, 1.20), _zooms(0.01, 1.25)],
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    # (alpha, sigma, affine jitter) as fractions of the image side (32 px in CIFAR-10-C)
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1],
    "spatter": [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ],
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
}

IMAGENETC: dict[str, list[Any]] = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [_zooms(0.01, 1.11), _zooms(0.01, 1.15), _zooms(0.02, 1.20), _zooms(0.02, 1.24), _zooms(0.03, 1.30)],
    "snow": [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ],
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "elastic_transform": [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
    "speckle_noise": [0.15, 0.2, 0.35, 0.45, 0.6],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "spatter": [
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ],
    "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
}

_GAUSS = [0.08, 0.12, 0.18, 0.26, 0.38]
_SHOT = [60, 25, 12, 5, 3]
KITTIC_EXTRA: dict[str, list[Any]] = {
    # (peak c, photon count P = 10 x shot list, read noise sigma = 0.1 x gaussian list)
    "dark": [(c, 10 * p, 0.1 * g) for c, p, g in zip([0.6, 0.5, 0.4, 0.3, 0.2], _SHOT, _GAUSS, strict=False)],
    "color_quant": [5, 4, 3, 2, 1],  # bits per channel
    "iso_noise": [(25, round(0.7 * g, 6)) for g in _GAUSS],  # (Poisson count, sigma)
}

PRESETS: dict[str, dict[str, list[Any]]] = {
    "cifar10c": {n: CIFAR10C[n] for n in (*COMMON, *EXTRA)},
    "imagenetc": {n: IMAGENETC[n] for n in (*COMMON, *EXTRA)},
    "kittic": {n: (KITTIC_EXTRA[n] if n in KITTIC_EXTRA else IMAGENETC[n]) for n in KITTIC},
}
