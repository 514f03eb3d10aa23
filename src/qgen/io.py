"""Atomic file writes, JSON and YAML: the file handling every layer shares, without torch.

A crash never leaves a file that looks complete but is not: :func:`atomic_write` has the
caller write a temporary file in the target's directory, fsyncs it, renames it over the
target with ``os.replace`` and fsyncs the directory. Every writer in qgen (JSON records,
safetensors checkpoints in :mod:`qgen.checkpoint`, results tables, reports) goes through it.
This module imports no torch, so reading a run store or a results table stays light.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qgen.errors import QgenError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: str | Path, directory: bool = False) -> None:
    """Give a temp file/dir made by ``tempfile`` (0600/0700) the usual umask-based mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def fsync_dir(path: str | Path) -> None:
    """fsync a directory (so a rename in it is durable); best effort."""
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


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create ``path`` atomically: ``write(tmp)`` writes a temporary file beside it, which is
    fsynced, given the usual mode and renamed over ``path``; on any error it is removed and
    ``path`` is left as it was. Returns ``path``."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".",
                                prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent if str(path.parent) else ".")
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # tensors and numpy arrays
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
    """Read a JSON file, turning a missing or corrupt one into a :class:`QgenError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise QgenError(f"{path}: file not found") from exc
    except IsADirectoryError as exc:
        raise QgenError(f"{path}: is a directory, not a JSON file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QgenError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise QgenError(f"{path}: cannot read ({exc.strerror})") from exc


def check_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    path = Path(path)
    check_can_create_dir(path)  # names what is wrong (a file in the way, no permission)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".qgen-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise QgenError(f"output directory {path} is not writable ({exc.strerror}); "
                        "choose a directory you can write to with --out") from exc
    return path


def check_can_create_dir(path: str | Path) -> Path:
    """Check, without creating anything, that ``path`` is a writable directory or can be made
    one (its nearest existing ancestor is a writable directory); a QgenError otherwise."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise QgenError(f"output directory {path} exists and is not a directory; "
                            "choose another --out")
        probe = path
    else:
        probe = path.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise QgenError(f"output directory {path} is not writable ({probe} is a file, "
                            "not a directory); choose a directory you can write to with --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise QgenError(f"output directory {path} is not writable (no write permission in "
                        f"{probe}); choose a directory you can write to with --out")
    return path


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely (no object construction); problems become a QgenError."""
    import yaml

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise QgenError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise QgenError(f"{path}: is a directory, not a YAML file") from None
    except OSError as exc:
        raise QgenError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise QgenError(f"{path}: not a YAML text file (invalid UTF-8 at byte {exc.start})"
                        ) from None
    if "\x00" in text:
        raise QgenError(f"{path}: not a YAML text file (it holds NUL bytes)")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise QgenError(f"{path}: not valid YAML ({first})") from None
