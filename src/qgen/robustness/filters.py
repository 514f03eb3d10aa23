"""Batched image operations the corruptions are built from (torch, any device).

Images are float tensors (N, C, H, W). Borders follow the library each corruption's
reference used, named as follows:

- ``replicate``: ``aaa|abcd|ddd`` (scikit-image's ``nearest``, OpenCV's REPLICATE,
  ImageMagick's edge pixels);
- ``reflect101``: ``dcb|abcd|cba`` (OpenCV's default border);
- ``symmetric``: ``cba|abcd|dcb`` (SciPy's ``reflect``);
- ``zero``: zeros.

Any pad width works (a blur kernel wider than an 8×8 image reflects several times, as SciPy
does). Separable filters are two small matrix products with the border built into the
matrices, which on batches of small images beats shifted slices or a convolution on a CPU;
sparse 2-D kernels are sums of shifted slices.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

BORDERS = ("replicate", "reflect101", "symmetric", "zero")


def pad_index(n: int, before: int, after: int, border: str,
              device: torch.device | str = "cpu") -> Tensor:
    """Source index of every position of an axis of length ``n`` padded by ``before`` and
    ``after`` (``border`` as in the module docstring; 'zero' gives -1 outside)."""
    i = torch.arange(-before, n + after, device=device)
    if border == "replicate":
        return i.clamp(0, n - 1)
    if border == "reflect101":
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * n - 2
        i = torch.remainder(i, period)
        return torch.where(i >= n, period - i, i)
    if border == "symmetric":
        period = 2 * n
        i = torch.remainder(i, period)
        return torch.where(i >= n, period - 1 - i, i)
    if border == "zero":
        return torch.where((i >= 0) & (i < n), i, torch.full_like(i, -1))
    raise ValueError(f"unknown border {border!r}; known: {', '.join(BORDERS)}")


def pad(x: Tensor, top: int, bottom: int, left: int, right: int, border: str) -> Tensor:
    """Pad the last two dimensions of ``x``.

    Narrow pads are slices and flips joined with ``torch.cat`` (a copy per side); a pad
    wider than the image falls back to index maps (``index_select`` along the last
    dimension is several times slower on a CPU).
    """
    if border == "zero":
        return F.pad(x, (left, right, top, bottom))
    h, w = x.shape[-2:]
    if max(top, bottom) <= h - 1 and max(left, right) <= w - 1:
        x = _pad_axis(x, -2, top, bottom, border)
        return _pad_axis(x, -1, left, right, border)
    rows = pad_index(h, top, bottom, border, x.device)
    cols = pad_index(w, left, right, border, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _pad_axis(x: Tensor, dim: int, before: int, after: int, border: str) -> Tensor:
    """Pad one axis by at most its length − 1 (slices, flips and one ``cat``)."""
    if before == 0 and after == 0:
        return x
    n = x.shape[dim]
    parts = []
    if border == "replicate":
        shape = list(x.shape)
        if before:
            shape[dim] = before
            parts.append(x.narrow(dim, 0, 1).expand(shape))
        parts.append(x)
        if after:
            shape[dim] = after
            parts.append(x.narrow(dim, n - 1, 1).expand(shape))
    elif border in ("reflect101", "symmetric"):
        skip = 1 if border == "reflect101" else 0
        if before:
            parts.append(x.narrow(dim, skip, before).flip(dim))
        parts.append(x)
        if after:
            parts.append(x.narrow(dim, n - after - skip, after).flip(dim))
    else:
        raise ValueError(f"unknown border {border!r}; known: {', '.join(BORDERS)}")
    return torch.cat(parts, dim)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> list[float]:
    """SciPy's 1-D Gaussian (radius ``int(truncate * sigma + 0.5)``), normalized; sigma 0
    is the identity."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return [1.0]
    w = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = sum(w)
    return [v / total for v in w]


