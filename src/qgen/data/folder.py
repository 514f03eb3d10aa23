"""Image-folder datasets (the ImageNet layout), decoded from disk as they are used.

Two kinds of names reach this module: ``imagenet`` (``<data_dir>/imagenet``, or ``<data_dir>``
itself when it holds ``train/`` and ``val/``; without a data_dir ``$QGEN_DATA/imagenet``) and
``folder:PATH`` (any dataset in the same layout at PATH)::

    ROOT/train/<class>/<image>    classes: the sorted train folder names; labels: their indices
    ROOT/val/<class>/<image>      (ROOT/test/ when there is no val/)

Images are ``.jpg``/``.jpeg``/``.png`` files (any case; names starting with ``.`` are skipped),
listed in sorted order, decoded with Pillow and converted to RGB. The transforms are the
Inception-style ImageNet recipe, written with Pillow and torch:

- evaluation, and training without ``data.augment``: the shorter side resized to
  ``round(size / 0.875)`` (bilinear, antialiased), then the centred ``size``×``size`` crop;
- training with ``data.augment``: a random crop of 8–100 % of the area with aspect ratio in
  [3/4, 4/3] (10 tries, then the centred crop of the whole image with its ratio clamped to
  that range) resized to ``size``×``size``, then a horizontal flip with probability 0.5.

Values are scaled to [0, 1] and, with ``data.normalize``, standardized with the ImageNet
mean/std (grey, ``data.channels`` 1, is the mean of R, G and B, standardized with the means of
those constants). Workers return 8-bit images; the conversion to float happens on the training
device, which moves a quarter of the bytes.

Randomness: the crop and flip of example ``i`` (its position in the full listing) in epoch
``e`` come from a generator seeded from a hash of ``(seed, e, i)``, and the order of an epoch
from :func:`~qgen.data.loader.epoch_generator`, so the batches are the same whatever the number
of DataLoader worker processes. That number (``$QGEN_DATA_WORKERS``, default
``min(4, cpu count)``, 0 = in-process) is therefore not part of the spec.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from qgen.data.loader import epoch_generator
from qgen.data.prepare import subset_indices
from qgen.data.registry import (
    ENV_VAR,
    DatasetEntry,
    DatasetInfo,
    RawImages,
    SourceSplits,
    _as_path,
    get_dataset,
    register_dataset,
    register_dataset_family,
)
from qgen.errors import QgenError

if TYPE_CHECKING:
    from qgen.config import DataSpec

IMAGENET = "imagenet"
FOLDER_PREFIX = "folder:"
EXTENSIONS = (".jpg", ".jpeg", ".png")
LAYOUT = ("ROOT/train/<class>/<image> and ROOT/val/<class>/<image> "
          f"(or test/; images {', '.join(EXTENSIONS)})")
DEFAULT_SIZE = 224
CROP_FRACTION = 0.875  # eval: resize the shorter side to size / 0.875, keep the centre
SCALE = (0.08, 1.0)  # random crop: fraction of the image area
RATIO = (3 / 4, 4 / 3)  # random crop: width / height
ATTEMPTS = 10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WORKERS_ENV = "QGEN_DATA_WORKERS"
MAX_WORKERS = 4
TAKE_CHUNK = 256  # images decoded per worker task in take()


# ------------------------------------------------------------------------------ names
def is_folder_dataset(name: str) -> bool:
    """Whether ``name`` is an image-folder dataset (``imagenet`` or ``folder:PATH``)."""
    return name == IMAGENET or name.startswith(FOLDER_PREFIX)


def check_layout(root: Path) -> tuple[Path, Path]:
    """The train and test folders of ``root`` (``val/``, else ``test/``), or a QgenError that
    names the path and the layout expected."""
    if not root.is_dir():
        raise QgenError(f"{root}: no such folder; expected {LAYOUT}")
    train = root / "train"
    if not train.is_dir():
        raise QgenError(f"{root}: no train/ folder; expected {LAYOUT}")
    for split in ("val", "test"):
        if (root / split).is_dir():
            return train, root / split
    raise QgenError(f"{root}: no val/ (or test/) folder; expected {LAYOUT}")


def locate_folder(root: str | Path) -> str:
    """``root`` (``~`` expanded) when it has the image-folder layout, else a QgenError."""
    path = Path(root).expanduser()
    check_layout(path)
    return str(path)


def locate_imagenet(data_dir: Path | None) -> str:
    """Where ImageNet is: ``data_dir/imagenet``, or ``data_dir`` itself when it holds
    ``train/`` and ``val/``; without ``data_dir``, ``$QGEN_DATA/imagenet``."""
    if data_dir is not None:
        if (data_dir / IMAGENET).is_dir():
            return locate_folder(data_dir / IMAGENET)
        if (data_dir / "train").is_dir() and any((data_dir / s).is_dir() for s in ("val", "test")):
            return locate_folder(data_dir)
        raise QgenError(f"imagenet: not found: looked for {data_dir / IMAGENET} and for "
                        f"train/ and val/ in {data_dir}; expected {LAYOUT}")
    env = os.environ.get(ENV_VAR)
    if not env:
        raise QgenError(f"imagenet: not found: pass --data-dir or set ${ENV_VAR} to a folder "
                        f"holding imagenet/, laid out as {LAYOUT}")
    where = Path(env).expanduser() / IMAGENET
    if not where.is_dir():
        raise QgenError(f"imagenet: not found: looked for {where} (${ENV_VAR}/imagenet); "
                        f"expected {LAYOUT}")
    return locate_folder(where)


def _not_in_memory(where: str) -> RawImages:
    raise QgenError(f"{where}: an image folder is decoded as it is used, not read into memory "
                    "at once; load it with qgen.data.load_data")


def open_folder(where: str, spec: DataSpec) -> SourceSplits:
    """The splits of the image folder at ``where`` as ``spec`` asks: seeded subsets (train
    stream ``2·subset_seed``, test ``2·subset_seed + 1``, as :mod:`qgen.data.prepare`),
    ``input_size`` (default 224), ``channels`` (3, or 1 for grey) and ``normalize``."""
    listing = list_folder(where)
    parts = {}
    for split, files, k, seed in (("train", listing.train, spec.train_subset,
                                   2 * spec.subset_seed),
                                  ("test", listing.test, spec.test_subset,
                                   2 * spec.subset_seed + 1)):
        if k is not None and k > len(files):
            raise QgenError(f"data.{split}_subset: {k} is larger than the {spec.name} {split} "
                            f"set ({len(files)} images); use at most {len(files)}")
        idx = subset_indices(len(files), k, seed)
        parts[split] = files if idx is None else files.subset(idx)
    size = spec.input_size or DEFAULT_SIZE
    channels = spec.channels or 3
    mean, std = folder_stats(channels)
    train = FolderSource(parts["train"], size=size, channels=channels, normalize=spec.normalize)
    test = FolderSource(parts["test"], size=size, channels=channels, normalize=spec.normalize)
    info = DatasetInfo(name=spec.name, num_classes=len(listing.classes), channels=channels,
                       size=size, mean=mean, std=std, train_size=len(train),
                       test_size=len(test), source=str(listing.root))
    return SourceSplits(train=train, test=test, info=info)


@register_dataset(IMAGENET, num_classes=1000, locate=locate_imagenet, stream=open_folder,
                  description="ImageNet (ILSVRC-2012) in class folders, decoded from disk")
def read_imagenet(where: str) -> RawImages:
    """ImageNet in class folders (streamed: see :func:`open_folder`)."""
    return _not_in_memory(where)


@register_dataset_family(FOLDER_PREFIX, usage="folder:PATH")
def folder_dataset(name: str) -> DatasetEntry:
    """The entry of ``folder:PATH``: the image folder at PATH (``~`` expanded; ``data_dir``
    is not used, the name says where). ``num_classes`` is 0: it is read from the folder."""
    path = name[len(FOLDER_PREFIX):]
    if not path.strip():
        raise QgenError(f"data.name: {name!r} names no folder; use folder:PATH with PATH "
                        f"laid out as {LAYOUT}")
    return DatasetEntry(name, 0, locate=partial(_locate_named, path), read=_not_in_memory,
                        stream=open_folder, description=f"image folder {path}")


def _locate_named(path: str, data_dir: Path | None) -> str:
    return locate_folder(path)


def folder_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the inputs are standardized with: ImageNet's for RGB, their means for
    grey; a channel count other than 1 or 3 is a QgenError."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    raise QgenError(f"data.channels: an image folder gives 3 (RGB) or 1 (grey) channels, "
                    f"not {channels}")


# ------------------------------------------------------------------------------ listing
@dataclass(frozen=True, eq=False)
class FolderSplit:
    """The images of one split: ``files`` are paths relative to ``folder`` (a numpy bytes
    array, which forked workers share without touching its pages, unlike a list of str),
    ``labels`` int64 class indices, ``index`` each file's position in the full listing (what
    its random augmentation is keyed on)."""

    folder: Path
    files: np.ndarray = field(repr=False)
    labels: Tensor = field(repr=False)
    index: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(len(self.files))

    def path(self, row: int) -> Path:
        """The file of example ``row``."""
        return self.folder / os.fsdecode(self.files[row])

    def subset(self, idx: Tensor) -> FolderSplit:
        """The examples at positions ``idx`` (a LongTensor), in that order."""
        rows = idx.cpu().numpy()
        return FolderSplit(self.folder, self.files[rows], self.labels[idx.cpu()],
                           self.index[rows])


@dataclass(frozen=True, eq=False)
class FolderListing:
    """An image folder listed: the root, the class names, and both splits."""

    root: Path
    classes: tuple[str, ...]
    train: FolderSplit
    test: FolderSplit


def _subfolders(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())


def _images(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not e.name.startswith(".")
                      and os.path.splitext(e.name)[1].lower() in EXTENSIONS and e.is_file())


def _list_split(folder: Path, classes: list[str]) -> FolderSplit:
    label_of = {c: i for i, c in enumerate(classes)}
    files: list[bytes] = []
    labels: list[int] = []
    found = _subfolders(folder)
    if not found:
        raise QgenError(f"{folder}: no class folders; expected {LAYOUT}")
    for c in found:
        if c not in label_of:
            raise QgenError(f"{folder / c}: class {c!r} is not one of the {len(classes)} "
                            f"classes of {folder.parent / 'train'}")
        names = _images(folder / c)
        if not names:
            raise QgenError(f"{folder / c}: no images ({', '.join(EXTENSIONS)}) in this class "
                            "folder")
        files.extend(os.fsencode(f"{c}/{n}") for n in names)
        labels.extend([label_of[c]] * len(names))
    return FolderSplit(folder, np.array(files, dtype=bytes), torch.tensor(labels),
                       np.arange(len(files), dtype=np.int64))


def list_folder(root: str | Path) -> FolderListing:
    """List the image folder at ``root`` (module docstring: layout, order, labels); every
    problem is a one-line QgenError naming the path."""
    root = Path(root).expanduser()
    train_dir, test_dir = check_layout(root)
    classes = _subfolders(train_dir)
    if not classes:
        raise QgenError(f"{train_dir}: no class folders; expected {LAYOUT}")
    return FolderListing(root, tuple(classes), _list_split(train_dir, classes),
                         _list_split(test_dir, classes))


def folder_listing(name: str, data_dir: str | Path | None = None) -> FolderListing:
    """The listing of the image-folder dataset ``name`` (found as :func:`load_data` would)."""
    entry = get_dataset(name)
    if entry.stream is None or not is_folder_dataset(name):
        raise QgenError(f"{name}: not an image-folder dataset (imagenet or folder:PATH)")
    return list_folder(entry.locate(_as_path(data_dir)))


# ------------------------------------------------------------------------------ transforms
def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise QgenError("image folders need Pillow: pip install qgen[vision]") from None
    return Image


def decode(path: Path) -> Any:
    """The image at ``path`` as an RGB ``PIL.Image``; a file that cannot be decoded is a
    one-line QgenError naming it."""
    image_mod = _pil()
    try:
        with image_mod.open(path) as im:
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")  # what Pillow asks for palette transparency
            return im.convert("RGB")  # decodes the whole file
    except (OSError, SyntaxError, ValueError, image_mod.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise QgenError(f"{path}: cannot decode the image ({reason}); remove or replace the "
                        "file") from None


def center_crop(im: Any, size: int) -> Any:
    """Evaluation transform: shorter side to ``round(size / 0.875)`` (bilinear, antialiased;
    the longer side scaled and truncated), then the centred ``size``×``size`` crop."""
    image_mod = _pil()
    w, h = im.size
    short = round(size / CROP_FRACTION)
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    im = im.resize((nw, nh), image_mod.BILINEAR)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def crop_box(width: int, height: int, draws: list[float]) -> tuple[int, int, int, int]:
    """The (left, top, crop width, crop height) of a random resized crop of a
    ``width``×``height`` image from ``4·ATTEMPTS`` uniform draws in [0, 1): per try, the area
    fraction, the log aspect ratio, and the vertical and horizontal position."""
    area = width * height
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for t in range(ATTEMPTS):
        a, r, u, v = draws[4 * t:4 * t + 4]
        target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * a)
        ratio = math.exp(log_lo + (log_hi - log_lo) * r)
        cw = int(round(math.sqrt(target * ratio)))
        ch = int(round(math.sqrt(target / ratio)))
        if 0 < cw <= width and 0 < ch <= height:
            top = min(int(u * (height - ch + 1)), height - ch)
            left = min(int(v * (width - cw + 1)), width - cw)
            return left, top, cw, ch
    # fallback: the whole image, its aspect ratio clamped to RATIO, centred
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        cw, ch = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        cw, ch = int(round(height * RATIO[1])), height
    else:
        cw, ch = width, height
    return (width - cw) // 2, (height - ch) // 2, cw, ch


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator for example ``index`` in ``epoch``, seeded from a hash of
    ``(seed, epoch, index)`` (as :func:`~qgen.data.loader.epoch_generator`), so its draws do
    not depend on which process decodes it or in what order."""
    digest = hashlib.blake2b(f"qgen-folder:{seed}:{epoch}:{index}".encode(),
                             digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def random_resized_crop(im: Any, size: int, gen: torch.Generator) -> Any:
    """Training transform: a random resized crop to ``size``×``size`` and a horizontal flip
    with probability 0.5, all drawn from ``gen`` (``4·ATTEMPTS + 1`` uniforms, always)."""
    image_mod = _pil()
    draws = torch.rand(4 * ATTEMPTS + 1, generator=gen, dtype=torch.float64).tolist()
    left, top, cw, ch = crop_box(im.size[0], im.size[1], draws[:-1])
    im = im.crop((left, top, left + cw, top + ch)).resize((size, size), image_mod.BILINEAR)
    if draws[-1] < 0.5:
        im = im.transpose(image_mod.Transpose.FLIP_LEFT_RIGHT)
    return im


def to_tensor(im: Any) -> Tensor:
    """An RGB ``PIL.Image`` as ``uint8`` (3, H, W)."""
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)


