"""The liquid layers of ``spatter``, batched: OpenCV's Canny edges, chamfer distance
transform, histogram equalization and emboss, written in torch for (N, 1, H, W) layers.

Water (severities 1–3): a thresholded, smoothed noise layer L (8 bits); its Canny edges
(low 50, high 150); the distance of every pixel to the nearest edge (OpenCV's 5×5 chamfer
metric, weights 1, 1.4, 2.1969), truncated at 20; a 3×3 mean (to 8 bits, truncating);
histogram equalization; an emboss filter [[-2,-1,0],[-1,1,1],[0,1,2]] (8 bits, saturated);
a 3×3 mean (8 bits, rounded). The water mask is L × that, scaled so its maximum is the
severity's intensity. Mud (severities 4–5): the indicator of L above the threshold,
smoothed, with values below 0.8 set to 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qgen.robustness.filters import box_blur3, correlate_taps, gaussian_blur, pad

TG22 = 0.4142135623730951  # tan(22.5°)
TG67 = 2.414213562373095  # tan(67.5°)
#: OpenCV's DIST_L2 with a 5×5 mask: (dy, dx) -> step length
CHAMFER5 = {
    **{(dy, dx): 1.0 for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))},
    **{(dy, dx): 1.4 for dy in (-1, 1) for dx in (-1, 1)},
    **{(dy, dx): 2.1969 for dy, dx in ((-2, -1), (-2, 1), (2, -1), (2, 1), (-1, -2),
                                       (1, -2), (-1, 2), (1, 2))},
}
#: added before truncating a blurred distance to 8 bits (see :func:`water_mask`)
FLOOR_SLACK = 1e-4
EMBOSS = {(-1, -1): -2.0, (-1, 0): -1.0, (0, -1): -1.0, (0, 0): 1.0, (0, 1): 1.0,
          (1, 0): 1.0, (1, 1): 2.0}


def canny(img8: Tensor, low: float = 50.0, high: float = 150.0) -> Tensor:
    """Canny edges (bool) of 8-bit layers (N, 1, H, W) holding 0..255, as OpenCV computes
    them with a 3×3 Sobel aperture and the L1 gradient magnitude: Sobel with replicated
    borders, non-maximum suppression in four directions (the earlier neighbour must be
    strictly smaller, the later one not larger; diagonals strictly smaller on both sides),
    then hysteresis: candidates above ``low`` joined (8-connected) to one above ``high``."""
    sx = {(-1, -1): -1.0, (0, -1): -2.0, (1, -1): -1.0, (-1, 1): 1.0, (0, 1): 2.0,
          (1, 1): 1.0}
    sy = {(dx, dy): v for (dy, dx), v in sx.items()}
    gx = correlate_taps(img8, sx, "replicate")
    gy = correlate_taps(img8, sy, "replicate")
    mag = gx.abs() + gy.abs()
    mp = pad(mag, 1, 1, 1, 1, "zero")
    h, w = mag.shape[-2:]

    def at(dy: int, dx: int) -> Tensor:
        return mp[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ax, ay = gx.abs(), gy.abs()
    horizontal = ay < ax * TG22
    vertical = ay > ax * TG67
    s_pos = (gx * gy) >= 0  # s = +1: compare (y-1, x-1) and (y+1, x+1)
    max_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    max_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    max_d = torch.where(s_pos, (mag > at(-1, -1)) & (mag > at(1, 1)),
                        (mag > at(-1, 1)) & (mag > at(1, -1)))
    local_max = torch.where(horizontal, max_h, torch.where(vertical, max_v, max_d))
    candidate = local_max & (mag > low)
    edges = candidate & (mag > high)
    cand_f = candidate.to(mag.dtype)
    for _ in range(h * w):
        grown = (F.max_pool2d(edges.to(mag.dtype), 3, stride=1, padding=1) * cand_f) > 0
        grown = grown | edges
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges


def chamfer_distance(edges: Tensor, limit: float = 20.0) -> Tensor:
    """Distance of every pixel to the nearest edge pixel under OpenCV's 5×5 chamfer metric,
    truncated at ``limit`` (also where a layer has no edge at all)."""
    big = 1e6
    d = torch.where(edges, torch.zeros((), dtype=torch.float32, device=edges.device),
                    torch.full((), big, dtype=torch.float32, device=edges.device))
    h, w = d.shape[-2:]
    steps = int(limit) + 1  # every step is >= 1 long: paths within limit have <= limit steps
    for _ in range(steps):
        dp = F.pad(d, (2, 2, 2, 2), value=big)
        best = d
        for (dy, dx), length in CHAMFER5.items():
            best = torch.minimum(best, dp[..., 2 + dy:2 + dy + h, 2 + dx:2 + dx + w] + length)
        if torch.equal(best, d):
            break
        d = best
    return d.clamp(max=limit)


def equalize_hist(img8: Tensor) -> Tensor:
    """OpenCV's ``equalizeHist`` of 8-bit layers (N, 1, H, W) holding 0..255: each level
    maps to round(255 × (pixels at or below it − pixels at the lowest level) / (pixels −
    pixels at the lowest level)); a constant layer is left as it is."""
    n = img8.shape[0]
    flat = img8.reshape(n, -1).long()
    total = flat.shape[1]
    hist = torch.zeros(n, 256, dtype=torch.float64, device=img8.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float64))
    cdf = hist.cumsum(1)
    first = torch.argmax((hist > 0).to(torch.int8), dim=1, keepdim=True)
    at_first = hist.gather(1, first)
    denom = (total - at_first).clamp_min(1.0)
    lut = ((cdf - at_first) * (255.0 / denom)).round().clamp(0.0, 255.0)
    out = lut.gather(1, flat).to(img8.dtype).reshape(img8.shape)
    constant = (at_first == total).view(n, 1, 1, 1)
    return torch.where(constant, img8, out)


def water_mask(layer: Tensor, intensity: float) -> Tensor:
    """The water mask (N, 1, H, W) of thresholded liquid layers in [0, 1] (module
    docstring); zero where a layer holds no liquid."""
    l8 = (layer * 255.0).clamp(0.0, 255.0).floor()
    edges = canny(l8)
    dist = chamfer_distance(edges)
    # OpenCV's float blur lands on whole numbers where every input is one (the truncated
    # 20s); a float64 1/3 lands just below them, so a sliver is added before truncating
    dist = (box_blur3(dist) + FLOOR_SLACK).floor()
    dist = equalize_hist(dist)
    dist = correlate_taps(dist, EMBOSS, "reflect101").round().clamp(0.0, 255.0)
    dist = box_blur3(dist).round()
    m = l8 * dist
    peak = m.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, m / peak.clamp_min(1e-12), torch.zeros_like(m)) * intensity


def mud_mask(layer: Tensor, threshold: float, sigma: float) -> Tensor:
    """The mud mask (N, 1, H, W): the liquid indicator smoothed by ``sigma``, below 0.8
    set to 0."""
    m = gaussian_blur((layer > threshold).to(layer.dtype), sigma)
    return torch.where(m < 0.8, torch.zeros_like(m), m)
