"""The corruptions' names, groups and CIFAR severity constants (no torch).

The numbers are those of the CIFAR generator of Hendrycks & Dietterich (ICLR 2019), as
tabulated in the project's shared robustness notes; images are in [0, 1] unless noted.
:func:`params` returns the constants of one corruption at one severity (1..5). Everything
here is plain Python so that settings validation, the results table and the comparison with
the full-precision twin never import torch.
"""

from __future__ import annotations

import math
from typing import Any

from qgen.errors import QgenError

SEVERITIES = (1, 2, 3, 4, 5)

#: the benchmark's four groups of 15, then the four held-out corruptions
GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate"),
}
BENCHMARK = tuple(n for g in ("noise", "blur", "weather", "digital") for n in GROUPS[g])
EXTRA = GROUPS["extra"]
NAMES = BENCHMARK + EXTRA

#: severity 1..5 constants of each corruption (index severity - 1)
CIFAR: dict[str, tuple[Any, ...]] = {
    # std of additive Gaussian noise
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    # Poisson rate: x -> Poisson(x * rate) / rate
    "shot_noise": (500, 250, 100, 75, 50),
    # fraction of values replaced by 0 or 1 (salt and pepper, half each)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    # std of multiplicative Gaussian noise: x + x * N(0, std)
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),
    # Gaussian sigma in pixels
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    # (sigma, max_delta, iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # (disk radius, alias blur sigma)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # (radius, sigma); the angle is drawn uniformly in (-45, 45) degrees per image
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    # stop of np.arange(1, stop, 0.01): the zoom factors averaged
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),
    # (strength, wibble decay of the plasma fractal)
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    # (image weight, frost weight)
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    # (mean, std, zoom, threshold, blur radius, blur sigma, blend)
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    # (mean, std, sigma, threshold, intensity, mode 0 = water / 1 = mud)
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    # factor around the per-image, per-channel mean
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # added to the HSV value
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),
    # HSV saturation -> saturation * a + b
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    # JPEG quality
    "jpeg_compression": (80, 65, 58, 50, 40),
    # down-scaling factor (box filter down, box filter back up)
    "pixelate": (0.95, 0.90, 0.85, 0.75, 0.65),
    # (alpha, sigma, affine jitter) as fractions of the image size (x 32 for CIFAR)
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
}

#: the water and mud colours of spatter (RGB, 0..255): pale turquoise and brown
WATER_RGB = (175, 238, 238)
MUD_RGB = (63, 42, 20)
#: ITU-R BT.601 luma weights (OpenCV's RGB2GRAY, JPEG's Y): colours of grey images
LUMA = (0.299, 0.587, 0.114)


def check_name(name: str) -> str:
    """``name`` if it is a corruption, else a one-line QgenError listing them."""
    if name not in CIFAR:
        raise QgenError(f"unknown corruption {name!r}; allowed: {', '.join(NAMES)}")
    return name


def check_severity(severity: Any) -> int:
    """``severity`` if it is an integer 1..5, else a one-line QgenError."""
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise QgenError(f"severity must be an integer 1..5, got {severity!r}")
    return severity


def params(name: str, severity: int) -> Any:
    """The CIFAR constants of corruption ``name`` at ``severity`` (1..5)."""
    return CIFAR[check_name(name)][check_severity(severity) - 1]


def zoom_factors(severity: int) -> tuple[float, ...]:
    """The zoom factors zoom_blur averages: ``np.arange(1, stop, 0.01)`` of the benchmark.

    Floating-point rounding makes that range include its stop for 1.06 and 1.11 but not for
    1.16, 1.21 and 1.26 (which end at 1.15, 1.20, 1.25); the published files were made with
    these factors, so they are kept: 7, 12, 16, 21 and 26 factors.
    """
    stop = params("zoom_blur", severity)
    count = math.ceil((stop - 1.0) / 0.01)
    return tuple(1.0 + k * 0.01 for k in range(count))
