"""From a :class:`~qgen.config.DataSpec` to prepared tensors: find, read, subset, convert,
normalize.

The order matters and is fixed: seeded subsets are drawn first (on the ``uint8`` images, so the
full float dataset never exists), then images become float32 in [0, 1] chunk by chunk with the
channel conversion and padding/resizing applied, then per-channel statistics are computed on the
prepared *training* images only and applied to both splits, so no test information leaks into
the inputs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from qgen.config import DataSpec
from qgen.data.registry import (
    DatasetInfo,
    RawImages,
    SourceSplits,
    Splits,
    _as_path,
    get_dataset,
)
from qgen.errors import QgenError

CHUNK = 4096  # images converted at a time: bounds the temporary float copies
MIN_STD = 1e-6  # a constant channel would divide by zero; it is left unscaled instead


def load_data(spec: DataSpec, data_dir: str | Path | None = None,
              download: bool = False) -> Splits | SourceSplits:
    """Load and prepare the dataset ``spec.name``.

    ``data_dir``, when given, is the only place searched (no silent fallback); otherwise
    ``$QGEN_DATA`` and the system folders are. ``download`` fetches a missing dataset (only
    Fashion-MNIST has a download) into ``data_dir`` or ``$QGEN_DATA``. A streamed dataset
    (``imagenet``, ``folder:PATH``) returns :class:`SourceSplits` that decode as they go.
    """
    entry = get_dataset(spec.name)
    ddir = _as_path(data_dir)
    try:
        where = entry.locate(ddir)
    except QgenError as exc:
        if not download:
            raise
        if entry.fetch is None:
            raise QgenError(f"{exc}. (--download is not available for {spec.name})") from exc
        entry.fetch(ddir)
        where = entry.locate(ddir)
    if entry.stream is not None:
        return entry.stream(where, spec)
    return prepare(entry.read(where), spec)


def subset_indices(n: int, k: int | None, seed: int) -> torch.Tensor | None:
    """Sorted indices of a seeded random subset of size ``k`` of ``range(n)`` (None: all).

    The subset is the first ``k`` entries of one seeded permutation, so for a fixed seed a
    smaller subset is contained in a larger one, which keeps training-set-size sweeps nested.
    """
    if k is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:k].sort().values


def prepare(raw: RawImages, spec: DataSpec) -> Splits:
    """Subset, convert and normalize ``raw`` as ``spec`` asks (see the module docstring)."""
    name = spec.name
    parts = {}
    # Train and test draw from separate streams (2s and 2s+1): changing the test subset must
    # never change which training images a run sees.
    for split, x, y, k, seed in (("train", raw.train_x, raw.train_y, spec.train_subset,
                                  2 * spec.subset_seed),
                                 ("test", raw.test_x, raw.test_y, spec.test_subset,
                                  2 * spec.subset_seed + 1)):
        if k is not None and k > x.shape[0]:
            raise QgenError(f"data.{split}_subset: {k} is larger than the {name} {split} set "
                            f"({x.shape[0]} images); use at most {x.shape[0]}")
        idx = subset_indices(x.shape[0], k, seed)
        if idx is not None:
            x, y = x[idx], y[idx]
        parts[split] = (x, y)
    if parts["train"][0].shape[0] == 0:
        raise QgenError(f"{name}: the training set is empty")

    _, c, h, w = parts["train"][0].shape
    if h != w and spec.input_size is None:
        raise QgenError(f"{name}: images are {h}×{w}; set data.input_size to make them square")
    channels = spec.channels or c
    size = spec.input_size or h
    train_x = to_float(parts["train"][0], raw.scale, channels, size)
    test_x = to_float(parts["test"][0], raw.scale, channels, size)

    mean, std = channel_stats(train_x)
    std = std.clamp_min(MIN_STD)
    if spec.normalize:
        for x in (train_x, test_x):
            x.sub_(mean.float().view(1, -1, 1, 1)).div_(std.float().view(1, -1, 1, 1))
    info = DatasetInfo(name=name, num_classes=raw.num_classes, channels=channels, size=size,
                       mean=tuple(mean.tolist()), std=tuple(std.tolist()),
                       train_size=train_x.shape[0], test_size=test_x.shape[0], source=raw.source)
    return Splits(train_x, parts["train"][1].long(), test_x, parts["test"][1].long(), info)


def to_float(x: torch.Tensor, scale: float, channels: int, size: int) -> torch.Tensor:
    """``uint8`` (N, C, H, W) → float32 (N, channels, size, size) in [0, 1], by chunks.

    3→1 channels averages, 1→3 repeats the grey channel; a smaller image is zero-padded
    centred (28→32 adds 2 pixels each side), a larger one is resized down bilinearly with
    antialiasing (so that downsizing does not alias).
    """
    n, c = x.shape[:2]
    if channels not in (1, 3) or c not in (1, 3):
        raise QgenError(f"channels: can convert between 1 and 3 channels, not {c} → {channels}")
    out = torch.empty(n, channels, size, size, dtype=torch.float32)
    for start in range(0, n, CHUNK):
        chunk = x[start:start + CHUNK].float().div_(scale)
        if c == 3 and channels == 1:
            chunk = chunk.mean(dim=1, keepdim=True)
        chunk = fit_size(chunk, size)
        out[start:start + CHUNK].copy_(chunk)  # broadcasts one grey channel to three
    return out


def fit_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (centred) or bilinearly shrink a float batch (N, C, H, W) to ``size``×``size``."""
    h, w = x.shape[-2:]
    if h > size or w > size:
        x = F.interpolate(x, size=(min(h, size), min(w, size)), mode="bilinear",
                          align_corners=False, antialias=True)
        h, w = x.shape[-2:]
    if h < size or w < size:
        top, left = (size - h) // 2, (size - w) // 2
        x = F.pad(x, (left, size - w - left, top, size - h - top))
    return x


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of (N, C, H, W), accumulated in float64 by
    chunks so that the sums stay exact without a float64 copy of the data."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(CHUNK):
        d = chunk.double()
        total += d.sum(dim=(0, 2, 3))
        total_sq += (d * d).sum(dim=(0, 2, 3))
    count = x.numel() // c
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    return mean, var.sqrt()
