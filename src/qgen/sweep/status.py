"""What a sweep records in its store and how far it got: ``sweep.json`` and ``qgen sweep status``.

``<store>/sweep.json`` holds the last sweep started in the store: its content, planned run
ids, start time, executor and workers; :func:`store_status` counts done / failed / diverged
/ pending runs against it and estimates the time left while a sweep holds the store's lock.
The run directories themselves belong to :mod:`qgen.store`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgen.errors import QgenError
from qgen.io import atomic_write_json, read_json
from qgen.store import lock_holder, run_dirs

MANIFEST_FILE = "sweep.json"


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


def store_status(out_dir: str | Path) -> StoreStatus:
    """Done / failed / diverged / pending counts of a store, and an ETA while a sweep runs.

    The ETA divides the runs left by the rate at which this sweep has finished runs so far
    (finish times since ``started_at``); before its first run finishes it uses the mean
    ``wall_time_s`` of completed runs and the number of workers in sweep.json.
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    planned_ids = list(manifest.get("run_ids", [])) if manifest else None
    st = StoreStatus(out_dir=out, planned=len(planned_ids) if planned_ids is not None else None,
                     manifest=manifest)
    planned_set = set(planned_ids or [])
    seen: set[str] = set()
    walls: list[float] = []
    started = float(manifest.get("started_at_unix", 0.0)) if manifest else 0.0
    finished_since_start = 0
    for run in run_dirs(out):
        state = run.state
        if state not in ("complete", "failed"):
            continue
        if planned_ids is not None and run.run_id not in planned_set:
            st.extra += 1
            continue
        seen.add(run.run_id)
        if state == "failed":
            st.failed += 1
            st.failed_ids.append(run.run_id)
            continue
        st.done += 1
        status = run.result.get("status")
        if status in ("converged", "max_epochs", "diverged"):
            setattr(st, status, getattr(st, status) + 1)
        wall = run.result.get("wall_time_s")
        if isinstance(wall, (int, float)):
            walls.append(float(wall))
        if started and run.file("result.json").stat().st_mtime >= started:
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
