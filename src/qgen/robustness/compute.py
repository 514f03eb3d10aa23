"""A trained model on corrupted test data: loss, accuracy and the gap under distortion.

For every corruption c and severity s of a :class:`~qgen.robustness.settings.RobustnessSpec`
(table columns under ``robust.``; docs/robustness.md lists them):

- ``<c>.s<s>.loss``, ``<c>.s<s>.acc``: cross-entropy and accuracy on the corrupted test
  images;
- ``<c>.s<s>.gap``: the generalization gap under distortion, corrupted test loss − clean
  training loss (the run's own training loss, from result.json);
- ``<c>.loss|acc|gap``: their means over the severities; ``s<s>.loss|acc|gap``: means over
  the corruptions; ``mean_loss``, ``mean_acc``, ``mean_gap``: means over both;
- ``clean_loss``, ``clean_acc``, ``clean_gap`` on the same test images uncorrupted,
  ``train_loss`` and ``n_test``.

The images are the run's test images (the run's own test subset, and a seeded subset of it
of ``test_examples``), corrupted in their native size and channels in [0, 1], stored as 8-bit
like the released files, then converted and normalized exactly as the run's data were.
With released CIFAR-10-C/100-C files (:mod:`qgen.robustness.loaders`) the corrupted images
are read from them instead, at the same test positions. An image-folder dataset (``imagenet``,
``folder:PATH``) has no native size: its test images are decoded at the selected positions
through the run's evaluation transform (resize and centre crop to the run's size), as 8-bit.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qgen.config import DataSpec
from qgen.data import get_dataset
from qgen.data.folder import FolderSource, FolderSplit, folder_listing, is_folder_dataset
from qgen.data.prepare import fit_size, subset_indices
from qgen.errors import QgenError
from qgen.measures.context import derive_seed
from qgen.robustness.corruptions import corrupt
from qgen.robustness.loaders import RELEASED_FOLDERS, ReleasedC, find_released
from qgen.robustness.settings import RobustnessSpec
from qgen.train.evaluate import predict_logits

#: corrupted test sets kept in a post-pass call's cache, at most this many bytes (8-bit
#: images: the demo's 30 sets of 500 Fashion-MNIST images take 12 MB, all of CIFAR-10-C 3 GB)
CACHE_BYTES = 1 << 30


@dataclass
class EvalSet:
    """The clean test images of one evaluation: native ``uint8`` (N, C, H, W) with the value
    that means full intensity (``scale``), labels, their positions in the full test set, and
    how the run's model sees images (channels, size, normalization)."""

    dataset: str
    images: Tensor
    labels: Tensor
    positions: Tensor
    scale: float
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalize: bool
    full_test_labels: Tensor = field(repr=False)

    def model_input(self, images01: Tensor) -> Tensor:
        """Float images in [0, 1] (native channels and size) as the run's model takes them:
        channels converted (mean of RGB, or grey repeated), padded or shrunk to ``size``,
        normalized with the run's training statistics (as :mod:`qgen.data.prepare`)."""
        x = images01.to(torch.float32)
        if x.shape[1] == 3 and self.channels == 1:
            x = x.mean(dim=1, keepdim=True)
        x = fit_size(x, self.size)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.contiguous()

    @property
    def key(self) -> str:
        """A short digest of the dataset and test positions (a cache key)."""
        digest = hashlib.blake2b(self.positions.numpy().tobytes(), digest_size=8).hexdigest()
        # the image size too: a folder dataset's test images are decoded at the run's size
        shape = "x".join(map(str, self.images.shape[1:]))
        return f"{self.dataset}:{len(self.positions)}:{shape}:{digest}"

    def clean01(self) -> Tensor:
        """The clean images as floats in [0, 1]."""
        return self.images.to(torch.float32) / self.scale


def _raw_test(name: str, data_dir: Path | None, cache: dict[Any, Any]) -> Any:
    key = ("robust.raw", name, str(data_dir))
    if key not in cache:
        entry = get_dataset(name)
        cache[key] = entry.read(entry.locate(data_dir))
    return cache[key]


