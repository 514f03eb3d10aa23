"""CIFAR-10 and CIFAR-100 from the standard folders, in either published layout.

- binary: ``cifar-10-batches-bin`` (``data_batch_1..5.bin``, ``test_batch.bin``; records of one
  label byte + 3,072 pixel bytes) and ``cifar-100-binary`` (``train.bin``, ``test.bin``; a coarse
  and a fine label byte, then the pixels; the fine label is used);
- python: ``cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``) and ``cifar-100-python``
  (``train``, ``test``): pickled dicts with ``b'data'`` (N×3072 uint8) and ``b'labels'`` /
  ``b'fine_labels'``.

The python layout is pickle, and unpickling can run arbitrary code, so it goes through
:class:`RestrictedUnpickler`, which builds numpy arrays and builtin containers and nothing else.
The folders are looked for under ``data_dir`` (or ``$QGEN_DATA``); ``data_dir`` may also be the
layout folder itself. The binary layout is preferred when both are present: it needs no pickle.
"""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qgen.data.registry import RawImages, register_dataset, search_roots
from qgen.errors import QgenError

PIXELS = 3 * 32 * 32
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes ``bytes`` at pickle protocol < 3 as ``_codecs.encode(text, 'latin1')``;
    # only that exact call is rebuilt, so the codec machinery is not exposed to the file.
    if encoding != "latin1" or not isinstance(text, str):
        raise QgenError("pickled _codecs.encode call is not a latin1 bytes literal")
    return text.encode("latin1")


