"""The run store a sweep writes: ``<out>/<run_id>/`` directories, error records, the lock and
``sweep.json``.

Layout of a store::

    <out>/.qgen-sweep.lock        exclusive flock while a sweep writes here (holds its pid)
    <out>/sweep.json              the last sweep started here: its content, planned run ids,
                                  start time, executor, workers (for `status` and its ETA)
    <out>/<run_id>/               a complete run (spec.json, result.json, weights) published by
                                  one rename, or an incomplete one holding only error.json
    <out>/.<run_id>.tmp-*         a run being built; left behind only by a killed process and
                                  removed when the next sweep takes the lock

Every file is written atomically (:mod:`qgen.io`), so a crash never leaves a file that looks
complete but is not; a run directory is never half written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgen.config import RunSpec
from qgen.errors import QgenError
from qgen.io import atomic_write_json, read_json

LOCK_FILE = ".qgen-sweep.lock"
MANIFEST_FILE = "sweep.json"
ERROR_FILE = "error.json"
RUN_FILES = ("spec.json", "result.json", "model.safetensors", "init.safetensors")


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def light_versions() -> dict[str, str]:
    """Versions of qgen, Python and (when already imported) torch, without importing torch."""
    import qgen

    out = {"qgen": qgen.__version__, "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = str(torch.__version__)
    return out


def is_complete(run_dir: Path) -> bool:
    """True when ``run_dir`` holds every run file and a readable result.

    Same rule as :func:`qgen.train.run.is_complete`, repeated here so that reading a store
    does not import torch.
    """
    if not all((run_dir / f).is_file() for f in RUN_FILES):
        return False
    try:
        result = read_json(run_dir / "result.json")
    except QgenError:
        return False
    return isinstance(result, dict) and "status" in result


# ---------------------------------------------------------------------------------------------
# the lock


@contextlib.contextmanager
def store_lock(out_dir: Path, wait_s: float = 0.5) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``<out>/.qgen-sweep.lock`` for the duration.

    ``wait_s`` rides out a momentary probe by ``qgen sweep status``; a lock still held after
    that belongs to another sweep and is a QgenError naming its pid. The kernel drops the lock
    when the holding process dies, however it dies, so there are no stale locks.
    """
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    raise QgenError(f"{out_dir}: another sweep is writing to this store "
                                    f"(lock {path} held by {holder}); wait for it to finish "
                                    "or choose another --out") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def lock_holder(out_dir: Path) -> str | None:
    """Who holds the store's lock ('pid N on host'), or None when no sweep is writing."""
    import fcntl

    path = out_dir / LOCK_FILE
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def remove_stale(out_dir: Path) -> list[str]:
    """Remove what killed processes leave behind: ``.<id>.tmp-*`` run directories, ``.<id>.old-*``
    replaced runs and ``.<file>.*.tmp`` partial files. Call only while holding the lock."""
    removed = []
    for p in out_dir.iterdir():
        name = p.name
        if not name.startswith(".") or name == LOCK_FILE:
            continue
        if p.is_dir() and (".tmp-" in name or ".old-" in name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(name)
        elif p.is_file() and name.endswith(".tmp"):
            p.unlink(missing_ok=True)
            removed.append(name)
    return removed


# ---------------------------------------------------------------------------------------------
# publishing runs and errors


def publish_run_files(out_dir: Path, run_id: str, files: dict[str, bytes]) -> None:
    """Write a run's files (name -> bytes, e.g. sent back by a Ray worker) as ``<out>/<run_id>``.

    Built in a hidden temporary directory and renamed into place, like
    :func:`qgen.train.run.execute_run` does; an existing complete run is kept, an incomplete
    one (an error record) is replaced.
    """
    from qgen.io import atomic_write_bytes

    missing = [f for f in RUN_FILES if f not in files]
    if missing:
        raise QgenError(f"run {run_id}: worker returned no {missing[0]}")
    final = out_dir / run_id
    if is_complete(final):
        return
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{run_id}.tmp-"))
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / Path(name).name, data)
        if final.exists():
            trash = out_dir / f".{run_id}.old-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_error(out_dir: Path, spec: RunSpec, error: dict[str, Any]) -> Path:
    """Record a failed run as ``<out>/<run_id>/error.json`` (the directory stays incomplete, so
    a later ``--retry-failed`` replaces it). ``error`` holds type, message, traceback."""
    final = out_dir / spec.run_id
    record = {
        "run_id": spec.run_id,
        "status": "failed",
        "spec": spec.to_dict(),
        "time": now_iso(),
        "host": socket.gethostname(),
        **error,
    }
    record.setdefault("versions", light_versions())
    if final.is_dir():
        if is_complete(final):  # a complete run wins over a late error report
            return final
        atomic_write_json(final / ERROR_FILE, record)
        return final
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{spec.run_id}.tmp-"))
    try:
        atomic_write_json(tmp / ERROR_FILE, record)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
        atomic_write_json(final / ERROR_FILE, record)  # lost a race with a publisher
    return final