def _folder_test(name: str, data_dir: Path | None, cache: dict[Any, Any]) -> FolderSplit:
    key = ("robust.folder", name, str(data_dir))
    if key not in cache:
        cache[key] = folder_listing(name, data_dir).test
    return cache[key]


def eval_set(data: DataSpec, result_data: dict[str, Any], spec: RobustnessSpec,
             data_dir: Path | None = None, cache: dict[Any, Any] | None = None) -> EvalSet:
    """The clean test images a run is evaluated on (see the module docstring):
    ``data`` is the run's DataSpec, ``result_data`` the ``data`` part of its result.json
    (channels, size and normalization statistics as trained)."""
    cache = {} if cache is None else cache
    size = int(result_data["size"])
    if is_folder_dataset(data.name):
        test = FolderSource(_folder_test(data.name, data_dir, cache), size=size)
        full_labels, raw = test.labels, None
    else:
        raw = _raw_test(data.name, data_dir, cache)
        full_labels = raw.test_y.long()
    n_full = len(full_labels)
    positions = subset_indices(n_full, data.test_subset, 2 * data.subset_seed + 1)
    positions = torch.arange(n_full) if positions is None else positions
    if spec.test_examples is not None and spec.test_examples < len(positions):
        gen = torch.Generator().manual_seed(derive_seed(spec.seed, "test_examples"))
        pick = torch.randperm(len(positions), generator=gen)[:spec.test_examples]
        positions = positions[pick.sort().values]
    if raw is None:
        images, scale = test.take_images(positions), 255.0
    else:
        images, scale = raw.test_x[positions], float(raw.scale)
    return EvalSet(dataset=data.name, images=images,
                   labels=full_labels[positions], positions=positions,
                   scale=scale, channels=int(result_data["channels"]),
                   size=size, mean=tuple(result_data["mean"]),
                   std=tuple(result_data["std"]), normalize=bool(data.normalize),
                   full_test_labels=full_labels)


def to_uint8(images01: Tensor) -> Tensor:
    """Floats in [0, 1] as 8-bit images (rounded half up), as the released files hold."""
    return (images01 * 255.0 + 0.5).floor().clamp(0, 255).to(torch.uint8)


def resolve_source(spec: RobustnessSpec, dataset: str, data_dir: Path | None
                   ) -> tuple[str, Path | None]:
    """('released', folder) or ('generated', None) for ``dataset`` under ``spec.source``."""
    if spec.source == "generated":
        return "generated", None
    if dataset not in RELEASED_FOLDERS:
        if spec.source == "released" or spec.released_dir is not None:
            raise QgenError(f"robustness: released -C files exist only for "
                            f"{', '.join(RELEASED_FOLDERS)}, not {dataset}; drop released_dir "
                            "and use source 'auto' or 'generated'")
        return "generated", None
    folder = find_released(dataset, spec.released_dir, data_dir)
    if folder is None:
        if spec.source == "released":
            raise QgenError(f"robustness.source is 'released' but no {RELEASED_FOLDERS[dataset]}"
                            " folder with labels.npy was found (set released_dir, or put it "
                            "under --data-dir or $QGEN_DATA)")
        return "generated", None
    return "released", folder