# ------------------------------------------------------------------------------ decoding
def data_workers() -> int:
    """DataLoader worker processes: ``$QGEN_DATA_WORKERS`` (0 = decode in-process), else
    ``min(4, cpu count)``. It changes speed only, never numbers."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return min(MAX_WORKERS, os.cpu_count() or 1)
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise QgenError(f"${WORKERS_ENV}: must be an integer >= 0 (0 decodes in-process), "
                        f"got {raw!r}")
    return n


@dataclass(frozen=True)
class _Failed:
    """A worker's QgenError, passed back as data so that it reaches the user as its own one
    line (an exception raised in a worker comes back wrapped in the worker's traceback)."""

    message: str


class _Decoder(Dataset):
    """What a worker runs: one task ``(epoch, rows)`` → ``uint8`` (len(rows), 3, size, size)."""

    def __init__(self, split: FolderSplit, size: int, augment: bool, seed: int) -> None:
        self.split, self.size, self.augment, self.seed = split, size, augment, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, task: tuple[int, list[int]]) -> Tensor | _Failed:
        epoch, rows = task
        out = torch.empty((len(rows), 3, self.size, self.size), dtype=torch.uint8)
        try:
            for k, row in enumerate(rows):
                im = decode(self.split.path(row))
                if self.augment:
                    gen = example_generator(self.seed, epoch, int(self.split.index[row]))
                    im = random_resized_crop(im, self.size, gen)
                else:
                    im = center_crop(im, self.size)
                out[k] = to_tensor(im)
        except QgenError as exc:
            return _Failed(str(exc))
        return out


