"""The batch-source protocol: how training, evaluation and measures read a split.

Everything that consumes data asks an :class:`ExampleSource` for what it needs instead of
holding the split as two tensors, so a split that does not fit in memory (an image folder
decoded by worker processes) plugs in beside the in-memory one:

- ``len(source)``: the number of examples;
- ``source.take(idx)``: the examples ``idx`` as an ``(x, y)`` pair of tensors (measures take
  a seeded subset this way);
- ``source.batches(batch_size, shuffle=..., augment=..., seed=..., device=...)``: one pass
  over the split in batches (an iterable with ``len`` = batches per pass); each ``for`` loop
  over it is the next epoch of a seeded sequence.

:class:`TensorSource` is the in-memory implementation (its batches are a
:class:`~qgen.data.loader.TensorLoader`). :func:`as_source` accepts either a source or an
``(x, y)`` pair of tensors, so functions can take both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from qgen.data.loader import TensorLoader
from qgen.errors import QgenError


class Batches(Protocol):
    """One pass over a split in batches."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...


@runtime_checkable
class ExampleSource(Protocol):
    """A split that can be counted, sampled by index and read in batches."""

    def __len__(self) -> int: ...

    def take(self, idx: Tensor) -> tuple[Tensor, Tensor]: ...

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                seed: int = 0, device: str | torch.device = "cpu") -> Batches: ...


class TensorSource:
    """A split held as two tensors ``x`` (N, ...) and ``y`` (N,)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise QgenError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The examples ``idx`` (a LongTensor of positions)."""
        idx = idx.to(self.x.device)
        return self.x[idx], self.y[idx]

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                seed: int = 0, device: str | torch.device = "cpu") -> TensorLoader:
        """A :class:`TensorLoader` over the split."""
        return TensorLoader(self.x, self.y, batch_size, shuffle=shuffle, augment=augment,
                            seed=seed, device=device)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The shape of one input."""
        return tuple(self.x.shape[1:])


def as_source(x: ExampleSource | Tensor, y: Tensor | None = None) -> ExampleSource:
    """``x`` itself when it is a source (then ``y`` must be None), else ``TensorSource(x, y)``."""
    if isinstance(x, Tensor):
        if y is None:
            raise QgenError("labels missing: pass (x, y) tensors or one ExampleSource")
        return TensorSource(x, y)
    if y is not None:
        raise QgenError("an ExampleSource carries its labels: do not pass y as well")
    if not isinstance(x, ExampleSource):
        raise QgenError(f"expected tensors or an ExampleSource, got {type(x).__name__}")
    return x


def example_shape(source: ExampleSource) -> tuple[int, ...]:
    """The shape of one input of ``source`` (read from its first example)."""
    shape = getattr(source, "example_shape", None)
    if shape is not None:
        return tuple(shape)
    x, _ = source.take(torch.zeros(1, dtype=torch.long))
    return tuple(x.shape[1:])
