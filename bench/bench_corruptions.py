"""Benchmark: qgen's batched torch corruptions against a per-image numpy loop of the same
algorithms, side by side, per corruption.

The baseline is what the field's usual package does: one function call per image, numpy and
SciPy inside (``scipy.ndimage`` for filters, zooms and sampling). It is written here from
the same algorithm descriptions as qgen's torch code (qgen.robustness), step for step, so the
ratio measures batching (and torch's kernels), not a different algorithm: where the
benchmark's reference calls OpenCV or ImageMagick (which qgen does not depend on), the numpy
loop does what qgen does instead. Both sides corrupt the same images at one severity; the two
are timed alternately in each repeat so machine noise hits both; medians are printed per
corruption with the ratio numpy / torch, and the overall ratio of the sums.

    OMP_NUM_THREADS=2 python bench/bench_corruptions.py --n 10000 --severity 3 --threads 2
    python bench/bench_corruptions.py --n 500 --repeats 1 --only fog,spatter   # a quick look
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy
import scipy.ndimage as ndi
import torch

from qgen.robustness import NAMES, corrupt, params, zoom_factors
from qgen.robustness.constants import LUMA, MUD_RGB, WATER_RGB
from qgen.robustness.corruptions import disk_taps
from qgen.robustness.filters import pil_box_weights
from qgen.robustness.jpeg import CHROMA_TABLE, LUMA_TABLE, dct_matrix, quality_table
from qgen.robustness.liquid import CHAMFER5, EMBOSS, FLOOR_SLACK, TG22, TG67
from qgen.robustness.textures import FROST_TINT

Img = np.ndarray  # (H, W, C) float64 in [0, 1]
# ---------------------------------------------------------------- per-image helpers


def gauss(img: Img, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> Img:
    """scikit-image's gaussian: each channel, SciPy's filter."""
    s = (sigma, sigma, 0) if img.ndim == 3 else sigma
    return ndi.gaussian_filter(img, s, mode=mode, truncate=truncate)


def q8(x: Img, mode: str = "floor") -> Img:
    y = np.clip(x * 255.0, 0, 255)
    return (np.floor(y) if mode == "floor" else np.minimum(np.floor(y + 0.501), 255)) / 255


def clipped_zoom(img: Img, f: float) -> Img:
    h = img.shape[0]
    ch = int(np.ceil(h / f))
    top = (h - ch) // 2
    z = ndi.zoom(img[top:top + ch, top:top + ch], (f, f) + (1,) * (img.ndim - 2), order=1)
    t = (z.shape[0] - h) // 2
    return z[t:t + h, t:t + h]


def line_blur(img: Img, radius: float, sigma: float, angle: float) -> Img:
    width = 2 * math.ceil(radius) + 1
    w = np.exp(-np.arange(width) ** 2 / (2 * sigma * sigma))
    keep = w / w.sum() >= 1e-7
    w = w[keep] / w[keep].sum()
    i = np.arange(width)[keep]
    t = math.radians(angle)
    ox = np.ceil(i * math.cos(t) - 0.5).astype(int)
    oy = np.ceil(i * math.sin(t) - 0.5).astype(int)
    p = int(i.max())
    h, wd = img.shape[:2]
    pad = np.pad(img, ((p, p), (p, p)) + ((0, 0),) * (img.ndim - 2), mode="edge")
    out = np.zeros_like(img)
    for k in range(len(w)):
        out += w[k] * pad[p + oy[k]:p + oy[k] + h, p + ox[k]:p + ox[k] + wd]
    return out


def plasma(size: int, decay: float, rng: np.random.Generator) -> Img:
    n = 1
    while n < size:
        n *= 2
    n = max(n, 2)
    a = np.zeros((n, n))
    step, wib = n, 100.0
    while step >= 2:
        h = step // 2
        c = a[0::step, 0::step]
        acc = c + np.roll(c, -1, 0)
        acc = acc + np.roll(acc, -1, 1)
        a[h::step, h::step] = acc / 4 + wib * rng.uniform(-wib, wib, acc.shape)
        d, c = a[h::step, h::step], a[0::step, 0::step]
        s = d + np.roll(d, 1, 0) + c + np.roll(c, -1, 1)
        a[0::step, h::step] = s / 4 + wib * rng.uniform(-wib, wib, s.shape)
        s = d + np.roll(d, 1, 1) + c + np.roll(c, -1, 0)
        a[h::step, 0::step] = s / 4 + wib * rng.uniform(-wib, wib, s.shape)
        step //= 2
        wib /= decay
    a -= a.min()
    return (a / max(a.max(), 1e-12))[:size, :size]


def gray(img: Img) -> Img:
    return img if img.shape[2] == 1 else img @ np.array(LUMA)[:, None]


def colour(rgb: tuple[int, int, int], c: int) -> np.ndarray:
    return np.array([sum(w * v for w, v in zip(LUMA, rgb, strict=True)) / 255]) if c == 1 \
        else np.array(rgb) / 255


def correlate(img2d: Img, taps: dict[tuple[int, int], float], mode: str) -> Img:
    r = max(max(abs(a), abs(b)) for a, b in taps)
    k = np.zeros((2 * r + 1, 2 * r + 1))
    for (dy, dx), v in taps.items():
        k[r + dy, r + dx] = v
    return ndi.correlate(img2d, k, mode=mode)


# ---------------------------------------------------------------- the 19, per image
def np_gaussian_noise(x, s, rng):
    return x + rng.normal(size=x.shape, scale=params("gaussian_noise", s))


def np_shot_noise(x, s, rng):
    c = params("shot_noise", s)
    return rng.poisson(x * c) / c


def np_impulse_noise(x, s, rng):
    flipped = rng.random(x.shape) <= params("impulse_noise", s)
    salted = rng.random(x.shape) <= 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def np_speckle_noise(x, s, rng):
    return x + x * rng.normal(size=x.shape, scale=params("speckle_noise", s))


def np_gaussian_blur(x, s, rng):
    return gauss(x, params("gaussian_blur", s))


def np_glass_blur(x, s, rng):
    sigma, d, iters = params("glass_blur", s)
    img = q8(gauss(x, sigma))
    h, w = img.shape[:2]
    for _ in range(iters):  # the benchmark's sequential local swaps
        for r in range(h - d, d, -1):
            for c in range(w - d, d, -1):
                dx, dy = rng.integers(-d, d, size=2)
                img[r, c], img[r + dy, c + dx] = img[r + dy, c + dx], img[r, c].copy()
    return gauss(img, sigma)


_DISK: dict[int, dict[tuple[int, int], float]] = {}


def np_defocus_blur(x, s, rng):
    if s not in _DISK:  # the kernel is built once
        _DISK[s] = disk_taps(*params("defocus_blur", s))
    taps = _DISK[s]
    out = np.empty_like(x)
    for ch in range(x.shape[2]):
        out[..., ch] = correlate(x[..., ch], taps, "mirror")
    return out


def np_motion_blur(x, s, rng):
    return line_blur(x, *params("motion_blur", s), rng.uniform(-45, 45))


def np_zoom_blur(x, s, rng):
    fs = zoom_factors(s)
    out = x.copy()
    for f in fs:
        out += clipped_zoom(x, f)
    return out / (len(fs) + 1)


def np_snow(x, s, rng):
    mean, std, zoom, thr, radius, sigma, blend = params("snow", s)
    h, w = x.shape[:2]
    layer = clipped_zoom(rng.normal(mean, std, (h, w, 1)), zoom)
    layer[layer < thr] = 0
    layer = q8(np.clip(layer, 0, 1))
    layer = q8(line_blur(layer, radius, sigma, rng.uniform(-135, -45)), "round")
    x = blend * x + (1 - blend) * np.maximum(x, gray(x) * 1.5 + 0.5)
    return x + layer + np.rot90(layer, 2)


def np_frost(x, s, rng):
    img_w, frost_w = params("frost", s)
    h, w, c = x.shape
    size = max(h, w)
    sheet = gauss(plasma(size, 1.6, rng), max(size / 64, 0.5))
    seeds = (rng.random((size, size)) < 0.015).astype(float)
    needles = sum(line_blur(seeds, max(size / 4, 2), size / 8, rng.uniform(-180, 180))
                  for _ in range(2))
    needles = np.clip((needles / max(needles.max(), 1e-12) - 0.08) / 0.3, 0, 1)
    layer = np.clip(1.3 * sheet + 0.9 * needles - 0.45, 0, 1)[:h, :w, None]
    tint = np.array([sum(w * t for w, t in zip(LUMA, FROST_TINT, strict=True))]) if c == 1 \
        else np.array(FROST_TINT)
    return img_w * x + frost_w * layer * tint


def np_fog(x, s, rng):
    strength, decay = params("fog", s)
    peak = x.max()
    x = x + strength * plasma(max(x.shape[:2]), decay, rng)[:x.shape[0], :x.shape[1], None]
    return x * peak / (peak + strength)


def np_brightness(x, s, rng):
    v = x.max(axis=2, keepdims=True)
    vn = np.clip(v + params("brightness", s), 0, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(v > 0, x * vn / v, vn)


def np_contrast(x, s, rng):
    m = x.mean(axis=(0, 1), keepdims=True)
    return (x - m) * params("contrast", s) + m


def np_elastic_transform(x, s, rng):
    h, w, c = x.shape
    alpha, sigma, jitter = (v * h for v in params("elastic_transform", s))
    cy, cx, sq = h // 2, w // 2, min(h, w) // 3
    src = np.array([[cy + sq, cx + sq], [cy + sq, cx - sq], [cy - sq, cx - sq]], float)
    dst = src + rng.uniform(-jitter, jitter, src.shape)
    a = np.linalg.solve(np.c_[src, np.ones(3)], dst)  # [p, 1] @ a = q
    full = np.eye(3)
    full[:2, :] = a.T
    inv = np.linalg.inv(full)
    ys, xs = np.mgrid[0:h, 0:w].astype(float)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    warped = np.stack([ndi.map_coordinates(x[..., k], [sy, sx], order=1, mode="mirror")
                       for k in range(c)], -1)
    noise = rng.uniform(-1, 1, (2, h, w))
    if alpha == 0:
        return warped
    dx, dy = (gauss(n, sigma, "reflect", 3.0) * alpha for n in noise)
    return np.stack([ndi.map_coordinates(warped[..., k], [ys + dy, xs + dx], order=1,
                                         mode="reflect") for k in range(c)], -1)


_BOX: dict[tuple[int, int], np.ndarray] = {}


def box(n_in: int, n_out: int) -> np.ndarray:
    if (n_in, n_out) not in _BOX:
        _BOX[(n_in, n_out)] = pil_box_weights(n_in, n_out).numpy()
    return _BOX[(n_in, n_out)]


def np_pixelate(x, s, rng):
    h, w = x.shape[:2]
    hn, wn = int(h * params("pixelate", s)), int(w * params("pixelate", s))
    small = q8(np.einsum("ij,jkc->ikc", box(h, hn),
                         q8(np.einsum("kj,ijc->ikc", box(w, wn), x), "round")), "round")
    return np.einsum("ij,jkc->ikc", box(hn, h), np.einsum("kj,ijc->ikc", box(wn, w), small))


_D = dct_matrix().numpy()


def code(plane: np.ndarray, table: list[int]) -> np.ndarray:
    h, w = plane.shape
    b = (plane - 128).reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    q = np.array(table, float).reshape(8, 8)
    coef = np.round(_D @ b @ _D.T / q) * q
    return np.clip(np.round((_D.T @ coef @ _D).transpose(0, 2, 1, 3).reshape(h, w) + 128),
                   0, 255)


def np_jpeg_compression(x, s, rng):
    quality = params("jpeg_compression", s)
    h, w, c = x.shape
    v = np.clip(np.round(x * 255), 0, 255)
    lt = quality_table(LUMA_TABLE, quality)
    if c == 1:
        p = np.pad(v[..., 0], ((0, -h % 8), (0, -w % 8)), mode="edge")
        return (code(p, lt)[:h, :w] / 255)[..., None]
    ct = quality_table(CHROMA_TABLE, quality)
    v = np.pad(v, ((0, h % 2), (0, -w % 16), (0, 0)), mode="edge").astype(np.int64)
    r, g, b = v[..., 0], v[..., 1], v[..., 2]

    def fix(f: float) -> int:
        return int(f * 65536 + 0.5)
    half, off = 1 << 15, (128 << 16) + (1 << 15) - 1
    y = (fix(0.299) * r + fix(0.587) * g + fix(0.114) * b + half) >> 16
    cb = (-fix(0.16874) * r - fix(0.33126) * g + fix(0.5) * b + off) >> 16
    cr = (fix(0.5) * r - fix(0.41869) * g - fix(0.08131) * b + off) >> 16
    ch, cw = (h + 1) // 2, (w + 1) // 2
    planes = [code(np.pad(y, ((0, -y.shape[0] % 8), (0, 0)), mode="edge").astype(float),
                   lt)[:h, :w].astype(np.int64)]
    for p in (cb, cr):
        hh, ww = p.shape
        sub = (p.reshape(hh // 2, 2, ww // 2, 2).sum((1, 3)) + 1 + np.arange(ww // 2) % 2) >> 2
        sub = np.pad(sub, ((0, -ch % 8), (0, 0)), mode="edge")
        cd = code(sub.astype(float), ct).astype(np.int64)[:ch, :cw]
        up = np.concatenate([cd[:1], cd[:-1]]), np.concatenate([cd[1:], cd[-1:]])
        col = np.stack([3 * cd + up[0], 3 * cd + up[1]], 1).reshape(2 * ch, cw)
        left = np.concatenate([col[:, :1], col[:, :-1]], 1)
        right = np.concatenate([col[:, 1:], col[:, -1:]], 1)
        planes.append(np.stack([(3 * col + left + 8) >> 4, (3 * col + right + 7) >> 4],
                               2).reshape(2 * ch, 2 * cw)[:h, :w])
    y, cb, cr = planes[0], planes[1] - 128, planes[2] - 128
    rgb = np.stack([y + ((fix(1.402) * cr + half) >> 16),
                    y + ((-fix(0.34414) * cb + half - fix(0.71414) * cr) >> 16),
                    y + ((fix(1.772) * cb + half) >> 16)], -1)
    return np.clip(rgb, 0, 255) / 255


def canny(img8: np.ndarray) -> np.ndarray:
    sx = {(-1, -1): -1.0, (0, -1): -2.0, (1, -1): -1.0, (-1, 1): 1.0, (0, 1): 2.0,
          (1, 1): 1.0}
    gx = correlate(img8, sx, "nearest")
    gy = correlate(img8, {(dx, dy): v for (dy, dx), v in sx.items()}, "nearest")
    mag = np.abs(gx) + np.abs(gy)
    mp = np.pad(mag, 1)
    h, w = mag.shape

    def at(dy: int, dx: int) -> np.ndarray:
        return mp[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    ax, ay = np.abs(gx), np.abs(gy)
    horiz, vert = ay < ax * TG22, ay > ax * TG67
    diag = np.where(gx * gy >= 0, (mag > at(-1, -1)) & (mag > at(1, 1)),
                    (mag > at(-1, 1)) & (mag > at(1, -1)))
    nms = np.where(horiz, (mag > at(0, -1)) & (mag >= at(0, 1)),
                   np.where(vert, (mag > at(-1, 0)) & (mag >= at(1, 0)), diag))
    cand = nms & (mag > 50)
    labels, n = ndi.label(cand, np.ones((3, 3)))  # hysteresis: components with a strong pixel
    strong = np.unique(labels[cand & (mag > 150)])
    return np.isin(labels, strong[strong > 0])


def chamfer(edges: np.ndarray, limit: float = 20.0) -> np.ndarray:
    d = np.where(edges, 0.0, 1e6)
    h, w = d.shape
    for _ in range(int(limit) + 1):
        p = np.pad(d, 2, constant_values=1e6)
        best = d
        for (dy, dx), step in CHAMFER5.items():
            best = np.minimum(best, p[2 + dy:2 + dy + h, 2 + dx:2 + dx + w] + step)
        if np.array_equal(best, d):
            break
        d = best
    return np.minimum(d, limit)


def equalize(img8: np.ndarray) -> np.ndarray:
    flat = img8.astype(np.int64).ravel()
    hist = np.bincount(flat, minlength=256).astype(float)
    first = int(np.argmax(hist > 0))
    if hist[first] == flat.size:
        return img8
    lut = np.clip(np.round((np.cumsum(hist) - hist[first]) * 255 / (flat.size - hist[first])),
                  0, 255)
    return lut[flat].reshape(img8.shape)


def np_spatter(x, s, rng):
    mean, std, sigma, thr, intensity, mode = params("spatter", s)
    h, w, c = x.shape
    layer = gauss(rng.normal(mean, std, (h, w)), sigma)
    layer[layer < thr] = 0
    if mode == 0:
        l8 = np.floor(np.clip(layer * 255, 0, 255))
        dist = np.floor(ndi.uniform_filter(chamfer(canny(l8)), 3, mode="mirror") + FLOOR_SLACK)
        dist = np.clip(np.round(correlate(equalize(dist), EMBOSS, "mirror")), 0, 255)
        m = l8 * np.round(ndi.uniform_filter(dist, 3, mode="mirror"))
        m = m / m.max() * intensity if m.max() > 0 else m
        return x + m[..., None] * colour(WATER_RGB, c)
    m = gauss((layer > thr).astype(float), intensity)
    m[m < 0.8] = 0
    return x * (1 - m[..., None]) + colour(MUD_RGB, c) * m[..., None]


def np_saturate(x, s, rng):
    a, b = params("saturate", s)
    if x.shape[2] == 1:
        return x
    v, lo = x.max(2, keepdims=True), x.min(2, keepdims=True)
    delta = v - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        sat = np.where(delta > 0, delta / v, 0.0)
        wts = np.where(delta > 0, (v - x) / np.where(delta > 0, delta, 1), np.array([0, 1, 1]))
    return v * (1 - np.clip(sat * a + b, 0, 1) * wts)


#: corruptions without random draws: the two sides must give the same images
DETERMINISTIC = ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate",
                 "jpeg_compression", "gaussian_blur", "saturate")
NUMPY: dict[str, Callable[[Img, int, np.random.Generator], Img]] = {
    n: globals()[f"np_{n}"] for n in NAMES}


def numpy_loop(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """The baseline: one call per image, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    fn = NUMPY[name]
    return np.stack([np.clip(fn(img, severity, rng), 0, 1) for img in images])


