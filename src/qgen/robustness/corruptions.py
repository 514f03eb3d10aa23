"""The 19 corruptions of Hendrycks & Dietterich (2019) with their CIFAR constants, batched.

Each corruption is a pure function ``f(images, severity, generator) -> images`` registered
in :data:`CORRUPTIONS` by :func:`register_corruption`; :func:`corrupt` is the one-call API::

    >>> x = torch.rand(4, 3, 32, 32)
    >>> corrupt(x, "fog", 3, seed=0).shape
    torch.Size([4, 3, 32, 32])

Contract of every registered function: ``images`` float (N, C, H, W) in [0, 1] with C = 1
(grey) or 3 (RGB), on any device; the output has the same shape, dtype and device and is
clipped to [0, 1]. Work is done in float32 (float64 input stays float64). Random draws come
from ``generator`` on the generator's device and are moved to the images' device, so a CPU
generator (what :func:`corrupt` uses) gives the same corruption on a CPU and a GPU. Every
image of a batch gets its own draws (noise, angles, textures); the same generator state
gives bitwise the same output.

Each function follows the benchmark's published algorithm and constants
(:mod:`qgen.robustness.constants`); where it needs what cannot be had here a documented
substitute is used (docs/robustness.md): frost's photographs → a procedural texture,
ImageMagick's motion blur → a one-sided line kernel, Pillow's JPEG codec → the lossy steps
of JPEG in torch. Grey images: colour operations act on the grey level (brightness adds to
it, as the HSV value of a grey pixel is its level), snow and spatter blend with the luma of
their colours, and saturate leaves grey images unchanged (they have no saturation).
Outputs are floats; the released files are 8-bit, and the ``robustness`` post-pass rounds
generated sets to 8 bits the same way before evaluating on them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from qgen.errors import QgenError
from qgen.robustness.constants import (
    LUMA,
    MUD_RGB,
    NAMES,
    WATER_RGB,
    check_name,
    params,
    zoom_factors,
)
from qgen.robustness.filters import (
    correlate_taps,
    gaussian_blur,
    line_blur,
    pil_box_weights,
    quantize8,
    rgb_to_gray,
    sample,
)
from qgen.robustness.jpeg import jpeg_roundtrip
from qgen.robustness.liquid import mud_mask, water_mask
from qgen.robustness.textures import frost_texture, plasma_fractal, uniform

Corruption = Callable[[Tensor, int, torch.Generator], Tensor]

#: name -> corruption, in the benchmark's order once the module is imported
CORRUPTIONS: dict[str, Corruption] = {}


def check_images(images: Tensor) -> None:
    """A QgenError unless ``images`` is a float tensor (N, C, H, W) with C = 1 or 3."""
    if not isinstance(images, Tensor):
        raise QgenError(f"images must be a torch tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise QgenError(f"images must be floats in [0, 1], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise QgenError("images must have shape (N, C, H, W) with C = 1 or 3, got "
                        f"{tuple(images.shape)}")


def register_corruption(name: str) -> Callable[[Corruption], Corruption]:
    """Register ``f(x, severity, generator)`` under ``name`` (one of the 19 names).

    The registered function checks its input, runs ``f`` on a float32 (or float64) copy and
    clips and casts the result back, so every entry of :data:`CORRUPTIONS` keeps the
    contract of the module docstring; ``f`` itself may return values outside [0, 1].
    """
    check_name(name)

    def deco(body: Corruption) -> Corruption:
        if name in CORRUPTIONS:
            raise ValueError(f"corruption {name!r} is registered twice")

        def run(images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
            check_images(images)
            params(name, severity)  # validates the severity
            work = images if images.dtype in (torch.float32, torch.float64) \
                else images.to(torch.float32)
            out = body(work.clamp(0.0, 1.0), severity, generator)
            return out.clamp(0.0, 1.0).to(images.dtype)

        run.__name__ = body.__name__
        run.__doc__ = body.__doc__
        CORRUPTIONS[name] = run
        return run

    return deco


def corruption_names() -> list[str]:
    """The 19 corruption names: the benchmark's 15 in group order, then the 4 extra ones."""
    return list(NAMES)


