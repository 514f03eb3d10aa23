"""The main job: a small but real QGen study on Fashion-MNIST.

Trains NiN models with the protocol's settings on a seeded Fashion-MNIST subset and reports,
side by side, train/test loss and accuracy and both generalization gaps.
"""

from __future__ import annotations

from typing import Any

from qgen.config import RunSpec

#: NiN depth 2, SGD 0.01 with momentum 0.9, batch 32, target cross-entropy 0.01
DEMO_BASE: dict[str, Any] = {
    "data": {"name": "fashion-mnist", "train_subset": 4000, "test_subset": 5000},
    "model": {"name": "nin", "depth": 2, "width": 2},
    "train": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "batch_size": 32,
              "max_epochs": 12, "target_ce": 0.01, "seed": 0},
}
DEMO_WIDTHS = (1, 2)


def demo_specs() -> list[tuple[str, RunSpec]]:
    """(label, spec) for each demo model: full-precision NiN at each width."""
    out = []
    for w in DEMO_WIDTHS:
        tree = {k: dict(v) for k, v in DEMO_BASE.items()}
        tree["model"]["width"] = w
        out.append((f"nin width {w}", RunSpec.from_dict(tree)))
    return out
