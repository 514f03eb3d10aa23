"""Fashion-MNIST: the IDX file reader, where the four ``.gz`` files are looked for, and the
opt-in download from the dataset's canonical location.

The files are searched in ``data_dir`` (directly, or in ``<data_dir>/fashion-mnist/``); without
``data_dir`` in ``$QGEN_DATA`` (same two forms) and then ``/usr/share/datasets/fashion-mnist/``,
where the Debian package ``dataset-fashion-mnist`` installs them.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from qgen.data.registry import RawImages, download_root, register_dataset, search_roots
from qgen.errors import QgenError

NAME = "fashion-mnist"
NUM_CLASSES = 10
FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_ROOTS = (Path("/usr/share/datasets"),)
HOW_TO_GET = ("install it with `apt-get install dataset-fashion-mnist`, point --data-dir at a "
              "folder holding the four IDX .gz files, or pass --download")

_UBYTE = 0x08  # IDX type code of unsigned bytes, the only type Fashion-MNIST uses


def read_idx(path: str | Path, ndim: int) -> torch.Tensor:
    """Read a gzipped IDX file of unsigned bytes with ``ndim`` dimensions as a uint8 tensor.

    Anything that does not follow the format (gzip damage, bad magic, another element type or
    dimension count, a payload of the wrong length) is a QgenError naming the file.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise QgenError(f"{path}: not a readable gzip file ({exc}); "
                        "the download may be truncated, fetch it again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise QgenError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty)'}; "
                        "expected 0000 followed by the type and dimension count")
    if raw[2] != _UBYTE:
        raise QgenError(f"{path}: IDX element type 0x{raw[2]:02x} is not supported; "
                        "expected 0x08 (unsigned byte)")
    if raw[3] != ndim:
        raise QgenError(f"{path}: IDX file has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise QgenError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise QgenError(f"{path}: IDX size mismatch: dimensions {dims} need {expected} bytes "
                        f"of data, the file holds {len(raw) - header}")
    arr = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(arr.copy())


def _read_split(folder: Path, xkey: str, ykey: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(folder / FILES[xkey], 3)
    y = read_idx(folder / FILES[ykey], 1)
    if x.shape[0] != y.shape[0]:
        raise QgenError(f"{folder / FILES[ykey]}: {y.shape[0]} labels for "
                        f"{x.shape[0]} images in {FILES[xkey]}")
    if y.numel() and int(y.max()) >= NUM_CLASSES:
        raise QgenError(f"{folder / FILES[ykey]}: label {int(y.max())} out of range; "
                        f"expected 0..{NUM_CLASSES - 1}")
    return x.unsqueeze(1), y.long()


def _candidates(roots: list[Path]) -> list[Path]:
    return [p for root in roots for p in (root, root / NAME)]


def locate_fashion_mnist(data_dir: Path | None) -> str:
    """The folder holding the four IDX files, or a QgenError saying where it looked."""
    looked, partial = [], []
    for folder in _candidates(search_roots(data_dir, SYSTEM_ROOTS)):
        present = [f for f in FILES.values() if (folder / f).is_file()]
        if len(present) == len(FILES):
            return str(folder)
        looked.append(str(folder))
        if present:
            missing = sorted(set(FILES.values()) - set(present))
            partial.append(f"{folder} lacks {', '.join(missing)}")
    detail = f" ({'; '.join(partial)})" if partial else ""
    raise QgenError(f"{NAME} not found: looked in {', '.join(looked)}{detail}; {HOW_TO_GET}")


def download_fashion_mnist(target: Path, base_url: str = URL) -> None:
    """Download the four IDX files from ``base_url`` into ``target``.

    Each file is checked by reading it before it is renamed into place, so an interrupted or
    corrupt download never looks like data.
    """
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QgenError(f"cannot create {target} for the download ({exc.strerror})") from exc
    for key, fname in FILES.items():
        dest = target / fname
        if dest.is_file():
            continue
        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{fname}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(base_url + fname,
                                                                    timeout=60) as resp:
                shutil.copyfileobj(resp, out)
            read_idx(tmp, 3 if key.endswith("_x") else 1)
            os.replace(tmp, dest)
        except QgenError as exc:
            raise QgenError(f"downloaded {base_url + fname} is not valid: {exc}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise QgenError(f"downloading {base_url + fname} failed ({exc}); install "
                            "`dataset-fashion-mnist` or copy the files into --data-dir") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)


def _fetch(data_dir: Path | None) -> None:
    download_fashion_mnist(download_root(data_dir) / NAME)


@register_dataset(NAME, num_classes=NUM_CLASSES, locate=locate_fashion_mnist, fetch=_fetch)
def read_fashion_mnist(where: str) -> RawImages:
    """Fashion-MNIST (Zalando): 60,000/10,000 grey 28×28 images of 10 clothing classes."""
    folder = Path(where)
    train_x, train_y = _read_split(folder, "train_x", "train_y")
    test_x, test_y = _read_split(folder, "test_x", "test_y")
    return RawImages(train_x, train_y, test_x, test_y, NUM_CLASSES, source=str(folder))
