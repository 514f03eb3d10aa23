"""Benchmark: one training epoch of an image folder through FolderSource, worker processes
against in-process decoding, side by side.

A generated dataset of JPEGs at ImageNet-like sizes (500×375, 375×500 and 500×333, quality 90,
smooth content plus noise so that decoding does real work; the mean file size is printed) is
written to a temporary folder. Both sides do the same work: ``FolderSource.batches`` with the
training transform (random resized crop to ``--size`` + flip), the same seed and epoch, every
batch consumed; ``QGEN_DATA_WORKERS`` is ``--workers`` on one side and 0 (decode and transform
in the main process) on the other. Worker start-up is inside the timing: an epoch pays it. The
two are timed alternately after one untimed epoch each (page cache, first imports); medians,
images/s and the ratio are printed with the hardware and versions.

    python bench/bench_folder.py --images 400 --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import cpu_name  # bench/ is on sys.path when run as a script
from qgen.config import DataSpec
from qgen.data import load_data
from qgen.data.folder import WORKERS_ENV, FolderSource

SHAPES = ((500, 375), (375, 500), (500, 333))  # (width, height), the common ImageNet ones


def write_images(root: Path, n_train: int, classes: int, quality: int, seed: int = 0) -> int:
    """Write ``n_train`` training JPEGs (and one validation image per class) under ``root``;
    returns the bytes written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n_train + classes):
        split, c = ("train", i % classes) if i < n_train else ("val", i - n_train)
        w, h = SHAPES[i % len(SHAPES)]
        coarse = Image.fromarray(rng.integers(0, 256, (h // 24, w // 24, 3), dtype=np.uint8))
        arr = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.int16)
        arr = np.clip(arr + rng.normal(0, 8, arr.shape), 0, 255).astype(np.uint8)
        path = root / split / f"c{c:02d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, quality=quality)
        total += path.stat().st_size
    return total


def time_epoch(source: FolderSource, workers: int, batch_size: int, epoch: int) -> float:
    """Seconds for one augmented, shuffled epoch with ``workers`` processes, consuming every
    batch."""
    os.environ[WORKERS_ENV] = str(workers)
    batches = source.batches(batch_size, shuffle=True, augment=True, seed=0)
    batches.epoch = epoch
    sink = torch.zeros(())
    t0 = time.perf_counter()
    for xb, yb in batches:
        sink += xb.sum() + yb.sum()
    float(sink)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=400, help="training images to generate")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality")
    ap.add_argument("--size", type=int, default=224, help="input size (data.input_size)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the timed side")
    ap.add_argument("--repeats", type=int, default=3, help="timings per side (median shown)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()

    from PIL import __version__ as pil_version

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="qgen-bench-folder-") as tmp:
        root = Path(tmp) / "data"
        nbytes = write_images(root, args.images, args.classes, args.quality)
        source = load_data(DataSpec(name=f"folder:{root}", input_size=args.size)).train
        sides = {f"workers {args.workers}": args.workers, "in-process": 0}
        for w in sides.values():  # untimed: page cache, imports, allocator
            time_epoch(source, w, args.batch_size, 0)
        times: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(args.repeats):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for k in order:
                times[k].append(time_epoch(source, sides[k], args.batch_size, 1 + r))

    print(f"{cpu_name()}, {os.cpu_count()} CPUs; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), Pillow {pil_version}, "
          f"Python {sys.version.split()[0]}")
    print(f"data: {args.images} JPEGs {'/'.join(f'{w}x{h}' for w, h in SHAPES)} q{args.quality} "
          f"({nbytes / args.images / 1024:.0f} KiB each); epoch = random resized crop "
          f"{args.size} + flip, batch {args.batch_size}; {args.repeats} repeats, medians")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, t in med.items():
        runs = ", ".join(f"{v:.2f}" for v in times[k])
        print(f"  {k:<11} {t:7.2f} s/epoch  {args.images / t:8.0f} img/s   (runs: {runs})")
    base = "in-process"
    fast = f"workers {args.workers}"
    print(f"  ratio (workers {args.workers} img/s) / (in-process img/s): "
          f"{med[base] / med[fast]:.2f}x")


if __name__ == "__main__":
    main()
