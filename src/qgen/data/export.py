"""Write a registered dataset out as a folder-per-class image dataset (the ImageNet layout).

``write_folder("fashion-mnist", "fmnist-folder", train_subset=1000)`` gives
``fmnist-folder/train/<class>/<index>.png`` and ``fmnist-folder/val/<class>/<index>.png``,
which ``folder:PATH`` reads back (:mod:`qgen.data.folder`). PNG is lossless, so the images are
exactly the dataset's pixels. It turns a small real dataset into input for the image-folder
path (zoo models, the ImageNet pipeline) without a download; the subsets are the same seeded
subsets a run with the same ``DataSpec`` sees.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qgen.config import DataSpec
from qgen.data.prepare import subset_indices
from qgen.data.registry import _as_path, get_dataset
from qgen.errors import QgenError
from qgen.io import check_can_create_dir


def write_folder(name: str, out: str | Path, *, data_dir: str | Path | None = None,
                 train_subset: int | None = None, test_subset: int | None = None,
                 subset_seed: int = 0) -> dict[str, int]:
    """Write dataset ``name`` (its seeded subsets) as PNG files under ``out`` (which must not
    exist yet); returns the number of images written per split.

    The files are written into a hidden temporary folder renamed to ``out`` at the end, so
    an interrupted write leaves no half-filled dataset behind.
    """
    try:
        from PIL import Image
    except ImportError as exc:
        raise QgenError("writing image files needs Pillow: pip install 'qgen[vision]'") from exc
    out = Path(out).expanduser()
    if out.exists():
        raise QgenError(f"{out} already exists; give a new folder to write the dataset to")
    check_can_create_dir(out)
    spec = DataSpec(name=name, train_subset=train_subset, test_subset=test_subset,
                    subset_seed=subset_seed)  # checks the values
    entry = get_dataset(name)
    raw = entry.read(entry.locate(_as_path(data_dir)))
    tmp = out.parent / f".{out.name}.partial"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    counts = {}
    for split, folder, x, y, k, seed in (
            ("train", "train", raw.train_x, raw.train_y, spec.train_subset, 2 * subset_seed),
            ("test", "val", raw.test_x, raw.test_y, spec.test_subset, 2 * subset_seed + 1)):
        if k is not None and k > x.shape[0]:
            raise QgenError(f"{split}_subset: {k} is larger than the {name} {split} set "
                            f"({x.shape[0]} images)")
        idx = subset_indices(x.shape[0], k, seed)
        positions = torch.arange(x.shape[0]) if idx is None else idx
        digits = len(str(raw.num_classes - 1))
        for pos in positions.tolist():
            img = x[pos]
            if raw.scale != 255.0:  # e.g. digits' 0..16
                img = (img.float() * (255.0 / raw.scale)).round().clamp(0, 255).to(torch.uint8)
            arr = img.permute(1, 2, 0).numpy()
            pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
            cls = tmp / folder / f"class{int(y[pos]):0{digits}d}"
            cls.mkdir(parents=True, exist_ok=True)
            pil.save(cls / f"{pos:06d}.png")
        counts[split] = len(positions)
    tmp.rename(out)
    return counts