# ---------------------------------------------------------------- the benchmark
def test_images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth RGB 32×32 images with detail at two scales (no dataset needed)."""
    from qgen.robustness.filters import gaussian_blur

    g = torch.Generator().manual_seed(seed)
    a = gaussian_blur(torch.rand(n, 3, 32, 32, generator=g), 3.0)
    b = gaussian_blur(torch.rand(n, 1, 32, 32, generator=g), 1.0)
    a, b = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
    return torch.sigmoid(1.2 * a + 0.8 * b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="images (32×32 RGB)")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="torch repeats (median)")
    ap.add_argument("--numpy-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--only", default=None, help="comma-separated corruptions")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only.split(",") if args.only else list(NAMES)
    x = test_images(args.n)
    xn = x.permute(0, 2, 3, 1).double().numpy().copy()
    print(f"{args.n} RGB 32×32 images, severity {args.severity}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}, scipy "
          f"{scipy.__version__}, Python {platform.python_version()}; {os.cpu_count()} CPUs; "
          f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for name in (n for n in DETERMINISTIC if n in names):  # the same algorithm, checked
        a = numpy_loop(xn[:64], name, args.severity, 0)
        b = corrupt(x[:64].double(), name, args.severity).permute(0, 2, 3, 1).numpy()
        err = np.abs(a - b)
        print(f"check {name:18s} max |numpy - torch| = {err.max():.2e} "
              f"(mean {err.mean():.1e})")
    print(f"{'corruption':18s} {'numpy s':>9s} {'torch s':>8s} {'ratio':>7s}")
    tot_np = tot_t = 0.0
    ratios: dict[str, tuple[float, float]] = {}
    for name in names:
        t_np, t_t = [], []
        for r in range(max(args.repeats, args.numpy_repeats)):
            if r < args.numpy_repeats:
                t0 = time.perf_counter()
                numpy_loop(xn, name, args.severity, seed=r)
                t_np.append(time.perf_counter() - t0)
            if r < args.repeats:
                t0 = time.perf_counter()
                corrupt(x, name, args.severity, seed=r)
                t_t.append(time.perf_counter() - t0)
        a, b = statistics.median(t_np), statistics.median(t_t)
        tot_np, tot_t = tot_np + a, tot_t + b
        ratios[name] = (a, b)
        print(f"{name:18s} {a:9.3f} {b:8.3f} {a / b:6.1f}×", flush=True)
    print(f"{'all (sums)':18s} {tot_np:9.3f} {tot_t:8.3f} {tot_np / tot_t:6.1f}×")
    rest = {k: v for k, v in ratios.items() if k != "glass_blur"}
    if rest and len(rest) < len(ratios):  # the swap loop dominates the sums: also without it
        a, b = sum(v[0] for v in rest.values()), sum(v[1] for v in rest.values())
        print(f"{'sums w/o glass':18s} {a:9.3f} {b:8.3f} {a / b:6.1f}×")
    geo = math.exp(statistics.fmean(math.log(a / b) for a, b in ratios.values()))
    print(f"geometric mean of the per-corruption ratios: {geo:.1f}×")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
