"""Shared fixtures: small real specs that train in about a second."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny_tree() -> dict:
    """A digits NiN spec (1,437 train images, 8×8) that trains in about a second."""
    return {
        "data": {"name": "digits", "train_subset": 300},
        "model": {"name": "nin", "depth": 1, "width": 1},
        "train": {"lr": 0.05, "batch_size": 32, "max_epochs": 2, "seed": 0},
    }


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run the suite on one intra-op thread (restored afterwards): its tensors are small, and
    on a busy two-core machine a second OpenMP thread makes every small op wait for the
    scheduler (a 0.3 s loop was seen to take 15 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
