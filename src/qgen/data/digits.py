"""scikit-learn's bundled 8×8 handwritten digits: a tiny real dataset that needs no download.

scikit-learn is an optional extra (``pip install qgen[digits]``), imported only when the
dataset is used. The 1,797 images are split once, stratified and seeded, into 1,437 training
and 360 test images, so every run sees the same split. Raw values are 0..16.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from qgen.data.registry import RawImages, register_dataset
from qgen.errors import QgenError

NAME = "digits"
TEST_SIZE = 360
SPLIT_SEED = 0  # part of the dataset's definition: changing it changes every digits result
MAX_VALUE = 16.0


def _sklearn() -> ModuleType:
    try:
        import sklearn
    except ImportError as exc:
        raise QgenError("the digits dataset needs scikit-learn: "
                        "`pip install scikit-learn` (or `pip install qgen[digits]`)") from exc
    return sklearn


def locate_digits(data_dir: Path | None) -> str:
    """Where the digits come from (scikit-learn's package data); ``data_dir`` is not used."""
    return f"scikit-learn {_sklearn().__version__} load_digits"


@register_dataset(NAME, num_classes=10, locate=locate_digits)
def read_digits(where: str) -> RawImages:
    """Digits (scikit-learn): 1,437/360 grey 8×8 images of 10 classes, stratified split."""
    _sklearn()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # values are the integers 0..16
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE, stratify=y,
                                              random_state=SPLIT_SEED)
    return RawImages(torch.from_numpy(x_tr.copy()), torch.from_numpy(y_tr.copy()),
                     torch.from_numpy(x_te.copy()), torch.from_numpy(y_te.copy()),
                     num_classes=10, source=where, scale=MAX_VALUE)