def _numpy_global(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core and warns on the old path; pickles name either.
    for mod in (module.replace("numpy.core", "numpy._core", 1), module):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise QgenError(f"numpy has no {module}.{name} to rebuild a pickled array")


_NUMPY_GLOBALS = {
    (mod, name)
    for core in ("numpy.core", "numpy._core")
    for mod, name in ((f"{core}.multiarray", "_reconstruct"), (f"{core}.multiarray", "scalar"),
                      (f"{core}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype")}
_BUILTIN_GLOBALS = {("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
                    ("builtins", "bytearray"): bytearray, ("_codecs", "encode"): _latin1_encode}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and builtin containers only.

    Every other global a pickle names (``os.system``, ``builtins.eval``, any class) is refused
    with a QgenError before it is imported, so a malicious file cannot run code.
    """

    def __init__(self, file: Any, path: str | Path, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.path = str(path)

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only the globals numpy arrays need; refuse everything else."""
        if module == "__builtin__":  # the Python 2 name, which protocol <= 2 writes
            module = "builtins"
        if (module, name) in _NUMPY_GLOBALS:
            return _numpy_global(module, name)
        if (module, name) in _BUILTIN_GLOBALS:
            return _BUILTIN_GLOBALS[(module, name)]
        raise QgenError(f"{self.path}: contains a pickled object of type {module}.{name}; "
                        "only arrays and builtin containers are allowed")


def load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (keys stay bytes, as CIFAR's
    Python 2 pickles need); a damaged file is a QgenError."""
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, path, encoding="bytes").load()
    except QgenError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OSError) as exc:
        raise QgenError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class _Layout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    binary: bool
    label_bytes: int = 1  # binary: label bytes before the pixels; the last one is used
    label_key: str = "labels"  # python: dict key of the labels


@dataclass(frozen=True)
class _Cifar:
    name: str
    num_classes: int
    layouts: tuple[_Layout, ...]

    def _complete(self, folder: Path) -> _Layout | None:
        for layout in self.layouts:
            if all((folder / f).is_file() for f in layout.train + layout.test):
                return layout
        return None

    def locate(self, data_dir: Path | None) -> str:
        looked = []
        for root in search_roots(data_dir):
            for folder in [root / lay.folder for lay in self.layouts] + [root]:
                if self._complete(folder):
                    return str(folder)
                looked.append(str(folder))
        where = (f"looked in {', '.join(looked)}" if looked
                 else "no --data-dir given and $QGEN_DATA is not set")
        folders = " or ".join(lay.folder for lay in self.layouts)
        raise QgenError(f"{self.name} not found ({where}); download the binary or python "
                        f"version from {URL}, extract it so that {folders} is inside a folder, "
                        "and pass that folder as --data-dir (or set $QGEN_DATA)")

    def read(self, where: str) -> RawImages:
        folder = Path(where)
        layout = self._complete(folder)
        if layout is None:
            raise QgenError(f"{folder}: no complete {self.name} layout "
                            f"({' or '.join(lay.folder for lay in self.layouts)})")
        part = self._read_binary if layout.binary else self._read_python
        train = [part(folder / f, layout) for f in layout.train]
        test = [part(folder / f, layout) for f in layout.test]
        return RawImages(torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]),
                         torch.cat([x for x, _ in test]), torch.cat([y for _, y in test]),
                         self.num_classes, source=str(folder))

    def _check_labels(self, path: Path, labels: np.ndarray, n: int) -> torch.Tensor:
        if labels.ndim != 1 or labels.shape[0] != n:
            raise QgenError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels "
                            f"for {n} images")
        if not np.issubdtype(labels.dtype, np.integer):
            raise QgenError(f"{path}: labels must be integers, got {labels.dtype}")
        if n and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels.min() if labels.min() < 0 else labels.max()
            raise QgenError(f"{path}: label {bad} out of range; expected "
                            f"0..{self.num_classes - 1}")
        return torch.from_numpy(labels.astype(np.int64))

    def _read_binary(self, path: Path, layout: _Layout) -> tuple[torch.Tensor, torch.Tensor]:
        record = layout.label_bytes + PIXELS
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise QgenError(f"{path}: {raw.size} bytes is not a whole number of "
                            f"{record}-byte records; the file is truncated or not {self.name}")
        rows = raw.reshape(-1, record)
        labels = self._check_labels(path, rows[:, layout.label_bytes - 1], rows.shape[0])
        images = torch.from_numpy(rows[:, layout.label_bytes:].reshape(-1, 3, 32, 32).copy())
        return images, labels

    def _read_python(self, path: Path, layout: _Layout) -> tuple[torch.Tensor, torch.Tensor]:
        batch = load_pickle(path)
        if not isinstance(batch, dict):
            raise QgenError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
        data = _get(batch, "data", path)
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == PIXELS):
            desc = (f"{data.dtype} array of shape {data.shape}"
                    if isinstance(data, np.ndarray) else type(data).__name__)
            raise QgenError(f"{path}: 'data' must be a uint8 array of shape (N, {PIXELS}), "
                            f"got {desc}")
        try:
            labels = np.asarray(_get(batch, layout.label_key, path))
        except (TypeError, ValueError) as exc:
            raise QgenError(f"{path}: '{layout.label_key}' is not a list of integers") from exc
        y = self._check_labels(path, labels, data.shape[0])
        return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), y


def _get(batch: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise QgenError(f"{path}: no '{key}' entry; found {sorted(map(str, batch))}")


_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10 = _Cifar("cifar10", 10, (
    _Layout("cifar-10-batches-bin", tuple(f"{b}.bin" for b in _BATCHES), ("test_batch.bin",),
            binary=True),
    _Layout("cifar-10-batches-py", _BATCHES, ("test_batch",), binary=False),
))
CIFAR100 = _Cifar("cifar100", 100, (
    _Layout("cifar-100-binary", ("train.bin",), ("test.bin",), binary=True, label_bytes=2),
    _Layout("cifar-100-python", ("train",), ("test",), binary=False, label_key="fine_labels"),
))


@register_dataset("cifar10", num_classes=10, locate=CIFAR10.locate)
def read_cifar10(where: str) -> RawImages:
    """CIFAR-10: 50,000/10,000 colour 32×32 images of 10 classes."""
    return CIFAR10.read(where)


@register_dataset("cifar100", num_classes=100, locate=CIFAR100.locate)
def read_cifar100(where: str) -> RawImages:
    """CIFAR-100: 50,000/10,000 colour 32×32 images of 100 fine classes."""
    return CIFAR100.read(where)
