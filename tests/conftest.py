"""Shared fixtures: small real specs that train in about a second."""

from __future__ import annotations

from pathlib import Path

import pytest

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def tiny_tree() -> dict:
    """A digits NiN spec (1,437 train images, 8×8) that trains in about a second."""
    return {
        "data": {"name": "digits", "train_subset": 300},
        "model": {"name": "nin", "depth": 1, "width": 1},
        "train": {"lr": 0.05, "batch_size": 32, "max_epochs": 2, "seed": 0},
    }


requires_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
