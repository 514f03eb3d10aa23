"""qgen.data.TensorLoader: seeded order, epoch coverage, batched crop/flip correctness."""

from __future__ import annotations

import pytest
import torch

from qgen.data import TensorLoader
from qgen.data.loader import random_crop, random_flip
from qgen.errors import QgenError


def images(n: int, c: int = 2, h: int = 6, w: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels are all distinct and positive, with label = index."""
    x = torch.arange(1, n * c * h * w + 1, dtype=torch.float32).view(n, c, h, w)
    return x, torch.arange(n)


def epochs(loader: TensorLoader, k: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [list(loader) for _ in range(k)]


def test_same_seed_same_batches_epoch_after_epoch():
    x, y = images(50)
    a = epochs(TensorLoader(x, y, 8, augment=True, seed=3), 3)
    b = epochs(TensorLoader(x, y, 8, augment=True, seed=3), 3)
    for ea, eb in zip(a, b, strict=True):
        for (xa, ya), (xb, yb) in zip(ea, eb, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    orders = [torch.cat([yb for _, yb in e]) for e in a]
    assert not torch.equal(orders[0], orders[1])  # a new order every epoch
    other = torch.cat([yb for _, yb in TensorLoader(x, y, 8, seed=4)])
    assert not torch.equal(orders[0], other)


def test_epoch_can_be_resumed():
    x, y = images(30)
    fresh = epochs(TensorLoader(x, y, 7, augment=True, seed=1), 3)[2]
    resumed = TensorLoader(x, y, 7, augment=True, seed=1)
    resumed.epoch = 2
    for (xa, ya), (xb, yb) in zip(fresh, list(resumed), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_every_example_once_per_epoch():
    x, y = images(103)
    loader = TensorLoader(x, y, 10, shuffle=True)
    assert len(loader) == 11
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 11 and [len(b[1]) for b in batches] == [10] * 10 + [3]
        seen = torch.cat([yb for _, yb in batches])
        assert sorted(seen.tolist()) == list(range(103))
        for xb, yb in batches:  # inputs stay paired with their labels
            assert torch.equal(xb, x[yb])


def test_drop_last():
    x, y = images(103)
    loader = TensorLoader(x, y, 10, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 10
    assert all(len(yb) == 10 for _, yb in batches)
    assert len(set(torch.cat([yb for _, yb in batches]).tolist())) == 100
    assert len(TensorLoader(x, y, 200, drop_last=True)) == 0
    assert len(TensorLoader(x, y, 200)) == 1


def test_no_shuffle_keeps_order():
    x, y = images(25)
    batches = list(TensorLoader(x, y, 10, shuffle=False))
    assert torch.equal(torch.cat([yb for _, yb in batches]), y)
    assert torch.equal(torch.cat([xb for xb, _ in batches]), x)


def test_augmentation_changes_images_keeps_shapes_and_data():
    x, y = images(64, c=3, h=8, w=8)
    before = x.clone()
    loader = TensorLoader(x, y, 16, augment=True, crop_padding=2, seed=0)
    batches = list(loader)
    assert all(xb.shape == (16, 3, 8, 8) and xb.dtype == x.dtype for xb, _ in batches)
    changed = sum(int(not torch.equal(xb[i], x[yb[i]])) for xb, yb in batches
                  for i in range(len(yb)))
    assert changed > 40  # identity needs the centre crop and no flip: 1/25 · 1/2 per image
    assert torch.equal(loader.x, before) and torch.equal(x, before)


def _all_crops_and_flips(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Reference: every padded crop of one image, by plain slicing, and its mirror."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad)
    padded[:, pad:pad + h, pad:pad + w] = img
    crops = [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1)
             for dx in range(2 * pad + 1)]
    return crops + [cr.flip(2) for cr in crops]


def test_each_augmented_image_is_a_crop_or_flip_of_its_source():
    x, y = images(40, c=2, h=5, w=5)
    flipped = 0
    for xb, yb in TensorLoader(x, y, 12, augment=True, crop_padding=1, seed=5):
        for img, label in zip(xb, yb, strict=True):
            candidates = _all_crops_and_flips(x[label], 1)
            hits = [i for i, cand in enumerate(candidates) if torch.equal(img, cand)]
            assert hits, "augmented image is not a padded crop (or its mirror) of its source"
            flipped += hits[0] >= 9
    assert 8 <= flipped <= 32  # about half of 40, drawn per image


def test_random_crop_by_hand():
    img = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # [[1,2,3],[4,5,6],[7,8,9]]
    batch = img.repeat(3, 1, 1, 1)
    out = random_crop(batch, torch.tensor([[0, 0], [1, 1], [2, 1]]), padding=1)
    assert out[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]  # shifted down-right
    assert out[1, 0].tolist() == img[0, 0].tolist()  # centre crop: unchanged
    assert out[2, 0].tolist() == [[4, 5, 6], [7, 8, 9], [0, 0, 0]]  # shifted up
    assert torch.equal(random_crop(batch, torch.zeros(3, 2, dtype=torch.long), 0), batch)


def test_random_flip_by_hand():
    img = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])
    out = random_flip(img.repeat(2, 1, 1, 1), torch.tensor([True, False]))
    assert out[0, 0].tolist() == [[3, 2, 1], [6, 5, 4]]
    assert out[1, 0].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_flip_off_and_crop_off():
    x, y = images(30, c=1, h=4, w=4)
    for xb, yb in TensorLoader(x, y, 30, augment=True, crop_padding=0, seed=2):
        for img, label in zip(xb, yb, strict=True):
            assert torch.equal(img, x[label]) or torch.equal(img, x[label].flip(2))
    for xb, yb in TensorLoader(x, y, 30, augment=True, flip=False, crop_padding=1, seed=2):
        for img, label in zip(xb, yb, strict=True):
            crops = _all_crops_and_flips(x[label], 1)[:9]
            assert any(torch.equal(img, cand) for cand in crops)


def test_bad_arguments():
    x, y = images(10)
    with pytest.raises(QgenError, match="10 inputs but 9 labels"):
        TensorLoader(x, y[:9], 4)
    with pytest.raises(QgenError, match="batch_size"):
        TensorLoader(x, y, 0)
    with pytest.raises(QgenError, match="crop_padding"):
        TensorLoader(x, y, 4, crop_padding=-1)
    with pytest.raises(QgenError, match="augment: needs images"):
        TensorLoader(x.view(10, -1), y, 4, augment=True)


def test_global_rng_is_untouched():
    x, y = images(20)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(TensorLoader(x, y, 6, augment=True, seed=9))
    assert torch.equal(torch.rand(3), expected)
