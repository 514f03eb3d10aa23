"""The in-memory loader: a whole split as one tensor on the device, batches drawn there.

Small image datasets fit in (GPU) memory many times over, and a per-sample ``DataLoader``
then spends most of its time in Python. :class:`TensorLoader` instead moves the data once,
draws a permutation per epoch and does the augmentation (random crop with zero padding,
horizontal flip) on whole batches with a few tensor ops (see ``bench/bench_loader.py``).

Randomness: every epoch's permutation, crop offsets and flips come from a CPU
``torch.Generator`` seeded from ``(seed, epoch)``, so the batches depend only on the seed and
the epoch number — not on the device, and not on any global RNG state. Setting
:attr:`TensorLoader.epoch` resumes the sequence at a given epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import Tensor

from qgen.errors import QgenError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for one epoch, seeded from a hash of ``(seed, epoch)`` so that
    neighbouring seeds and epochs give unrelated streams."""
    digest = hashlib.blake2b(f"qgen-loader:{seed}:{epoch}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def random_crop(x: Tensor, offsets: Tensor, padding: int) -> Tensor:
    """Crop each image of ``x`` (N, C, H, W), zero-padded by ``padding`` on every side, at
    its own top-left corner ``offsets[i] = (dy, dx)`` in ``[0, 2·padding]``.

    ``(padding, padding)`` returns the image unchanged; ``(0, 0)`` shifts it down-right.
    """
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    # Two gathers (rows, then columns) instead of a Python loop over images.
    rows = (offsets[:, 0].view(n, 1) + ar_h).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
    padded = padded.gather(2, rows)
    cols = (offsets[:, 1].view(n, 1) + ar_w).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(3, cols)


def random_flip(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror left-right the images of ``x`` (N, C, H, W) where the bool ``flip[i]`` is set."""
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


class TensorLoader:
    """Batches of ``(x, y)`` from tensors held on ``device``.

    One ``for`` loop over the loader is one epoch. With ``shuffle`` every example appears once
    per epoch in a seeded random order; ``drop_last`` drops a final short batch. With
    ``augment`` each image gets a random crop (zero padding ``crop_padding``, zeros in the
    tensor's own units) and, when ``flip``, a random horizontal flip, drawn per image.
    Without shuffle and augmentation the batches are views of the stored tensor: do not modify
    them in place.

    Example::

        loader = TensorLoader(splits.train_x, splits.train_y, 128, augment=True, seed=1)
        for xb, yb in loader:
            ...
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = True,
                 augment: bool = False, crop_padding: int = 4, flip: bool = True, seed: int = 0,
                 device: str | torch.device = "cpu", drop_last: bool = False) -> None:
        if x.shape[0] != y.shape[0]:
            raise QgenError(f"TensorLoader: {x.shape[0]} inputs but {y.shape[0]} labels")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise QgenError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise QgenError(f"crop_padding: must be an integer >= 0, got {crop_padding!r}")
        if augment and x.dim() != 4:
            raise QgenError(f"augment: needs images (N, C, H, W), got shape {tuple(x.shape)}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.crop_padding = crop_padding
        self.flip = flip
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0  # the next epoch to draw; settable to resume a run's sequence

    def __len__(self) -> int:
        """Batches per epoch."""
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of batches; the next iteration draws the next epoch."""
        n = self.x.shape[0]
        gen = epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        # All of the epoch's random draws happen here, on the CPU, in a fixed order, and move
        # to the device in one copy each.
        order = torch.randperm(n, generator=gen).to(self.device) if self.shuffle else None
        if self.augment:
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2),
                                    generator=gen).to(self.device)
            flips = (torch.rand(n, generator=gen) < 0.5).to(self.device) if self.flip else None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                xb = random_crop(xb, offsets[lo:hi], self.crop_padding)
                if flips is not None:
                    xb = random_flip(xb, flips[lo:hi])
            yield xb, yb
