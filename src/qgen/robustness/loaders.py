"""The released corrupted test sets: CIFAR-10-C / CIFAR-100-C ``.npy`` files, memory-mapped,
and the ImageNet-C folder layout.

CIFAR-10-C and CIFAR-100-C (Hendrycks & Dietterich, 2019) are one folder each, holding one
``<corruption>.npy`` per corruption, ``uint8`` of shape (5·n, 32, 32, 3) with n = 10,000:
severities 1 → 5 stacked, each block the n test images in test-set order; and one
``labels.npy`` of shape (5·n,): the test labels, repeated for each block.
:class:`ReleasedC` reads that layout without loading it (``np.load(mmap_mode='r')``) and
checks it, so a wrong file is one clear line instead of wrong numbers.

ImageNet-C is a folder tree ``<root>/<corruption>/<severity>/<class>/<image>``;
:func:`imagenet_c_files` lists it (classes in sorted order, or the order given) and
:func:`read_images` decodes a few files with Pillow (an optional dependency).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from qgen.errors import QgenError
from qgen.robustness.constants import NAMES, SEVERITIES, check_name, check_severity

#: the folder each dataset's released files are in, as the archives unpack
RELEASED_FOLDERS = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}
LABELS_FILE = "labels.npy"
IMAGE_SHAPE = (32, 32, 3)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _load(path: Path) -> np.ndarray:
    """``np.load`` memory-mapped, as a one-line QgenError when the file is not an array."""
    if not path.is_file():
        raise QgenError(f"{path}: no such file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise QgenError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())[:120]})"
                        ) from None


class ReleasedC:
    """A folder of released CIFAR-C files (layout in the module docstring).

    ``n`` (images per severity) is read from ``labels.npy`` and must equal ``n_test`` when
    given (the dataset's test-set size). Every array is memory-mapped: asking for one
    severity of one corruption reads only those images.
    """

    def __init__(self, folder: str | Path, n_test: int | None = None,
                 image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise QgenError(f"{self.folder}: no such folder of released -C files")
        self.image_shape = tuple(image_shape)
        labels = _load(self.folder / LABELS_FILE)
        where = self.folder / LABELS_FILE
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise QgenError(f"{where}: expected a 1-D integer array (5 severity blocks of "
                            f"test labels), got shape {labels.shape} and dtype {labels.dtype}")
        if len(labels) % len(SEVERITIES) or not len(labels):
            raise QgenError(f"{where}: {len(labels)} labels is not 5 severity blocks")
        self.n = len(labels) // len(SEVERITIES)
        if n_test is not None and self.n != n_test:
            raise QgenError(f"{where}: {self.n} labels per severity, but the test set has "
                            f"{n_test} images; expected shape ({5 * n_test},)")
        blocks = np.asarray(labels).reshape(len(SEVERITIES), self.n)
        bad = np.nonzero((blocks != blocks[0]).any(axis=0))[0]
        if len(bad):
            raise QgenError(f"{where}: the severity blocks hold different labels (first at "
                            f"test image {int(bad[0])}); expected the test labels 5 times")
        self._labels = blocks[0].astype(np.int64)
        self._arrays: dict[str, np.ndarray] = {}

    def labels(self) -> np.ndarray:
        """The test labels (n,), int64."""
        return self._labels

    def available(self) -> list[str]:
        """The corruptions that have a file here, in benchmark order."""
        return [n for n in NAMES if (self.folder / f"{n}.npy").is_file()]

    def array(self, corruption: str) -> np.ndarray:
        """The whole memory-mapped (5·n, H, W, 3) uint8 array of ``corruption``, checked."""
        check_name(corruption)
        if corruption not in self._arrays:
            path = self.folder / f"{corruption}.npy"
            arr = _load(path)
            expected = (len(SEVERITIES) * self.n, *self.image_shape)
            if arr.dtype != np.uint8:
                raise QgenError(f"{path}: dtype {arr.dtype}, expected uint8 images")
            if tuple(arr.shape) != expected:
                raise QgenError(f"{path}: shape {tuple(arr.shape)}, expected {expected} (5 "
                                f"severity blocks of {self.n} images)")
            self._arrays[corruption] = arr
        return self._arrays[corruption]

    def images(self, corruption: str, severity: int,
               positions: np.ndarray | None = None) -> np.ndarray:
        """The images (k, H, W, 3) uint8 of ``corruption`` at ``severity``: all n in
        test-set order, or those at ``positions`` (indices into the test set)."""
        check_severity(severity)
        block = self.array(corruption)[(severity - 1) * self.n:severity * self.n]
        if positions is None:
            return np.asarray(block)
        return np.asarray(block[np.asarray(positions, dtype=np.int64)])

    def check_labels(self, test_labels: Any, dataset: str = "the dataset") -> None:
        """A QgenError unless ``labels.npy`` holds ``test_labels`` (the whole test set, in
        order)."""
        ref = np.asarray(test_labels, dtype=np.int64).reshape(-1)
        if len(ref) != self.n:
            raise QgenError(f"{self.folder / LABELS_FILE}: {self.n} labels per severity, but "
                            f"{dataset} has {len(ref)} test images")
        bad = np.nonzero(ref != self._labels)[0]
        if len(bad):
            raise QgenError(f"{self.folder / LABELS_FILE}: does not match the {dataset} test "
                            f"labels (first difference at test image {int(bad[0])}: "
                            f"{int(self._labels[bad[0]])} vs {int(ref[bad[0]])}); are these "
                            "the files of another dataset?")


def find_released(dataset: str, released_dir: str | Path | None = None,
                  data_dir: str | Path | None = None) -> Path | None:
    """The folder of ``dataset``'s released -C files, or None.

    ``released_dir`` when given (it must exist: a named folder that is not there is an
    error); else ``<data_dir>/CIFAR-10-C`` (or ``CIFAR-100-C``), then the same under
    ``$QGEN_DATA``. A folder counts when it holds ``labels.npy``.
    """
    if released_dir is not None:
        folder = Path(released_dir).expanduser()
        if not (folder / LABELS_FILE).is_file():
            raise QgenError(f"{folder}: no {LABELS_FILE} here; released_dir must be the "
                            "folder holding <corruption>.npy and labels.npy")
        return folder
    name = RELEASED_FOLDERS.get(dataset)
    if name is None:
        return None
    roots = [Path(data_dir).expanduser()] if data_dir else []
    env = os.environ.get("QGEN_DATA")
    if env:
        roots.append(Path(env).expanduser())
    for root in roots:
        if (root / name / LABELS_FILE).is_file():
            return root / name
    return None


# ------------------------------------------------------------------------------ ImageNet-C
def imagenet_c_files(root: str | Path, corruption: str, severity: int,
                     classes: list[str] | None = None) -> list[tuple[Path, int]]:
    """(image path, class index) of every image of ``<root>/<corruption>/<severity>/``, in
    class order then file-name order. Classes are the sorted class folders, or ``classes``
    (the clean set's order; a folder not in it is an error)."""
    check_name(corruption)
    check_severity(severity)
    folder = Path(root) / corruption / str(severity)
    if not folder.is_dir():
        raise QgenError(f"{folder}: no such folder; ImageNet-C is laid out as "
                        "<root>/<corruption>/<severity>/<class>/<image>")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not found:
        raise QgenError(f"{folder}: no class folders")
    order = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(order)}
    unknown = [c for c in found if c not in index]
    if unknown:
        raise QgenError(f"{folder / unknown[0]}: class {unknown[0]!r} is not one of the "
                        f"{len(order)} classes of the clean set")
    out = []
    for c in found:
        files = sorted(p for p in (folder / c).iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        out.extend((p, index[c]) for p in files)
    if not out:
        raise QgenError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class "
                        "folders")
    return out


def read_images(paths: list[Path]) -> np.ndarray:
    """Decode images of one size to a (k, H, W, 3) uint8 array (needs Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        raise QgenError("reading image folders needs Pillow: pip install pillow") from None
    arrays = []
    for p in paths:
        try:
            with Image.open(p) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise QgenError(f"{p}: not a readable image ({exc})") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise QgenError(f"images of different sizes ({', '.join(map(str, sorted(shapes)))}); "
                        "ImageNet-C images are all 224×224")
    return np.stack(arrays) if arrays else np.zeros((0, 0, 0, 3), dtype=np.uint8)