def _keep(item: Any) -> Any:
    return item


def _decoded(decoder: _Decoder, tasks: list[tuple[int, list[int]]], workers: int,
             pin: bool) -> Iterator[Tensor]:
    """The decoded batches of ``tasks``, in order, from ``workers`` processes (0: here)."""
    workers = min(workers, len(tasks))
    # Own generator: the DataLoader draws its workers' base seed from it, not from torch's
    # global generator (which would shift the model's random stream).
    loader = DataLoader(decoder, batch_size=None, sampler=tasks, num_workers=workers,
                        collate_fn=_keep, pin_memory=pin, generator=torch.Generator())
    for item in loader:
        if isinstance(item, _Failed):
            raise QgenError(item.message)
        yield item


class FolderSource:
    """An image-folder split as an :class:`~qgen.data.source.ExampleSource`: images decoded
    and transformed (module docstring) when they are asked for, by worker processes.

    ``take`` and un-augmented batches use the evaluation transform; ``normalize``
    standardizes with :func:`folder_stats`.

    Example::

        splits = load_data(DataSpec(name="folder:~/data/flowers", input_size=160))
        for xb, yb in splits.train.batches(64, shuffle=True, augment=True, seed=0):
            ...
    """

    def __init__(self, split: FolderSplit, *, size: int = DEFAULT_SIZE, channels: int = 3,
                 normalize: bool = True) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise QgenError(f"input_size: must be an integer >= 1, got {size!r}")
        self.mean, self.std = folder_stats(channels)
        self.split, self.size, self.channels, self.normalize = split, size, channels, normalize

    def __len__(self) -> int:
        return len(self.split)

    @property
    def labels(self) -> Tensor:
        """All labels, int64 (N,), read from the listing (nothing is decoded)."""
        return self.split.labels

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The shape of one input: (channels, size, size)."""
        return (self.channels, self.size, self.size)

    def take_images(self, idx: Tensor) -> Tensor:
        """The examples ``idx`` (a LongTensor of positions) through the evaluation transform,
        as ``uint8`` (len(idx), 3, size, size) RGB, before any conversion."""
        rows = idx.cpu().tolist()
        if not rows:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        tasks = [(0, rows[lo:lo + TAKE_CHUNK]) for lo in range(0, len(rows), TAKE_CHUNK)]
        decoder = _Decoder(self.split, self.size, False, 0)
        return torch.cat(list(_decoded(decoder, tasks, data_workers(), False)))

    def take(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The examples ``idx`` (a LongTensor of positions), evaluation transform, as float32
        inputs (len(idx), channels, size, size) and int64 labels, on the CPU."""
        return self.to_inputs(self.take_images(idx)), self.split.labels[idx.cpu()]

    def to_inputs(self, images: Tensor) -> Tensor:
        """``uint8`` RGB images (N, 3, H, W) as this source's float32 inputs, on their device:
        scaled to [0, 1], grey when ``channels`` is 1, standardized when ``normalize``."""
        x = images.float().div_(255.0)
        if self.channels == 1:
            x = x.mean(dim=1, keepdim=True)
        if self.normalize:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)
            std = torch.tensor(self.std, dtype=torch.float32, device=x.device)
            x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
        return x

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                seed: int = 0, device: str | torch.device = "cpu") -> FolderBatches:
        """A :class:`FolderBatches` over the split."""
        return FolderBatches(self, batch_size, shuffle=shuffle, augment=augment, seed=seed,
                             device=device)