#: images per call of a corruption inside :func:`corrupt`: a batch of 256 CIFAR images
#: (3 MB) stays in a CPU's cache between the dozen passes a corruption makes, which is
#: 2–10× faster than whole-dataset passes (bench/bench_corruptions.py)
CHUNK = 256


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0,
            generator: torch.Generator | None = None, chunk: int = CHUNK) -> Tensor:
    """Corrupt a batch with ``name`` at ``severity`` (1..5); see the module docstring for
    the contract.

    Draws come from ``generator``, or from a CPU generator seeded with ``seed``; the batch
    is corrupted ``chunk`` images at a time, one after the other from the same generator,
    so the output depends on the seed and the chunk size only (not on the device).
    """
    check_name(name)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise QgenError(f"chunk must be a positive integer, got {chunk!r}")
    fn = CORRUPTIONS[name]
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    if not isinstance(images, Tensor) or images.ndim < 1 or images.shape[0] <= chunk:
        return fn(images, severity, gen)
    params(name, severity)  # a bad severity fails before any work
    return torch.cat([fn(part, severity, gen) for part in images.split(chunk)])


# ------------------------------------------------------------------------------- helpers
def _normal(gen: torch.Generator, like: Tensor, shape: tuple[int, ...] | None = None
            ) -> Tensor:
    shape = tuple(like.shape) if shape is None else shape
    z = torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32)
    return z.to(device=like.device, dtype=like.dtype)


def _rand(gen: torch.Generator, like: Tensor, shape: tuple[int, ...] | None = None) -> Tensor:
    shape = tuple(like.shape) if shape is None else shape
    return uniform(gen, shape).to(device=like.device, dtype=like.dtype)


def _colour(rgb: tuple[int, int, int], x: Tensor) -> Tensor:
    """An 8-bit RGB colour as a (1, C, 1, 1) tensor; its luma for grey images."""
    if x.shape[1] == 1:
        values: list[float] = [sum(w * v for w, v in zip(LUMA, rgb, strict=True)) / 255.0]
    else:
        values = [v / 255.0 for v in rgb]
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def zoom_matrix(n: int, factor: float) -> Tensor:
    """The benchmark's ``clipped_zoom`` along one axis of length ``n`` as an (n, n) float64
    matrix: the central ``ceil(n / factor)`` pixels (top-left of centre when the excess is
    odd), resized by ``factor`` as SciPy's ``zoom(order=1)`` does (to ``round(crop ·
    factor)`` pixels, end pixels on end pixels, linear in between), and the central ``n``
    of those kept."""
    return _zoom_matrix(n, float(factor)).clone()


@functools.lru_cache(maxsize=128)
def _zoom_matrix(n: int, factor: float) -> Tensor:
    crop = math.ceil(n / factor)
    top = (n - crop) // 2
    size = int(round(crop * factor))
    trim = (size - n) // 2
    m = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        pos = (i + trim) * (crop - 1) / (size - 1) if size > 1 else 0.0
        lo = min(int(math.floor(pos)), crop - 1)
        frac = pos - lo
        m[i, top + lo] += 1.0 - frac
        if frac > 0:
            m[i, top + lo + 1] += frac
    return m


def clipped_zoom(x: Tensor, factor: float) -> Tensor:
    """The benchmark's ``clipped_zoom`` of the last two axes (:func:`zoom_matrix`)."""
    h, w = x.shape[-2:]
    mh = _zoom_matrix(h, float(factor)).to(device=x.device, dtype=x.dtype)
    mw = _zoom_matrix(w, float(factor)).to(device=x.device, dtype=x.dtype)
    return mh @ x @ mw.T


