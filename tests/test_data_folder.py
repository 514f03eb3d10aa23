"""qgen.data.folder: image folders (the ImageNet layout) decoded from disk.

Every test writes a tiny real dataset with Pillow (3 classes × 5 train and 3 val images, JPEGs
of a few sizes, one PNG, one grey JPEG) and reads it back through the public API: listing and
labels, the evaluation transform against Pillow directly, determinism across worker counts,
subsets, ``load_data`` for ``folder:PATH`` and ``imagenet``, every error as one line naming the
path, and the robustness evaluation set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qgen.config import DataSpec, RunSpec
from qgen.data import FolderSource, SourceSplits, dataset_available, dataset_names, load_data
from qgen.data.folder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_box,
    list_folder,
)
from qgen.data.loader import epoch_generator
from qgen.errors import QgenError

CLASSES = ("ant", "bee", "cat")
SIZES = ((48, 40), (40, 56), (44, 44), (56, 36), (40, 48))  # (width, height)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    # a developer's $QGEN_DATA must not change what is found; in-process decoding unless a
    # test asks for workers (it is faster for 15 tiny images)
    monkeypatch.delenv("QGEN_DATA", raising=False)
    monkeypatch.setenv("QGEN_DATA_WORKERS", "0")


def write_image(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    # smooth content plus noise: crops and resizes change it visibly
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 5 + seed * 11) % 256, (yy * 7 + seed * 3) % 256,
                     ((xx + yy) * 3) % 256], axis=-1)
    arr = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    if mode == "L":
        im = im.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else im.save(path)


def write_dataset(root: Path, n_train: int = 5, n_val: int = 3, split: str = "val") -> Path:
    seed = 0
    for c in CLASSES:
        for i in range(n_train):
            ext = ".png" if (c, i) == ("bee", 2) else ".JPG" if (c, i) == ("cat", 4) else ".jpg"
            mode = "L" if (c, i) == ("ant", 1) else "RGB"
            write_image(root / "train" / c / f"img{i}{ext}", SIZES[i % len(SIZES)], seed, mode)
            seed += 1
        for i in range(n_val):
            write_image(root / split / c / f"v{i}.jpeg", SIZES[(i + 1) % len(SIZES)], seed)
            seed += 1
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "ant" / ".hidden.jpg").write_bytes(b"not an image either")
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return write_dataset(tmp_path / "flowers")


def folder_spec(root: Path, **kw) -> DataSpec:
    return DataSpec(name=f"folder:{root}", input_size=32, **kw)


def collect(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(batches), strict=True)
    return torch.cat(xs), torch.cat(ys)


def one_line_naming(exc: pytest.ExceptionInfo, path: Path | str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


# ---------------------------------------------------------------------------- listing
def test_listing_classes_labels_and_order(root):
    listing = list_folder(root)
    assert listing.classes == CLASSES
    assert len(listing.train) == 15 and len(listing.test) == 9
    names = [listing.train.path(i).relative_to(root / "train").as_posix() for i in range(15)]
    assert names[:5] == [f"ant/img{i}.jpg" for i in range(5)]  # notes.txt, .hidden skipped
    assert "bee/img2.png" in names and "cat/img4.JPG" in names
    assert listing.train.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert listing.test.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert listing.test.folder == root / "val"


def test_test_folder_when_no_val(tmp_path):
    root = write_dataset(tmp_path / "d", split="test")
    splits = load_data(folder_spec(root))
    assert len(splits.test) == 9 and splits.test.split.folder == root / "test"


# ---------------------------------------------------------------------------- transforms
def test_eval_transform_is_pillow_resize_and_center_crop(root):
    src = FolderSource(list_folder(root).train, size=32, normalize=False)
    # img0 is 48×40 (w×h): shorter side to round(32 / 0.875) = 37, longer int(37·48/40) = 44,
    # then the centre 32×32: left round(6.0) = 6, top round(2.5) = 2
    path = root / "train" / "ant" / "img0.jpg"
    with Image.open(path) as im:
        want = np.asarray(im.convert("RGB").resize((44, 37), Image.BILINEAR)
                          .crop((6, 2, 38, 34)))
    got = src.take_images(torch.tensor([0]))
    assert got.dtype == torch.uint8 and got.shape == (1, 3, 32, 32)
    assert torch.equal(got[0], torch.from_numpy(want.copy()).permute(2, 0, 1))
    x, y = src.take(torch.tensor([0, 6]))
    assert torch.equal(x[0], got[0].float() / 255) and y.tolist() == [0, 1]
    # a portrait image (40×56) and a grey one: 3 channels, size×size
    assert src.take_images(torch.tensor([1])).shape == (1, 3, 32, 32)
    grey = src.take_images(torch.tensor([1]))[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_random_crop_box_stays_inside_and_falls_back_to_the_centre():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        w, h = torch.randint(1, 80, (2,), generator=gen).tolist()
        left, top, cw, ch = crop_box(w, h, torch.rand(40, generator=gen).tolist())
        assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h and cw > 0 < ch
    # draws that never fit (the whole area at an extreme ratio on a very wide image): the
    # fallback is the centred crop with the ratio clamped to 4/3
    assert crop_box(400, 100, [0.999, 0.0, 0.5, 0.5] * 10) == (133, 0, 133, 100)


def test_normalize_and_grey(root):
    splits = load_data(folder_spec(root))
    raw = FolderSource(splits.test.split, size=32, normalize=False)
    idx = torch.tensor([0, 4])
    x, _ = splits.test.take(idx)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, (raw.take(idx)[0] - mean) / std, atol=1e-6)
    assert splits.info.mean == IMAGENET_MEAN and splits.info.std == IMAGENET_STD
    grey = load_data(folder_spec(root, channels=1, normalize=False))
    assert grey.info.channels == 1 and grey.train.example_shape == (1, 32, 32)
    g, _ = grey.test.take(idx)
    assert torch.allclose(g, raw.take(idx)[0].mean(dim=1, keepdim=True))


# ---------------------------------------------------------------------------- batches
def test_take_and_batches_shapes(root):
    src = load_data(folder_spec(root)).train
    x, y = src.take(torch.tensor([3, 0, 14]))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [0, 0, 2]
    batches = src.batches(4, shuffle=True, augment=True, seed=0)
    assert len(batches) == 4
    sizes = [(xb.shape, yb.shape) for xb, yb in batches]
    assert sizes == [((4, 3, 32, 32), (4,))] * 3 + [((3, 3, 32, 32), (3,))]
    assert src.example_shape == (3, 32, 32)
    # unshuffled and unaugmented batches are take() in order
    xa, ya = collect(src.batches(4))
    xt, yt = src.take(torch.arange(15))
    assert torch.equal(xa, xt) and torch.equal(ya, yt)


def test_same_seed_same_batches_whatever_the_workers(root, monkeypatch):
    spec = folder_spec(root)
    runs = {}
    for workers in ("0", "2"):
        monkeypatch.setenv("QGEN_DATA_WORKERS", workers)
        batches = load_data(spec).train.batches(4, shuffle=True, augment=True, seed=3)
        assert batches.workers == int(workers)
        runs[workers] = [collect(batches), collect(batches)]  # epochs 0 and 1
    for e in (0, 1):
        assert torch.equal(runs["0"][e][0], runs["2"][e][0])
        assert torch.equal(runs["0"][e][1], runs["2"][e][1])
    # epochs differ in order and in crops
    (x0, y0), (x1, y1) = runs["0"]
    assert not torch.equal(y0, y1) and not torch.equal(x0, x1)
    # a resumed loader (epoch set) continues the same sequence
    monkeypatch.setenv("QGEN_DATA_WORKERS", "0")
    resumed = load_data(spec).train.batches(4, shuffle=True, augment=True, seed=3)
    resumed.epoch = 1
    assert torch.equal(collect(resumed)[0], x1)
    other = collect(load_data(spec).train.batches(4, shuffle=True, augment=True, seed=4))
    assert not torch.equal(other[0], x0)


def test_augment_changes_pixels_not_shapes(root):
    src = load_data(folder_spec(root)).train
    plain, y_plain = collect(src.batches(5))
    aug, y_aug = collect(src.batches(5, augment=True, seed=0))
    assert aug.shape == plain.shape and torch.equal(y_aug, y_plain)
    assert not torch.equal(aug, plain)
    # the same example gets the same crop in the same epoch, wherever it lands in the order
    shuffled, ys = collect(src.batches(5, shuffle=True, augment=True, seed=0))
    order = torch.randperm(15, generator=epoch_generator(0, 0))
    assert torch.equal(shuffled, aug[order]) and torch.equal(ys, y_plain[order])


def test_subsets_are_nested_and_seeded(root):
    small = load_data(folder_spec(root, train_subset=5, test_subset=4))
    large = load_data(folder_spec(root, train_subset=10))
    assert small.info.train_size == 5 and small.info.test_size == 4
    assert large.info.train_size == 10 and large.info.test_size == 9
    files = {bytes(f) for f in small.train.split.files}
    assert files < {bytes(f) for f in large.train.split.files}
    other = load_data(folder_spec(root, train_subset=5, subset_seed=1))
    assert {bytes(f) for f in other.train.split.files} != files
    with pytest.raises(QgenError, match="at most 15"):
        load_data(folder_spec(root, train_subset=16))


# ---------------------------------------------------------------------------- names
def test_load_data_folder_end_to_end(root):
    splits = load_data(folder_spec(root))
    assert isinstance(splits, SourceSplits)
    info = splits.info
    assert (info.name, info.num_classes, info.channels, info.size) == (
        f"folder:{root}", 3, 3, 32)
    assert (info.train_size, info.test_size, info.source) == (15, 9, str(root))
    xb, yb = next(iter(splits.test.batches(9)))
    assert xb.shape == (9, 3, 32, 32) and yb.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert load_data(DataSpec(name=f"folder:{root}")).info.size == 224  # the default size


def test_imagenet_name(tmp_path, monkeypatch):
    root = write_dataset(tmp_path / "data" / "imagenet", n_train=2, n_val=1)
    assert "imagenet" in dataset_names()
    spec = DataSpec(name="imagenet", input_size=32)
    for data_dir in (root.parent, root):  # data_dir/imagenet, or data_dir holding train/ val/
        splits = load_data(spec, data_dir)
        assert splits.info.source == str(root) and splits.info.num_classes == 3
        assert splits.train.take(torch.tensor([0]))[0].shape == (1, 3, 32, 32)
    assert dataset_available("imagenet", root.parent) == (True, str(root))
    monkeypatch.setenv("QGEN_DATA", str(root.parent))
    assert load_data(spec).info.source == str(root)
    monkeypatch.delenv("QGEN_DATA")
    ok, why = dataset_available("imagenet")
    assert not ok and "QGEN_DATA" in why and "\n" not in why
    with pytest.raises(QgenError) as exc:
        load_data(spec, tmp_path / "elsewhere")
    one_line_naming(exc, tmp_path / "elsewhere" / "imagenet")


def test_folder_name_expands_home_and_checks_names(root, monkeypatch):
    monkeypatch.setenv("HOME", str(root.parent))
    assert load_data(DataSpec(name="folder:~/flowers", input_size=32)).info.source == str(root)
    from qgen.train.run import check_names

    check_names(RunSpec.from_dict({"data": {"name": f"folder:{root}"}}))
    check_names(RunSpec.from_dict({"data": {"name": "imagenet"}}))
    with pytest.raises(QgenError, match="folder:PATH") as exc:
        check_names(RunSpec.from_dict({"data": {"name": "imagenette"}}))
    assert "imagenet," in str(exc.value)
    with pytest.raises(QgenError, match="names no folder"):
        check_names(RunSpec.from_dict({"data": {"name": "folder:"}}))


# ---------------------------------------------------------------------------- errors
def test_layout_errors_are_one_line_naming_the_path(root, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(QgenError) as exc:
        load_data(folder_spec(missing))
    assert "no such folder" in one_line_naming(exc, missing)

    bare = tmp_path / "bare"
    (bare / "val").mkdir(parents=True)
    with pytest.raises(QgenError) as exc:
        load_data(folder_spec(bare))
    assert "no train/" in one_line_naming(exc, bare)

    (bare / "train").mkdir()
    with pytest.raises(QgenError) as exc:
        load_data(folder_spec(bare))
    assert "no class folders" in one_line_naming(exc, bare / "train")

    (bare / "train" / "ant").mkdir()
    (bare / "train" / "ant" / "readme.txt").write_text("no images here")
    with pytest.raises(QgenError) as exc:
        load_data(folder_spec(bare))
    assert "no images" in one_line_naming(exc, bare / "train" / "ant")

    novl = write_dataset(tmp_path / "novl", n_train=1, n_val=1)
    for f in (novl / "val").rglob("*"):
        if f.is_file():
            f.unlink()
    for d in sorted((novl / "val").rglob("*"), reverse=True):
        d.rmdir()
    (novl / "val").rmdir()
    with pytest.raises(QgenError) as exc:
        load_data(folder_spec(novl))
    assert "no val/ (or test/)" in one_line_naming(exc, novl)

    write_image(root / "val" / "dog" / "v0.jpg", (40, 40), 99)
    with pytest.raises(QgenError) as exc:
        load_data(folder_spec(root))
    assert "not one of the 3 classes" in one_line_naming(exc, root / "val" / "dog")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_undecodable_image_is_one_line_naming_the_file(root, monkeypatch, workers):
    bad = root / "train" / "bee" / "img3.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    monkeypatch.setenv("QGEN_DATA_WORKERS", workers)
    src = load_data(folder_spec(root)).train  # listing does not decode
    with pytest.raises(QgenError) as exc:
        collect(src.batches(4, shuffle=True, augment=True, seed=0))
    assert "cannot decode" in one_line_naming(exc, bad)
    with pytest.raises(QgenError) as exc:
        src.take(torch.arange(15))
    one_line_naming(exc, bad)
    src.take(torch.arange(5))  # the good images still decode


def test_bad_worker_count(root, monkeypatch):
    monkeypatch.setenv("QGEN_DATA_WORKERS", "many")
    with pytest.raises(QgenError, match="QGEN_DATA_WORKERS"):
        load_data(folder_spec(root)).train.batches(4)


# ---------------------------------------------------------------------------- robustness
def test_robustness_eval_set_decodes_the_run_size(root):
    from qgen.robustness import RobustnessSpec
    from qgen.robustness.compute import eval_set

    spec = folder_spec(root, test_subset=6)
    splits = load_data(spec)
    result_data = {"channels": 3, "size": 32, "mean": list(IMAGENET_MEAN),
                   "std": list(IMAGENET_STD)}
    es = eval_set(spec, result_data, RobustnessSpec(test_examples=4))
    assert es.images.dtype == torch.uint8 and es.images.shape == (4, 3, 32, 32)
    assert es.scale == 255.0 and len(es.labels) == 4
    assert es.full_test_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.equal(es.labels, es.full_test_labels[es.positions])
    # the clean inputs are the run's own test inputs at those positions
    full = eval_set(spec, result_data, RobustnessSpec())
    x, y = splits.test.take(torch.arange(6))
    assert torch.allclose(full.model_input(full.clean01()), x, atol=1e-6)
    assert torch.equal(full.labels, y)
    small = eval_set(spec, {**result_data, "size": 24}, RobustnessSpec(test_examples=4))
    assert small.images.shape == (4, 3, 24, 24) and small.key != es.key