class FolderBatches:
    """Batches of ``(x, y)`` from a :class:`FolderSource`, on ``device``.

    One ``for`` loop is one epoch (the last, shorter batch kept); the next loop draws the next
    epoch. Like :class:`~qgen.data.loader.TensorLoader`, :attr:`epoch` is the next epoch to
    draw and may be set to resume a run's sequence. ``workers`` (default
    :func:`data_workers`) changes speed only.
    """

    def __init__(self, source: FolderSource, batch_size: int, *, shuffle: bool = False,
                 augment: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise QgenError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
        self.source, self.batch_size = source, batch_size
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.device = torch.device(device)
        self.workers = data_workers()
        self.epoch = 0  # the next epoch to draw; settable to resume a run's sequence

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.source) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of batches; the next iteration draws the next epoch."""
        n = len(self.source)
        epoch = self.epoch
        self.epoch += 1
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        tasks = [(epoch, order[lo:lo + self.batch_size].tolist())
                 for lo in range(0, n, self.batch_size)]
        decoder = _Decoder(self.source.split, self.source.size, self.augment, self.seed)
        labels = self.source.split.labels
        pin = self.device.type == "cuda"
        for (_, rows), images in zip(tasks, _decoded(decoder, tasks, self.workers, pin),
                                     strict=True):
            xb = self.source.to_inputs(images.to(self.device, non_blocking=pin))
            yield xb, labels[rows].to(self.device, non_blocking=pin)
