"""The lossy part of baseline JPEG, batched in torch: what ``jpeg_compression`` does to an
image, without writing a file.

The steps of libjpeg (Pillow's codec) with its defaults, on 8-bit samples:

1. the image rounded to 8 bits;
2. RGB → YCbCr (JFIF, BT.601 full range) in libjpeg's 16-bit fixed point; grey images are
   one Y plane;
3. chroma subsampled 4:2:0: the mean of each 2×2 block in integers, rounded up and down by
   turns along a row (libjpeg's alternating bias 1, 2). Padding as libjpeg does it: the
   last column is repeated out to whole MCUs (16 pixels) and the last row to an even count
   before subsampling; every plane then repeats its own last row out to whole blocks;
4. per 8×8 block: level shift by −128, 2-D DCT-II (orthonormal), each coefficient divided
   by its quantization step and rounded, multiplied back, inverse DCT, +128, rounded and
   clamped to 0..255;
5. chroma upsampled with libjpeg's "fancy" triangle filter (3/4 and 1/4 per axis) in its
   integer arithmetic, the edge of the real chroma plane repeated;
6. YCbCr → RGB with libjpeg's fixed-point tables, clamped to 0..255.

The quantization tables are the standard ones (ITU-T T.81 Annex K) scaled by quality the
way libjpeg's ``jpeg_set_quality`` does (baseline: steps clamped to 1..255).

How this differs from a real codec: no entropy coding (Huffman coding is lossless, so it
changes no pixel), and floating-point DCTs instead of libjpeg's fixed-point ones. Where a
coefficient lies close to the middle between two quantization levels the two round it
differently, so a few pixels differ from Pillow's output; docs/robustness.md gives the
measured difference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from qgen.robustness.filters import pad

#: ITU-T T.81 Annex K.1: luminance quantization table (row-major, natural order)
LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
#: ITU-T T.81 Annex K.2: chrominance quantization table
CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)
#: libjpeg's fixed point: 16 fraction bits
_BITS = 16
_HALF = 1 << (_BITS - 1)


def _fix(v: float) -> int:
    return int(v * (1 << _BITS) + 0.5)


def quality_table(base: tuple[int, ...], quality: int) -> list[int]:
    """A standard table scaled to ``quality`` (1..100) as libjpeg does for baseline JPEG."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(max((b * scale + 50) // 100, 1), 255) for b in base]


def dct_matrix(dtype: torch.dtype = torch.float64) -> Tensor:
    """The orthonormal 8-point DCT-II matrix D (coefficients = D @ block @ D.T)."""
    d = torch.empty(8, 8, dtype=torch.float64)
    for u in range(8):
        cu = math.sqrt(1.0 / 8.0) if u == 0 else math.sqrt(2.0 / 8.0)
        for x in range(8):
            d[u, x] = cu * math.cos((2 * x + 1) * u * math.pi / 16.0)
    return d.to(dtype)


def code_plane(plane: Tensor, table: list[int]) -> Tensor:
    """Step 4 of the module docstring on float planes (N, H, W) holding 0..255, H and W
    multiples of 8; returns the decoded plane (rounded, 0..255)."""
    n, h, w = plane.shape
    d = dct_matrix(plane.dtype).to(plane.device)
    q = torch.tensor(table, dtype=plane.dtype, device=plane.device).view(8, 8)
    blocks = (plane - 128.0).reshape(n, h // 8, 8, w // 8, 8).transpose(2, 3)
    coef = torch.round((d @ blocks @ d.T) / q) * q
    rec = (d.T @ coef @ d).transpose(2, 3).reshape(n, h, w) + 128.0
    return rec.round().clamp(0.0, 255.0)


def rgb_to_ycc(v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """libjpeg's RGB → Y, Cb, Cr of integer planes (int64, N×3×H×W, 0..255)."""
    r, g, b = v[:, 0], v[:, 1], v[:, 2]
    y = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + _HALF) >> _BITS
    off = (128 << _BITS) + _HALF - 1
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + off) >> _BITS
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + off) >> _BITS
    return y, cb, cr


