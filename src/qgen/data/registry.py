"""The dataset registry: names → readers, and where on disk each dataset is looked for.

A dataset registers three plain functions with :func:`register_dataset`:

- ``locate(data_dir) -> str``: where the data is (a folder, or a label such as a library
  version), or a :class:`~qgen.errors.QgenError` that says where it looked and how to get it;
- ``read(where) -> RawImages``: the native images as ``uint8`` plus integer labels;
- optionally ``fetch(data_dir) -> None``: download the files (only when the user asks).

A dataset too large to hold in memory registers ``stream(where, spec) -> SourceSplits``
instead (its ``read`` then refuses): splits that decode examples as they are used (the image
folders of :mod:`qgen.data.folder`). A family of names with a prefix (``folder:PATH``)
registers one function that makes the entry of a name, with :func:`register_dataset_family`.

Preparation (subsets, channels, size, normalization) is shared and lives in
:mod:`qgen.data.prepare`; readers only turn files into tensors and check them.

Search order for file-based datasets: an explicit ``data_dir`` is the only place looked at (a
user who names a folder wants that folder, so a silent fallback would hide their mistake);
without it, ``$QGEN_DATA`` then the dataset's system folders (Debian packages) are tried.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qgen.data.source import ExampleSource, TensorSource
from qgen.errors import QgenError

if TYPE_CHECKING:
    from qgen.config import DataSpec

ENV_VAR = "QGEN_DATA"


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a report need to know about prepared data.

    ``size`` is the final height (== width); ``mean``/``std`` are per-channel statistics of the
    prepared training images in [0, 1], whether or not they were applied; ``train_size`` and
    ``test_size`` count the returned examples (after subsetting); ``source`` says where the
    data was read from.
    """

    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int
    source: str


@dataclass
class Splits:
    """Prepared train and test tensors: ``x`` float32 (N, C, H, W), ``y`` int64 (N,)."""

    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    info: DatasetInfo

    @property
    def train(self) -> TensorSource:
        """The training split as an :class:`~qgen.data.source.ExampleSource`."""
        return TensorSource(self.train_x, self.train_y)

    @property
    def test(self) -> TensorSource:
        """The test split as an :class:`~qgen.data.source.ExampleSource`."""
        return TensorSource(self.test_x, self.test_y)


@dataclass
class SourceSplits:
    """Train and test splits served by :class:`~qgen.data.source.ExampleSource` objects that
    read their examples as they are used (an image folder), with the ``train``, ``test`` and
    ``info`` of :class:`Splits`."""

    train: ExampleSource
    test: ExampleSource
    info: DatasetInfo


@dataclass(frozen=True)
class RawImages:
    """A dataset as read from disk, before preparation.

    ``x`` are ``uint8`` (N, C, H, W) tensors; ``y`` int64 (N,). ``scale`` is the raw value that
    means full intensity (255 for 8-bit images, 16 for scikit-learn's digits).
    """

    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    source: str
    scale: float = 255.0


Locate = Callable[[Path | None], str]
Read = Callable[[str], RawImages]
Fetch = Callable[[Path | None], None]
Stream = Callable[[str, "DataSpec"], SourceSplits]


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset: how to find it, read it and (maybe) download it."""

    name: str
    num_classes: int
    locate: Locate
    read: Read
    fetch: Fetch | None = None
    description: str = ""
    stream: Stream | None = None


MakeEntry = Callable[[str], DatasetEntry]

_REGISTRY: dict[str, DatasetEntry] = {}
_FAMILIES: dict[str, tuple[MakeEntry, str]] = {}


def register_dataset(name: str, *, num_classes: int, locate: Locate, fetch: Fetch | None = None,
                     description: str = "", stream: Stream | None = None
                     ) -> Callable[[Read], Read]:
    """Decorator that registers a reader function under ``name``.

    Example::

        @register_dataset("toy", num_classes=2, locate=lambda d: "builtin")
        def read_toy(where: str) -> RawImages: ...
    """

    def deco(read: Read) -> Read:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is registered twice")
        _REGISTRY[name] = DatasetEntry(name, num_classes, locate, read, fetch,
                                       description or (read.__doc__ or "").strip().split("\n")[0],
                                       stream)
        return read

    return deco


def register_dataset_family(prefix: str, *, usage: str) -> Callable[[MakeEntry], MakeEntry]:
    """Decorator that registers the names starting with ``prefix``: the function makes the
    entry of one such name (or raises a QgenError); ``usage`` (``folder:PATH``) is how error
    messages list the family."""

    def deco(make: MakeEntry) -> MakeEntry:
        if prefix in _FAMILIES:
            raise ValueError(f"dataset family {prefix!r} is registered twice")
        _FAMILIES[prefix] = (make, usage)
        return make

    return deco


def dataset_names() -> list[str]:
    """The registered dataset names, sorted (a family's names, ``folder:PATH``, are not
    listed: see :func:`get_dataset`)."""
    return sorted(_REGISTRY)


def get_dataset(name: str) -> DatasetEntry:
    """The registry entry of ``name`` (a registered name, or one of a family such as
    ``folder:PATH``); an unknown name is a QgenError listing the allowed ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, (make, _) in _FAMILIES.items():
        if isinstance(name, str) and name.startswith(prefix):
            return make(name)
    allowed = ", ".join(dataset_names() + [usage for _, usage in _FAMILIES.values()])
    raise QgenError(f"data.name: unknown dataset {name!r}; allowed: {allowed}")


def dataset_available(name: str, data_dir: str | Path | None = None) -> tuple[bool, str]:
    """Whether ``name`` can be loaded without downloading: (True, where it is) or
    (False, where it was looked for and how to get it)."""
    entry = get_dataset(name)
    try:
        return True, entry.locate(_as_path(data_dir))
    except QgenError as exc:
        return False, str(exc)


def _as_path(data_dir: str | Path | None) -> Path | None:
    return None if data_dir is None or data_dir == "" else Path(data_dir).expanduser()


def search_roots(data_dir: Path | None, system: Sequence[Path] = ()) -> list[Path]:
    """Folders to search, in order: ``data_dir`` alone when given; else ``$QGEN_DATA`` (when
    set) followed by the dataset's ``system`` folders."""
    if data_dir is not None:
        return [data_dir]
    roots = []
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append(Path(env).expanduser())
    roots.extend(system)
    return roots


def download_root(data_dir: Path | None) -> Path:
    """Where ``--download`` puts files: ``data_dir``, else ``$QGEN_DATA``."""
    if data_dir is not None:
        return data_dir
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    raise QgenError(f"--download needs a folder to write to: pass --data-dir or set ${ENV_VAR}")
