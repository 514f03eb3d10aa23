"""Robustness to corrupted data: the 19 corruptions of Hendrycks & Dietterich (2019) with
their CIFAR constants, batched in torch; the released CIFAR-10-C/100-C files; and the
``robustness`` post-pass (loss, accuracy and gap under distortion of trained runs).

One call corrupts a batch (float (N, C, H, W) in [0, 1], grey or RGB, any device)::

    from qgen.robustness import corrupt, corruption_names
    y = corrupt(x, "fog", severity=3, seed=0)

Every corruption is a pure function ``f(images, severity, generator)`` in the registry
:data:`CORRUPTIONS`. Modules: ``constants`` (names, groups, severity constants; no torch),
``corruptions`` (the registry), ``filters``, ``jpeg``, ``liquid`` and ``textures`` (the
batched operations they are built from), ``settings`` (RobustnessSpec; no torch),
``loaders`` (released -C files, ImageNet-C folders), ``compute`` (one model on one test
set), ``postpass`` (``robustness.json``), ``report`` (the report section and the claim; no
torch). docs/robustness.md describes the algorithms, the substitutes and the columns.

Importing this package imports no torch: the torch parts load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from qgen.robustness.constants import (
    BENCHMARK,
    CIFAR,
    EXTRA,
    GROUPS,
    NAMES,
    SEVERITIES,
    check_name,
    check_severity,
    params,
    zoom_factors,
)
from qgen.robustness.settings import PRESETS, SOURCES, RobustnessSpec, resolve_corruptions

#: names defined in the torch-using modules, loaded on first access
_LAZY = {
    "CORRUPTIONS": "qgen.robustness.corruptions",
    "CHUNK": "qgen.robustness.corruptions",
    "corrupt": "qgen.robustness.corruptions",
    "corruption_names": "qgen.robustness.corruptions",
    "register_corruption": "qgen.robustness.corruptions",
    "ReleasedC": "qgen.robustness.loaders",
    "find_released": "qgen.robustness.loaders",
    "imagenet_c_files": "qgen.robustness.loaders",
    "read_images": "qgen.robustness.loaders",
    "EvalSet": "qgen.robustness.compute",
    "compute_robustness": "qgen.robustness.compute",
    "eval_set": "qgen.robustness.compute",
    "ROBUSTNESS": "qgen.robustness.postpass",
    "read_robustness": "qgen.robustness.postpass",
    "robustness_run": "qgen.robustness.postpass",
    "robustness_runs": "qgen.robustness.postpass",
    "settings_from_dict": "qgen.robustness.postpass",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qgen.robustness' has no attribute {name!r}")


__all__ = [
    "BENCHMARK", "CIFAR", "EXTRA", "GROUPS", "NAMES", "PRESETS", "SEVERITIES", "SOURCES",
    "RobustnessSpec", "check_name", "check_severity", "params", "resolve_corruptions",
    "zoom_factors", *_LAZY,
]