class CorruptedSets:
    """Corrupted versions of one :class:`EvalSet`, made (or read) once and kept in a cache
    that lives across the runs of a post-pass call, up to :data:`CACHE_BYTES`."""

    def __init__(self, es: EvalSet, spec: RobustnessSpec, source: str, folder: Path | None,
                 cache: dict[Any, Any]) -> None:
        self.es, self.spec, self.source, self.folder = es, spec, source, folder
        self.cache = cache
        self.seconds = 0.0
        self._released: ReleasedC | None = None
        if source == "released":
            key = ("robust.released", str(folder), es.dataset)
            if key not in cache:
                rc = ReleasedC(folder, n_test=len(es.full_test_labels))  # type: ignore[arg-type]
                rc.check_labels(es.full_test_labels.numpy(), es.dataset)
                cache[key] = rc
            self._released = cache[key]

    def images(self, corruption: str, severity: int) -> Tensor:
        """The corrupted test images (N, C, H, W) uint8, native size and channels."""
        es = self.es
        key = ("robust.set", self.source, str(self.folder), es.key, self.spec.seed,
               corruption, severity)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        if self._released is not None:
            arr = self._released.images(corruption, severity, es.positions.numpy())
            out = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()
        else:
            seed = derive_seed(self.spec.seed, f"corruption:{corruption}:{severity}")
            out = to_uint8(corrupt(es.clean01(), corruption, severity, seed=seed))
        self.seconds += time.perf_counter() - t0
        used = self.cache.get("robust.bytes", 0)
        if used + out.numel() <= CACHE_BYTES:
            self.cache[key] = out
            self.cache["robust.bytes"] = used + out.numel()
        return out


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int,
                      device: str | torch.device = "cpu") -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on ``(x, y)``."""
    logits = predict_logits(model, x, batch_size, device).cpu()
    loss = F.cross_entropy(logits.double(), y, reduction="mean").item()
    return float(loss), float((logits.argmax(1) == y).double().mean().item())


def compute_robustness(model: nn.Module, es: EvalSet, train_loss: float,
                       spec: RobustnessSpec, *, source: str = "generated",
                       folder: Path | None = None, cache: dict[Any, Any] | None = None,
                       device: str | torch.device = "cpu",
                       known: dict[tuple[str, int], tuple[float, float]] | None = None
                       ) -> dict[str, Any]:
    """The values (module docstring) of ``model`` on ``es`` and its corruptions, plus where
    the corrupted images came from and the time spent; the ``robustness`` record's content.
    ``known``: (loss, accuracy) of cells already measured with the same settings, reused
    instead of evaluated again (``reused_cells`` in the record counts them).
    """
    known = known or {}
    cache = {} if cache is None else cache
    sets = CorruptedSets(es, spec, source, folder, cache)
    model = model.eval()
    t0 = time.perf_counter()
    values: dict[str, float] = {"train_loss": float(train_loss), "n_test": float(len(es.labels))}
    loss, acc = loss_and_accuracy(model, es.model_input(es.clean01()), es.labels,
                                  spec.batch_size, device)
    values.update(clean_loss=loss, clean_acc=acc, clean_gap=loss - train_loss)
    table: dict[tuple[str, int], tuple[float, float]] = {}
    reused = 0
    for c in spec.corruptions:
        for s in spec.severities:
            if (c, s) in known:
                table[(c, s)] = known[(c, s)]
                reused += 1
                continue
            x = es.model_input(sets.images(c, s).to(torch.float32) / 255.0)
            table[(c, s)] = loss_and_accuracy(model, x, es.labels, spec.batch_size, device)
    for (c, s), (loss, acc) in table.items():
        values[f"{c}.s{s}.loss"], values[f"{c}.s{s}.acc"] = loss, acc
        values[f"{c}.s{s}.gap"] = loss - train_loss

    def mean(keys: list[tuple[str, int]], i: int) -> float:
        return float(sum(table[k][i] for k in keys) / len(keys))

    for c in spec.corruptions:
        keys = [(c, s) for s in spec.severities]
        values[f"{c}.loss"], values[f"{c}.acc"] = mean(keys, 0), mean(keys, 1)
        values[f"{c}.gap"] = values[f"{c}.loss"] - train_loss
    for s in spec.severities:
        keys = [(c, s) for c in spec.corruptions]
        values[f"s{s}.loss"], values[f"s{s}.acc"] = mean(keys, 0), mean(keys, 1)
        values[f"s{s}.gap"] = values[f"s{s}.loss"] - train_loss
    keys = list(table)
    values["mean_loss"], values["mean_acc"] = mean(keys, 0), mean(keys, 1)
    values["mean_gap"] = values["mean_loss"] - train_loss
    total = time.perf_counter() - t0
    return {"values": values, "source": source,
            "released_dir": str(folder) if folder is not None else None,
            "dataset": es.dataset, "corruptions": list(spec.corruptions),
            "severities": list(spec.severities), "reused_cells": reused,
            "timings": {"corrupt_s": sets.seconds, "evaluate_s": total - sets.seconds}}
