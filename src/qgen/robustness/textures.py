"""Random textures for fog and frost, one per image, drawn from a torch.Generator.

- :func:`plasma_fractal`: the diamond-square fractal the benchmark's fog adds;
- :func:`frost_texture`: a procedural stand-in for the benchmark's frost photographs (which
  ship with its source and cannot be used here); see the function for what it is made of.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qgen.robustness.constants import LUMA
from qgen.robustness.filters import gaussian_blur, line_blur


def uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float = 0.0, hi: float = 1.0,
            dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform draws in [lo, hi) on the generator's device."""
    return torch.rand(shape, generator=gen, device=gen.device, dtype=dtype) * (hi - lo) + lo


def plasma_fractal(n: int, size: int, decay: float, gen: torch.Generator) -> Tensor:
    """``n`` diamond-square fractals of ``size``×``size`` in [0, 1] (float64, generator device).

    The map is the next power of two >= ``size`` (32 for CIFAR) and is cropped to ``size``.
    It starts at 0; each level fills square centres with the mean of their 4 corners and
    then diamond centres with the mean of their 4 neighbours (wrapping around), each plus
    ``wibble`` × U(−wibble, wibble), where ``wibble`` starts at 100 and is divided by
    ``decay`` per level; finally each map is scaled to [0, 1].
    """
    mapsize = 1
    while mapsize < size:
        mapsize *= 2
    mapsize = max(mapsize, 2)
    a = torch.zeros(n, mapsize, mapsize, dtype=torch.float64, device=gen.device)
    step, wibble = mapsize, 100.0

    def wibbled(mean4: Tensor) -> Tensor:
        noise = uniform(gen, tuple(mean4.shape), -wibble, wibble, torch.float64)
        return mean4 / 4.0 + wibble * noise

    while step >= 2:
        half = step // 2
        corners = a[:, 0::step, 0::step]
        acc = corners + corners.roll(-1, dims=1)
        acc = acc + acc.roll(-1, dims=2)
        a[:, half::step, half::step] = wibbled(acc)
        centres = a[:, half::step, half::step]
        corners = a[:, 0::step, 0::step]
        left = (centres + centres.roll(1, dims=1)) + (corners + corners.roll(-1, dims=2))
        a[:, 0::step, half::step] = wibbled(left)
        top = (centres + centres.roll(1, dims=2)) + (corners + corners.roll(-1, dims=1))
        a[:, half::step, 0::step] = wibbled(top)
        step //= 2
        wibble /= decay
    a = a - a.amin(dim=(1, 2), keepdim=True)
    a = a / a.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return a[:, :size, :size]


#: the frost texture's colour (RGB multipliers): white ice with a blue cast, as in the
#: benchmark's photographs
FROST_TINT = (0.86, 0.93, 1.0)


def frost_texture(n: int, channels: int, size: int, gen: torch.Generator) -> Tensor:
    """``n`` procedural frost layers (n, channels, size, size) in [0, 1] (generator device).

    A stand-in for crops of the benchmark's frost photographs, built from three seeded parts:

    - a cloudy ice sheet: a rough plasma fractal (decay 1.6), smoothed by a Gaussian of
      size/64 pixels;
    - crystal needles: sparse bright seeds (1.5% of pixels) smeared along two random
      directions per image by a one-sided line blur of radius size/4, then thresholded so
      that thin streaks remain;
    - the sum mapped through a soft threshold to [0, 1] (about 0.45 on average, like the
      photographs' crops), tinted :data:`FROST_TINT` for RGB, or its luma for grey images.

    It reproduces what the corruption does (a bright, structured layer added over the image,
    weighted by the severity constants), not the photographs' exact statistics, so frost
    numbers are not comparable with the released CIFAR-10-C frost files.
    """
    sheet = plasma_fractal(n, size, 1.6, gen).to(torch.float32)[:, None]
    sheet = gaussian_blur(sheet, max(size / 64.0, 0.5))
    seeds = (uniform(gen, (n, 1, size, size)) < 0.015).to(torch.float32)
    needles = torch.zeros_like(seeds)
    for _ in range(2):
        angles = uniform(gen, (n,), -180.0, 180.0, torch.float64)
        needles = needles + line_blur(seeds, max(size / 4.0, 2.0), size / 8.0, angles)
    needles = (needles / needles.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12))
    needles = ((needles - 0.08) / 0.3).clamp(0.0, 1.0)
    layer = (1.3 * sheet + 0.9 * needles - 0.45).clamp(0.0, 1.0)
    if channels == 1:
        tint = sum(w * t for w, t in zip(LUMA, FROST_TINT, strict=True))
        return layer * tint
    scale = torch.tensor(FROST_TINT, dtype=layer.dtype, device=layer.device).view(1, 3, 1, 1)
    return layer * scale