# --------------------------------------------------------------------------------- noise
@register_corruption("gaussian_noise")
def gaussian_noise(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """x + N(0, std²) per value."""
    return x + params("gaussian_noise", severity) * _normal(gen, x)


@register_corruption("shot_noise")
def shot_noise(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Poisson(x · rate) / rate per value."""
    rate = float(params("shot_noise", severity))
    lam = (x * rate).to(device=gen.device, dtype=torch.float32)
    return torch.poisson(lam, generator=gen).to(device=x.device, dtype=x.dtype) / rate


@register_corruption("impulse_noise")
def impulse_noise(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Salt and pepper (scikit-image's ``s&p``): each value is replaced with probability
    ``amount``, by 1 or 0 with equal chance."""
    amount = params("impulse_noise", severity)
    flipped = _rand(gen, x) <= amount
    salted = _rand(gen, x) <= 0.5
    out = torch.where(flipped & salted, torch.ones_like(x), x)
    return torch.where(flipped & ~salted, torch.zeros_like(x), out)


@register_corruption("speckle_noise")
def speckle_noise(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """x + x · N(0, std²) per value."""
    return x + x * params("speckle_noise", severity) * _normal(gen, x)


# ---------------------------------------------------------------------------------- blur
@register_corruption("gaussian_blur")
def gaussian_blur_(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """scikit-image's Gaussian filter (truncated at 4 sigma, nearest border)."""
    return gaussian_blur(x, params("gaussian_blur", severity))


def glass_permutation(n: int, h: int, w: int, max_delta: int, iterations: int,
                      gen: torch.Generator) -> Tensor:
    """The benchmark's local pixel shuffle as a permutation per image: (n, h·w) source
    positions (row-major) of every output pixel.

    The benchmark visits pixels from the bottom-right to the top-left (rows and columns
    ``size - max_delta`` down to ``max_delta + 1``), swapping each with the pixel at offset
    (dy, dx) drawn from ``randint(-max_delta, max_delta)`` (upper bound excluded: towards
    the top-left only), ``iterations`` times. Swaps are sequential (a pixel can be carried
    along several steps), so they are made in that order here too, one step at a time for
    the whole batch; only the loop over images is vectorized.
    """
    idx = torch.arange(h * w, dtype=torch.long).repeat(n, 1).T.contiguous()  # (h*w, n)
    rows = range(h - max_delta, max_delta, -1)
    cols = range(w - max_delta, max_delta, -1)
    steps = len(rows) * len(cols)
    if steps == 0:
        return idx.T.contiguous()
    cpu = torch.Generator().manual_seed(int(torch.randint(
        0, 2**62, (1,), generator=gen, device=gen.device).item()))
    lanes = torch.arange(n)
    for _ in range(iterations):
        offs = torch.randint(-max_delta, max_delta, (steps, n, 2), generator=cpu)
        b_all = ((torch.tensor([r for r in rows for _ in cols]).view(-1, 1) + offs[:, :, 1]) * w
                 + torch.tensor([c for _ in rows for c in cols]).view(-1, 1) + offs[:, :, 0])
        flat = idx.view(-1)
        k = 0
        for r in rows:
            for c in cols:
                a = r * w + c
                fb = b_all[k] * n + lanes
                va = idx[a].clone()
                idx[a] = flat[fb]
                flat[fb] = va
                k += 1
    return idx.T.contiguous()


@register_corruption("glass_blur")
def glass_blur(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Gaussian blur, 8 bits (truncated), local pixel shuffle, Gaussian blur again."""
    sigma, delta, iterations = params("glass_blur", severity)
    n, c, h, w = x.shape
    y = quantize8(gaussian_blur(x, sigma), "floor")
    perm = glass_permutation(n, h, w, delta, iterations, gen).to(x.device)
    y = y.reshape(n, c, h * w).gather(2, perm[:, None, :].expand(n, c, h * w))
    return gaussian_blur(y.reshape(n, c, h, w), sigma)


def disk_taps(radius: float, alias_blur: float) -> dict[tuple[int, int], float]:
    """The benchmark's defocus kernel: the disk x² + y² <= r² on a 17×17 grid (wider for
    r > 8), normalized, then blurred by OpenCV's 3×3 (5×5 for r > 8) Gaussian of sigma
    ``alias_blur``; returned as its non-zero taps."""
    half = 8 if radius <= 8 else math.ceil(radius)
    ksize = 3 if radius <= 8 else 5
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((coords[:, None] ** 2 + coords[None, :] ** 2) <= radius ** 2).to(torch.float64)
    disk = disk / disk.sum()
    g = [math.exp(-((i - (ksize - 1) / 2) ** 2) / (2 * alias_blur ** 2)) for i in range(ksize)]
    g = [v / sum(g) for v in g]
    r = ksize // 2
    kernel = correlate_taps(disk[None, None], {(i - r, j - r): g[i] * g[j] for i in range(ksize)
                                               for j in range(ksize)}, "reflect101")[0, 0]
    return {(i - half, j - half): float(kernel[i, j]) for i in range(2 * half + 1)
            for j in range(2 * half + 1) if kernel[i, j] > 0}


@register_corruption("defocus_blur")
def defocus_blur(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Correlation with an anti-aliased disk (OpenCV's ``filter2D``, reflect101 border)."""
    radius, alias = params("defocus_blur", severity)
    return correlate_taps(x, disk_taps(radius, alias), "reflect101")


@register_corruption("motion_blur")
def motion_blur(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """A one-sided line blur (radius, sigma) at an angle drawn uniformly in (−45°, 45°) per
    image: the substitute for ImageMagick's motion blur (see :func:`filters.line_blur`)."""
    radius, sigma = params("motion_blur", severity)
    angles = uniform(gen, (x.shape[0],), -45.0, 45.0, torch.float64)
    return line_blur(x, radius, sigma, angles)


@functools.lru_cache(maxsize=64)
def _zoom_terms(h: int, w: int, severity: int) -> tuple[tuple[int, Tensor, Tensor], ...]:
    """zoom_blur's zooms as distinct (row, column) matrix pairs with their counts: on small
    images many factors round to the same crop and size (at 32 pixels, 27 images average
    only 13 distinct ones), and the identity needs no product at all."""
    terms: list[list] = []
    for f in (1.0, *zoom_factors(severity)):  # the image itself, then every zoom
        mh, mw = zoom_matrix(h, f), zoom_matrix(w, f)
        for t in terms:
            if torch.equal(t[1], mh) and torch.equal(t[2], mw):
                t[0] += 1
                break
        else:
            terms.append([1, mh, mw])
    return tuple((c, mh, mw) for c, mh, mw in terms)


@register_corruption("zoom_blur")
def zoom_blur(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """The mean of the image and its central zooms by every factor of
    :func:`~qgen.robustness.constants.zoom_factors` (1.00, 1.01, …); identical zooms are
    computed once and counted."""
    h, w = x.shape[-2:]
    eye_h, eye_w = torch.eye(h, dtype=torch.float64), torch.eye(w, dtype=torch.float64)
    out = torch.zeros_like(x)
    total = 0
    for count, mh, mw in _zoom_terms(h, w, severity):
        total += count
        if torch.equal(mh, eye_h) and torch.equal(mw, eye_w):
            out.add_(x, alpha=count)
        else:
            mh_, mw_ = (m.to(device=x.device, dtype=x.dtype) for m in (mh, mw))
            out.add_(mh_ @ x @ mw_.T, alpha=count)
    return out / total


# ------------------------------------------------------------------------------- weather
@register_corruption("snow")
def snow(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """A thresholded, zoomed noise layer (8 bits), motion-blurred at an angle in
    (−135°, −45°) (line kernel), added twice (once rotated by 180°) to the image lightened
    towards 1.5 · luma + 0.5."""
    mean, std, zoom, threshold, radius, sigma, blend = params("snow", severity)
    n, _, h, w = x.shape
    layer = mean + std * _normal(gen, x, (n, 1, h, w))
    layer = clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = quantize8(layer.clamp(0.0, 1.0), "floor")
    angles = uniform(gen, (n,), -135.0, -45.0, torch.float64)
    layer = quantize8(line_blur(layer, radius, sigma, angles), "round")
    lighter = torch.maximum(x, rgb_to_gray(x) * 1.5 + 0.5)
    x = blend * x + (1.0 - blend) * lighter
    return x + layer + layer.flip(-2, -1)


@register_corruption("frost")
def frost(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """image weight · x + frost weight · a procedural frost layer
    (:func:`~qgen.robustness.textures.frost_texture`, the substitute for the photographs)."""
    img_w, frost_w = params("frost", severity)
    n, c, h, w = x.shape
    layer = frost_texture(n, c, max(h, w), gen)[..., :h, :w].to(device=x.device, dtype=x.dtype)
    return img_w * x + frost_w * layer


@register_corruption("fog")
def fog(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """x + strength · plasma fractal, rescaled by max / (max + strength) (max over the
    image)."""
    strength, decay = params("fog", severity)
    n, _, h, w = x.shape
    plasma = plasma_fractal(n, max(h, w), decay, gen)[:, None, :h, :w]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + strength * plasma.to(device=x.device, dtype=x.dtype)
    return x * peak / (peak + strength)


def _hsv_weights(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Value V, saturation S and each channel's place w in [0, 1] of RGB images, such that
    every channel equals V · (1 − S · w) (HSV with the hue kept). scikit-image gives
    achromatic pixels hue 0 and saturation 0, i.e. w = (0, 1, 1)."""
    v = x.amax(dim=1, keepdim=True)
    lo = x.amin(dim=1, keepdim=True)
    delta = v - lo
    s = torch.where(delta > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    hue0 = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    wts = torch.where(delta > 0, (v - x) / delta.clamp_min(1e-12), hue0.expand_as(x))
    return v, s, wts


@register_corruption("brightness")
def brightness(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Add to the HSV value (clipped to 1), hue and saturation kept; for grey images the
    value is the grey level."""
    add = params("brightness", severity)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + add).clamp(0.0, 1.0)
    # V · (1 − S·w) with S·w = (V − x)/V: every channel scales by V'/V (black becomes V')
    return torch.where(v > 0, x * (v_new / v.clamp_min(1e-12)), v_new.expand_as(x))


# ------------------------------------------------------------------------------- digital
@register_corruption("contrast")
def contrast(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """(x − mean) · factor + mean, with the mean per image and channel."""
    factor = params("contrast", severity)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor + mean


@register_corruption("elastic_transform")
def elastic_transform(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """A random affine warp (three points jittered; OpenCV's ``warpAffine``, bilinear,
    reflect101 border) followed by a smooth random displacement field (U(−1, 1) noise
    smoothed by a Gaussian of ``sigma``, truncated at 3 sigma, times ``alpha``; SciPy's
    ``map_coordinates``, bilinear, reflect border); the constants are fractions of the
    image size."""
    n, _, h, w = x.shape
    size = h
    alpha, sigma, jitter = (v * size for v in params("elastic_transform", severity))
    cy, cx = float(h // 2), float(w // 2)
    sq = float(min(h, w) // 3)
    src = torch.tensor([[cy + sq, cx + sq], [cy + sq, cx - sq], [cy - sq, cx - sq]],
                       dtype=torch.float64)  # as the benchmark writes them (x, y) = (this)
    dst = src + uniform(gen, (n, 3, 2), -jitter, jitter, torch.float64).cpu()
    ones = torch.ones(n, 3, 1, dtype=torch.float64)
    # the affine map A with A (p, 1) = q for the 3 point pairs, and its inverse
    a = torch.linalg.solve(torch.cat([src.expand(n, 3, 2), ones], 2), dst)  # (n, 3, 2)
    full = torch.zeros(n, 3, 3, dtype=torch.float64)
    full[:, :, :2] = a
    full[:, 2, 2] = 1.0
    inv = torch.linalg.inv(full.transpose(1, 2))  # maps output (x, y, 1) to input
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], 0).reshape(3, -1)
    src_pts = inv @ pts  # (n, 3, h*w)
    sx = src_pts[:, 0].reshape(n, h, w).to(x.device)
    sy = src_pts[:, 1].reshape(n, h, w).to(x.device)
    warped = sample(x, sy.to(x.dtype), sx.to(x.dtype), "reflect101")
    noise = uniform(gen, (n, 2, h, w), -1.0, 1.0).to(device=x.device, dtype=x.dtype)
    if alpha == 0:
        return warped
    field = gaussian_blur(noise, sigma, "symmetric", truncate=3.0) * alpha
    yy = ys.to(device=x.device, dtype=x.dtype)[None] + field[:, 1]
    xx = xs.to(device=x.device, dtype=x.dtype)[None] + field[:, 0]
    return sample(warped, yy, xx, "symmetric")


@register_corruption("pixelate")
def pixelate(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """Pillow's BOX resize down to ``int(size · factor)`` pixels and back up (the way back
    picks the nearest pixel). Pillow resizes along the width first, then the height, and
    rounds each pass to 8 bits (half up); so does this, as small matrix products."""
    factor = params("pixelate", severity)
    h, w = x.shape[-2:]
    hn, wn = max(int(h * factor), 1), max(int(w * factor), 1)

    def mat(n_in: int, n_out: int) -> Tensor:
        return pil_box_weights(n_in, n_out).to(device=x.device, dtype=x.dtype)

    small = quantize8(mat(h, hn) @ quantize8(x @ mat(w, wn).T, "round"), "round")
    return mat(hn, h) @ small @ mat(wn, w).T


@register_corruption("jpeg_compression")
def jpeg_compression(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """The lossy steps of baseline JPEG at the severity's quality
    (:mod:`qgen.robustness.jpeg`); grey images are coded as one luminance plane."""
    return jpeg_roundtrip(x, params("jpeg_compression", severity))


# --------------------------------------------------------------------------------- extra
@register_corruption("spatter")
def spatter(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """A smoothed, thresholded noise layer becomes water (severities 1–3: pale turquoise
    added along embossed liquid edges) or mud (4–5: brown painted over the image); see
    :mod:`qgen.robustness.liquid`."""
    mean, std, sigma, threshold, intensity, mode = params("spatter", severity)
    n, _, h, w = x.shape
    layer = gaussian_blur(mean + std * _normal(gen, x, (n, 1, h, w)), sigma)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    if mode == 0:
        return x + water_mask(layer, intensity) * _colour(WATER_RGB, x)
    m = mud_mask(layer, threshold, intensity)
    return x * (1.0 - m) + _colour(MUD_RGB, x) * m


@register_corruption("saturate")
def saturate(x: Tensor, severity: int, gen: torch.Generator) -> Tensor:
    """HSV saturation · a + b (clipped to [0, 1]), hue and value kept. As in the benchmark,
    achromatic pixels of colour images have hue 0, so b > 0 tints them red. Grey images have
    no saturation and are returned unchanged."""
    a, b = params("saturate", severity)
    if x.shape[1] == 1:
        return x
    v, s, wts = _hsv_weights(x)
    s_new = (s * a + b).clamp(0.0, 1.0)
    return v * (1.0 - s_new * wts)


_missing = [name for name in NAMES if name not in CORRUPTIONS]
if _missing:  # pragma: no cover - a guard for whoever edits the registry
    raise ImportError(f"corruptions without an implementation: {', '.join(_missing)}")
# keep the registry in the benchmark's order
CORRUPTIONS = {name: CORRUPTIONS[name] for name in NAMES}
