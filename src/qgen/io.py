"""Atomic file and directory writes, JSON helpers and safetensors checkpoints.

A crash never leaves a file that looks complete but is not: every write goes to a temporary
file in the same directory, is fsynced, then renamed over the target with ``os.replace``.
Checkpoints are safetensors, so loading them never runs pickled code.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from qgen.errors import QgenError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: str | Path, directory: bool = False) -> None:
    """Give a temp file/dir made by ``tempfile`` (0600/0700) the usual umask-based mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__} to JSON")


def _clean_floats(obj: Any) -> Any:
    """Replace non-finite floats by strings so that the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Mapping):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> str:
    """Pretty JSON with sorted keys; non-finite floats become the strings 'nan'/'inf'."""
    return json.dumps(_clean_floats(obj), indent=2, sort_keys=True, default=_json_default) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    atomic_write_bytes(path, dumps_json(obj).encode())


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning a corrupt one into a :class:`QgenError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise QgenError(f"{path}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QgenError(f"{path}: not valid JSON ({exc})") from exc


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> None:
    """Save a flat name → tensor mapping as safetensors, atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(clean, tmp, metadata=dict(metadata) if metadata else None)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (no pickle); a corrupt or missing file is a QgenError."""
    path = Path(path)
    if not path.is_file():
        raise QgenError(f"{path}: checkpoint not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise QgenError(f"{path}: corrupt or unreadable safetensors checkpoint ({exc})") from exc


def check_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".qgen-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise QgenError(f"output directory {path} is not writable ({exc.strerror}); "
                        "choose a directory you can write to with --out") from exc
    return path


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely (no object construction); problems become a QgenError."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise QgenError(f"{path}: file not found") from None
    except OSError as exc:
        raise QgenError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise QgenError(f"{path}: not valid YAML ({first})") from None