def correlate_taps(x: Tensor, taps: dict[tuple[int, int], float], border: str) -> Tensor:
    """Correlation of every channel with a sparse kernel ``{(dy, dx): weight}``:
    ``out[y, x] = sum w * in[y + dy, x + dx]``.

    A sum of shifted slices: for the small, sparse kernels of the benchmark this is faster on
    a CPU than a grouped convolution and gives the same numbers on every device.
    """
    taps = {k: v for k, v in taps.items() if v != 0.0}
    r = max((max(abs(dy), abs(dx)) for dy, dx in taps), default=0)
    h, w = x.shape[-2:]
    xp = pad(x, r, r, r, r, border) if r else x
    out: Tensor | None = None
    for (dy, dx), weight in taps.items():
        part = xp[..., r + dy:r + dy + h, r + dx:r + dx + w]
        if out is None:
            out = part * weight
        else:
            out.add_(part, alpha=weight)
    return out if out is not None else torch.zeros_like(x)


def filter_matrix(n: int, kernel: tuple[float, ...], border: str) -> Tensor:
    """The (n, n) float64 matrix of correlating an axis of length ``n`` with a centred
    odd-length ``kernel`` under ``border`` (so ``M @ x`` filters the rows of ``x``)."""
    r = len(kernel) // 2
    src = pad_index(n, r, r, border)
    m = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for t, k in enumerate(kernel):
            j = int(src[i + t])
            if j >= 0:
                m[i, j] += k
    return m


@functools.lru_cache(maxsize=256)
def _matrix(n: int, kernel: tuple[float, ...], border: str) -> Tensor:
    return filter_matrix(n, kernel, border)


def separable_matmul(x: Tensor, k_rows: list[float], k_cols: list[float], border: str
                     ) -> Tensor:
    """Correlate with ``k_rows`` down the columns (along H) and ``k_cols`` along the rows
    (along W), centred odd-length kernels, as two small matrix products ``Mh @ x @ Mw.T``:
    on batches of small images one pass each, whatever the kernel size, with the border
    built into the matrices."""
    h, w = x.shape[-2:]
    out = x
    if len(k_cols) > 1:
        mw = _matrix(w, tuple(k_cols), border).to(device=x.device, dtype=x.dtype)
        out = out @ mw.T
    if len(k_rows) > 1:
        mh = _matrix(h, tuple(k_rows), border).to(device=x.device, dtype=x.dtype)
        out = mh @ out
    return out if out is not x else x.clone()


def gaussian_blur(x: Tensor, sigma: float, border: str = "replicate",
                  truncate: float = 4.0) -> Tensor:
    """scikit-image's ``gaussian`` (SciPy's filter, ``nearest`` border by default)."""
    k = gaussian_kernel1d(sigma, truncate)
    return separable_matmul(x, k, k, border)


def box_blur3(x: Tensor) -> Tensor:
    """OpenCV's ``blur(x, (3, 3))``: the 3×3 mean with the reflect101 border."""
    k = [1.0 / 3.0] * 3
    return separable_matmul(x, k, k, "reflect101")


#: added before rounding half up: exact ties of 8-bit arithmetic (x.5) that float error
#: moved just below .5 still round up, and no true value lies this close to a tie
TIE = 1e-3


def quantize8(x: Tensor, mode: str = "floor") -> Tensor:
    """``x`` in [0, 1] as it comes back from 8 bits: ``floor`` (numpy's ``astype(uint8)``
    of ``x * 255``) or ``round`` (half up, as Pillow's and ImageMagick's 8-bit output)."""
    y = (x * 255.0).clamp(0.0, 255.0)
    return (y.floor() if mode == "floor" else (y + (0.5 + TIE)).floor().clamp(max=255.0)) / 255.0


