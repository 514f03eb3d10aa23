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
