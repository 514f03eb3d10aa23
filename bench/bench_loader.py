"""Benchmark: full epochs of qgen's TensorLoader against torch's DataLoader, side by side.

Both iterate the same prepared tensors with the same augmentation (random crop with zero
padding + horizontal flip): TensorLoader on whole batches, DataLoader per sample (a small
transform written with torch ops, ``num_workers=0``) over a TensorDataset. Every batch is
consumed (summed) so that lazy work cannot hide. The two are timed alternately in each repeat
so that machine noise hits both; medians and the ratio DataLoader/TensorLoader are printed
together with the torch version, CPU count and threads.

    python bench/bench_loader.py --epochs 1 --repeats 3 --batch-size 128 --augment
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from qgen.config import DataSpec
from qgen.data import TensorLoader, dataset_available, load_data


class PerSampleAugment:
    """Random crop with zero padding and horizontal flip of one (C, H, W) image."""

    def __init__(self, padding: int, flip: bool, generator: torch.Generator) -> None:
        self.padding, self.flip, self.generator = padding, flip, generator

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        p = self.padding
        h, w = img.shape[-2:]
        if p:
            dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=self.generator).tolist()
            img = F.pad(img, (p, p, p, p))[:, dy:dy + h, dx:dx + w]
        if self.flip and float(torch.rand(1, generator=self.generator)) < 0.5:
            img = img.flip(2)
        return img


class Augmented(Dataset):
    """A TensorDataset whose images go through a per-sample transform."""

    def __init__(self, base: TensorDataset, transform: PerSampleAugment | None) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        return (self.transform(x) if self.transform else x), y


def time_epochs(loader: Iterable, epochs: int, device: torch.device) -> float:
    """Seconds per epoch over ``epochs`` full passes, consuming every batch."""
    sink = torch.zeros((), device=device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            sink += xb.to(device).sum() + yb.to(device).sum()
    float(sink)  # waits for the device
    return (time.perf_counter() - t0) / epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist",
                    help="dataset name (falls back to digits when unavailable)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-subset", type=int, default=None, help="use only N training images")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per timing")
    ap.add_argument("--repeats", type=int, default=3, help="timings per loader (median shown)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--crop-padding", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.dataset
    ok, where = dataset_available(name, args.data_dir)
    if not ok:
        print(f"{name} unavailable ({where}); falling back to digits")
        name, args.data_dir = "digits", None
    splits = load_data(DataSpec(name=name, train_subset=args.train_subset), args.data_dir)
    x, y = splits.train_x, splits.train_y
    device = torch.device(args.device)

    tensor_loader = TensorLoader(x, y, args.batch_size, shuffle=True, augment=args.augment,
                                 crop_padding=args.crop_padding, seed=0, device=device)
    transform = (PerSampleAugment(args.crop_padding, True, torch.Generator().manual_seed(0))
                 if args.augment else None)
    data_loader = DataLoader(Augmented(TensorDataset(x, y), transform),
                             batch_size=args.batch_size, shuffle=True, num_workers=0,
                             generator=torch.Generator().manual_seed(0))

    # One untimed epoch each: first-touch page faults and allocator warm-up.
    time_epochs(tensor_loader, 1, device)
    time_epochs(data_loader, 1, device)
    times: dict[str, list[float]] = {"TensorLoader": [], "DataLoader": []}
    for r in range(args.repeats):
        order = ["TensorLoader", "DataLoader"] if r % 2 == 0 else ["DataLoader", "TensorLoader"]
        for which in order:
            loader = tensor_loader if which == "TensorLoader" else data_loader
            times[which].append(time_epochs(loader, args.epochs, device))

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"device {device}")
    aug = f"crop(pad {args.crop_padding})+flip" if args.augment else "off"
    print(f"data: {name} train {tuple(x.shape)} from {splits.info.source}; "
          f"batch {args.batch_size}, augment {aug}; "
          f"{args.repeats} repeats x {args.epochs} epoch(s), medians")
    med = {k: statistics.median(v) for k, v in times.items()}
    for which, t in med.items():
        runs = ", ".join(f"{v:.3f}" for v in times[which])
        print(f"  {which:<13} {t:8.3f} s/epoch  {len(x) / t:>10,.0f} img/s   (runs: {runs})")
    print(f"  ratio DataLoader/TensorLoader: {med['DataLoader'] / med['TensorLoader']:.1f}x")


if __name__ == "__main__":
    main()