def run_state(run_dir: Path) -> str:
    """'done' (complete), 'failed' (error record only), 'partial' (other) or 'missing'."""
    if not run_dir.is_dir():
        return "missing"
    if is_complete(run_dir):
        return "done"
    if (run_dir / ERROR_FILE).is_file():
        return "failed"
    return "partial"


# ---------------------------------------------------------------------------------------------
# sweep.json and status


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``<out>/sweep.json`` atomically."""
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """``<out>/sweep.json``, or None when no sweep was started here."""
    path = out_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise QgenError(f"{path}: not a sweep manifest")
    return data


@dataclass
class StoreStatus:
    """Counts for ``qgen sweep status``.

    ``planned`` is None when the store has no sweep.json. ``converged``/``max_epochs``/
    ``diverged`` split ``done``; ``extra`` counts runs in the store that the plan does not list.
    ``eta_s`` is set while a sweep holds the lock and has runs left.
    """

    out_dir: Path
    planned: int | None
    done: int = 0
    converged: int = 0
    max_epochs: int = 0
    diverged: int = 0
    failed: int = 0
    pending: int | None = None
    extra: int = 0
    running: str | None = None
    eta_s: float | None = None
    mean_run_s: float | None = None
    failed_ids: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None


def _run_dirs(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def store_status(out_dir: str | Path) -> StoreStatus:
    """Done / failed / diverged / pending counts of a store, and an ETA while a sweep runs.

    The ETA divides the runs left by the rate at which this sweep has finished runs so far
    (finish times since ``started_at``); before its first run finishes it uses the mean
    ``wall_time_s`` of completed runs and the number of workers in sweep.json.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise QgenError(f"{out}: no such run store")
    manifest = read_manifest(out)
    planned_ids = list(manifest.get("run_ids", [])) if manifest else None
    st = StoreStatus(out_dir=out, planned=len(planned_ids) if planned_ids is not None else None,
                     manifest=manifest)
    planned_set = set(planned_ids or [])
    seen: set[str] = set()
    walls: list[float] = []
    started = float(manifest.get("started_at_unix", 0.0)) if manifest else 0.0
    finished_since_start = 0
    for d in _run_dirs(out):
        state = run_state(d)
        if state not in ("done", "failed"):
            continue
        if planned_ids is not None and d.name not in planned_set:
            st.extra += 1
            continue
        seen.add(d.name)
        if state == "failed":
            st.failed += 1
            st.failed_ids.append(d.name)
            continue
        st.done += 1
        result = read_json(d / "result.json")
        status = result.get("status")
        if status in ("converged", "max_epochs", "diverged"):
            setattr(st, status, getattr(st, status) + 1)
        wall = result.get("wall_time_s")
        if isinstance(wall, (int, float)):
            walls.append(float(wall))
        if started and (d / "result.json").stat().st_mtime >= started:
            finished_since_start += 1
    if planned_ids is not None:
        st.pending = len(planned_set - seen)
    if walls:
        st.mean_run_s = sum(walls) / len(walls)
    st.running = lock_holder(out)
    if st.running and st.pending:
        workers = max(1, int((manifest or {}).get("workers", 1)))
        elapsed = time.time() - started if started else 0.0
        if finished_since_start and elapsed > 0:
            st.eta_s = st.pending * elapsed / finished_since_start
        elif st.mean_run_s is not None:
            st.eta_s = st.pending * st.mean_run_s / workers
    return st