def ycc_to_rgb(y: Tensor, cb: Tensor, cr: Tensor) -> Tensor:
    """libjpeg's Y, Cb, Cr → RGB of integer planes (int64, N×H×W), clamped to 0..255."""
    cb, cr = cb - 128, cr - 128
    r = y + ((_fix(1.402) * cr + _HALF) >> _BITS)
    g = y + ((-_fix(0.34414) * cb + _HALF - _fix(0.71414) * cr) >> _BITS)
    b = y + ((_fix(1.772) * cb + _HALF) >> _BITS)
    return torch.stack([r, g, b], dim=1).clamp(0, 255)


def downsample_h2v2(c: Tensor) -> Tensor:
    """libjpeg's 2×2 chroma average of integer planes (N, H, W), H and W even: the sum of
    each block plus a bias of 1 and 2 by turns along a row, divided by 4 (rounded down)."""
    n, h, w = c.shape
    s = c.reshape(n, h // 2, 2, w // 2, 2).sum(dim=(2, 4))
    bias = 1 + (torch.arange(w // 2, device=c.device) % 2)
    return (s + bias) >> 2


def upsample_h2v2(c: Tensor) -> Tensor:
    """libjpeg's h2v2 "fancy" upsampling of integer planes (N, h, w) to (N, 2h, 2w): each
    output sample weighs its own input sample 9/16, the nearer neighbours 3/16 each and the
    diagonal one 1/16 (edges repeated), with libjpeg's rounding (+8 and +7 by turns)."""
    n, h, w = c.shape
    rows = torch.arange(h, device=c.device)
    above = c.index_select(1, (rows - 1).clamp(min=0))
    below = c.index_select(1, (rows + 1).clamp(max=h - 1))
    # vertical: 3 × nearer row + the farther one, for the upper and lower output rows
    colsum = torch.stack([3 * c + above, 3 * c + below], dim=2).reshape(n, 2 * h, w)
    cols = torch.arange(w, device=c.device)
    left = colsum.index_select(2, (cols - 1).clamp(min=0))
    right = colsum.index_select(2, (cols + 1).clamp(max=w - 1))
    even = (3 * colsum + left + 8) >> 4
    odd = (3 * colsum + right + 7) >> 4
    return torch.stack([even, odd], dim=3).reshape(n, 2 * h, 2 * w)


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """``x`` (N, C, H, W) in [0, 1], C = 1 or 3, after JPEG coding at ``quality``
    (the module docstring lists the steps); float output in [0, 1], same shape."""
    n, c, h, w = x.shape
    v = (x.to(torch.float32) * 255.0).round().clamp(0.0, 255.0)
    luma_t = quality_table(LUMA_TABLE, quality)
    if c == 1:
        plane = pad(v, 0, -h % 8, 0, -w % 8, "replicate")[:, 0]
        out = code_plane(plane, luma_t)[:, None, :h, :w]
        return (out / 255.0).to(x.dtype)
    chroma_t = quality_table(CHROMA_TABLE, quality)
    # libjpeg repeats the last column out to whole MCUs before subsampling, but the last
    # row only to an even count; the subsampled planes then repeat their own last row
    v = pad(v, 0, h % 2, 0, -w % 16, "replicate").to(torch.int64)
    y, cb, cr = rgb_to_ycc(v)
    ch, cw = (h + 1) // 2, (w + 1) // 2  # the real chroma plane, before block padding
    y = pad(y[:, None].to(torch.float32), 0, -y.shape[1] % 8, 0, 0, "replicate")[:, 0]
    planes = [code_plane(y, luma_t)[:, :h, :w].to(torch.int64)]
    for p in (cb, cr):
        sub = downsample_h2v2(p).to(torch.float32)
        sub = pad(sub[:, None], 0, -ch % 8, 0, 0, "replicate")[:, 0]
        coded = code_plane(sub, chroma_t).to(torch.int64)
        planes.append(upsample_h2v2(coded[:, :ch, :cw])[:, :h, :w])
    return (ycc_to_rgb(*planes).to(torch.float32) / 255.0).to(x.dtype)
