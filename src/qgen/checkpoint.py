"""Checkpoints: flat name → tensor mappings in safetensors files, written atomically.

safetensors holds raw tensors and string metadata only, so loading a checkpoint never runs
pickled code. A missing, truncated or garbage file is a :class:`~qgen.errors.QgenError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from qgen.errors import QgenError
from qgen.io import atomic_write


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save a flat name → tensor mapping as safetensors, atomically."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = dict(metadata) if metadata else None
    atomic_write(path, lambda tmp: save_file(clean, str(tmp), metadata=meta))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (no pickle); a corrupt or missing file is a QgenError."""
    path = Path(path)
    if not path.is_file():
        raise QgenError(f"{path}: checkpoint not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise QgenError(f"{path}: corrupt or unreadable safetensors checkpoint ({exc})") from exc


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file; a damaged header is a QgenError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise QgenError(f"{path}: corrupt or unreadable safetensors file ({exc})") from exc


def state_mismatch(expected: Mapping[str, torch.Tensor],
                   state: Mapping[str, torch.Tensor]) -> str | None:
    """How ``state`` differs from ``expected`` (a model's state dict) in names and shapes, as
    a short phrase naming the first tensor of each kind ("3 tensors missing (e.g. fc.weight);
    …"), or None when every tensor is there with its shape and nothing else is."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors not in the model (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)}, "
                     f"the model has {tuple(expected[k].shape)})")
    return "; ".join(parts) or None