def line_blur(x: Tensor, radius: float, sigma: float, angles_deg: Tensor,
              min_weight: float = 1e-7) -> Tensor:
    """A one-sided motion blur along a line, one angle per image (ImageMagick's
    ``-motion-blur radius x sigma + angle``).

    ``2 ceil(radius) + 1`` taps at distance i = 0, 1, ... along the direction
    (cos angle, sin angle) (x right, y down), offsets rounded as ImageMagick does
    (``ceil(v - 0.5)``), weights exp(-i² / 2 sigma²) normalized; pixels outside the image
    are the nearest edge pixel. Taps lighter than ``min_weight`` of the total are dropped
    (they change no float32 value).
    """
    n, c, h, w = x.shape
    width = 2 * math.ceil(radius) + 1
    weights = [math.exp(-(i * i) / (2.0 * sigma * sigma)) for i in range(width)]
    total = sum(weights)
    keep = [i for i in range(width) if weights[i] / total >= min_weight]
    theta = torch.deg2rad(angles_deg.to(torch.float64)).cpu()
    steps = torch.tensor(keep, dtype=torch.float64)
    off_x = torch.ceil(steps[None, :] * torch.cos(theta)[:, None] - 0.5).long()  # (N, taps)
    off_y = torch.ceil(steps[None, :] * torch.sin(theta)[:, None] - 0.5).long()
    p = max(keep)
    xp = pad(x, p, p, p, p, "replicate")
    hp, wp = h + 2 * p, w + 2 * p
    flat = xp.reshape(n, c, hp * wp)
    base = ((torch.arange(h) + p)[:, None] * wp + (torch.arange(w) + p)[None, :]).reshape(-1)
    shift = off_y * wp + off_x  # (N, taps)
    out = torch.zeros(n, c, h * w, dtype=x.dtype, device=x.device)
    for t, i in enumerate(keep):
        idx = (base[None, :] + shift[:, t:t + 1]).to(x.device)  # (N, H*W)
        out.add_(flat.gather(2, idx[:, None, :].expand(n, c, h * w)),
                 alpha=weights[i] / sum(weights[j] for j in keep))
    return out.reshape(n, c, h, w)


def sample(x: Tensor, ys: Tensor, xs: Tensor, border: str) -> Tensor:
    """Bilinear sampling of ``x`` (N, C, H, W) at pixel coordinates ``ys``, ``xs`` (N, H', W')
    (pixel centres at integers); outside the image ``reflect101`` (OpenCV) or ``symmetric``
    (SciPy's ``reflect``)."""
    n, _, h, w = x.shape
    if border == "reflect101":  # reflection about the border pixels' centres
        gx = 2.0 * xs / max(w - 1, 1) - 1.0
        gy = 2.0 * ys / max(h - 1, 1) - 1.0
        align = True
    elif border == "symmetric":  # reflection about the image edges
        gx = (2.0 * xs + 1.0) / w - 1.0
        gy = (2.0 * ys + 1.0) / h - 1.0
        align = False
    else:
        raise ValueError(f"sample: border {border!r} not supported")
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=align)


def pil_box_weights(n_in: int, n_out: int) -> Tensor:
    """The (n_out, n_in) matrix of Pillow's BOX resampling along one axis (float64)."""
    return _pil_box_weights(n_in, n_out).clone()


@functools.lru_cache(maxsize=64)
def _pil_box_weights(n_in: int, n_out: int) -> Tensor:
    """The (n_out, n_in) matrix of Pillow's BOX resampling along one axis.

    Pillow centres output pixel j at input coordinate (j + 0.5) * n_in / n_out and averages
    the input pixels whose centres lie within half an output pixel of it (at least half an
    input pixel), each with weight 1, then normalizes; upscaling picks the nearest pixel.
    """
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for j in range(n_out):
        center = (j + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        for i in range(lo, hi):
            t = (i - center + 0.5) / filterscale
            if -0.5 <= t < 0.5:
                m[j, i] = 1.0
        m[j] /= m[j].sum()
    return m


def rgb_to_gray(x: Tensor) -> Tensor:
    """ITU-R BT.601 luma of (N, 3, H, W) (OpenCV's RGB2GRAY), as (N, 1, H, W); grey
    images come back unchanged."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b
