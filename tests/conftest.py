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


def synthetic_table(*, seeds: int = 2, lrs: tuple[float, ...] = (0.05, 0.1, 0.2),
                    widths: tuple[int, ...] = (2, 3), gap_shift: dict[str, float] | None = None,
                    noise: float = 0.002, status: str = "converged", seed: int = 0) -> object:
    """A results table in the layout of ``qgen collect`` (the columns the analysis and the
    report read), with known effects: the loss gap of bit width ``b`` is the full-precision
    twin's plus ``gap_shift[b]`` (default: fp 0, w8a8 0, w4a4 −0.02, w2a2 −0.05) plus
    N(0, noise²); training loss rises as bits fall; the magnitude-aware flatness measures
    fall with bits (flatter), and every flatness measure rises with the gap."""
    import numpy as np
    import pandas as pd

    shift = gap_shift or {"fp": 0.0, "w8a8": 0.0, "w4a4": -0.02, "w2a2": -0.05}
    bits = {"fp": (None, None), "w8a8": (8, 8), "w4a4": (4, 4), "w2a2": (2, 2)}
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(seeds):
        for lr in lrs:
            for w in widths:
                base = 0.10 + 0.4 * lr + 0.01 * w + 0.01 * s
                for label, d in shift.items():
                    gap = base + d + rng.normal(0, noise)
                    k = list(shift).index(label)
                    train_loss = 0.10 + 0.01 * k + rng.normal(0, 0.001)
                    rows.append({
                        "run_id": f"r{len(rows):03d}", "status": status,
                        "hp.quant.label": label, "hp.quant.w_bits": bits[label][0],
                        "hp.quant.a_bits": bits[label][1], "hp.optim.lr": lr,
                        "hp.model.width": w, "hp.train.seed": s,
                        "gen.loss_gap": gap, "gen.acc_gap": gap / 10,
                        "gen.train_loss": train_loss, "gen.test_loss": train_loss + gap,
                        "gen.train_accuracy": 0.97 - 0.01 * k,
                        "gen.test_accuracy": 0.97 - 0.01 * k - gap / 10,
                        "gen.epochs": 10 + 3 * k + s,
                        "measure.pacbayes.flatness": 100 * gap * np.exp(rng.normal(0, 0.1)),
                        "measure.pacbayes.mag.flatness": 50 * np.exp(-0.3 * k + 2 * gap),
                        "measure.sharpness.flatness": 1e6 * gap * np.exp(rng.normal(0, 0.1)),
                        "measure.sharpness.mag.flatness": 1e4 * np.exp(-0.2 * k + 3 * gap),
                        "meta.healthy": True,
                        "meta.measure_settings": '{"preset_name": "default"}',
                        "meta.measure_preset": "default",
                        "meta.threads": 1, "meta.torch": "2.13.0"})
    return pd.DataFrame(rows)


@pytest.fixture
def make_table():
    """:func:`synthetic_table`, as a fixture."""
    return synthetic_table
