"""Measures of stored runs: ``<run_dir>/measures.json``, computed once and resumable.

:func:`measure_run` rebuilds a run's model and its initial weights from the run directory,
loads the run's own training split (same DataSpec, so the same subset), computes the asked
measures and writes ``measures.json`` atomically: the MeasureSpec, the values, every setting
and the search traces. Asking again with the same settings computes only the measures not
yet stored; other settings are refused unless ``force`` (one settings record per run, so
that a results table never mixes settings silently).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from qgen.config import DataSpec
from qgen.data import Splits, load_data
from qgen.errors import QgenError
from qgen.io import atomic_write_json, load_tensors, read_json
from qgen.measures.compute import compute_measures
from qgen.measures.registry import resolve_names
from qgen.measures.settings import MeasureSpec
from qgen.train.run import (
    INIT_FILE,
    is_complete,
    load_result,
    load_run_model,
    load_spec,
    versions,
)

MEASURES_FILE = "measures.json"


def _settings_key(spec: MeasureSpec) -> dict[str, Any]:
    """The MeasureSpec without its list of names: what must match to merge records."""
    d = spec.to_dict()
    d.pop("names", None)
    return d


def read_measures(run_dir: str | Path) -> dict[str, Any] | None:
    """The stored measures record of a run, or None."""
    path = Path(run_dir) / MEASURES_FILE
    return read_json(path) if path.is_file() else None


def measure_run(
    run_dir: str | Path,
    spec: MeasureSpec | None = None,
    *,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    force: bool = False,
    splits: Splits | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Compute ``spec``'s measures of the run in ``run_dir`` and store them; return the record.

    Diverged runs (non-finite weights) are not measured: a QgenError says so. When every
    asked measure is already stored, nothing is computed and the stored record comes back
    with ``"reused": True``.
    """
    run_dir = Path(run_dir)
    spec = spec or MeasureSpec()
    if not is_complete(run_dir):
        raise QgenError(f"{run_dir}: not a complete run directory (needs spec.json, "
                        "result.json, model.safetensors and init.safetensors)")
    result = load_result(run_dir)
    if result.get("status") == "diverged":
        raise QgenError(f"{run_dir}: the run diverged; its measures are undefined")
    wanted = resolve_names(spec.names)
    old = read_measures(run_dir)
    if old is not None and not force:
        if old.get("settings_key") != _settings_key(spec):
            raise QgenError(f"{run_dir}: already measured with other settings "
                            f"(preset {old.get('measure_spec', {}).get('preset_name')!r}); "
                            "use --force to replace them")
        wanted = [n for n in wanted if n not in old.get("values", {})]
        if not wanted:
            return {**old, "reused": True}  # the flag is for callers, never stored
    run_spec = load_spec(run_dir)
    if splits is None:
        splits = load_data(run_spec.data, data_dir)
    model = load_run_model(run_dir, info=splits.info, device=device)
    w0 = load_tensors(run_dir / INIT_FILE)
    t0 = time.perf_counter()
    res = compute_measures(model, w0, splits.train_x, splits.train_y, spec, names=wanted,
                           device=device, progress=progress)
    record: dict[str, Any] = res.to_dict()
    if old is not None and not force:
        record["values"] = {**old.get("values", {}), **record["values"]}
        merged = dict(old.get("diagnostics", {}))
        merged.update(record.get("diagnostics", {}))
        record["diagnostics"] = merged
    record.update({
        "run_id": run_dir.name,
        "measure_spec": spec.to_dict(),
        "settings_key": _settings_key(spec),
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
        "device": device,
    })
    atomic_write_json(run_dir / MEASURES_FILE, record)
    return record


def measure_runs(
    run_dirs: Iterable[str | Path],
    spec: MeasureSpec | None = None,
    *,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    force: bool = False,
    on_done: Callable[[Path, dict[str, Any] | None, str | None], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure several runs, loading each dataset once; skip diverged and incomplete runs.

    ``on_done(run_dir, record_or_None, skip_reason_or_None)`` reports each run.
    """
    cache: dict[DataSpec, Splits] = {}
    out: dict[str, dict[str, Any]] = {}
    for d in run_dirs:
        d = Path(d)
        if not is_complete(d):
            if on_done:
                on_done(d, None, "not a complete run")
            continue
        if load_result(d).get("status") == "diverged":
            if on_done:
                on_done(d, None, "diverged")
            continue
        data_spec = load_spec(d).data
        if data_spec not in cache:
            cache[data_spec] = load_data(data_spec, data_dir)
        rec = measure_run(d, spec, data_dir=data_dir, device=device, force=force,
                          splits=cache[data_spec])
        out[d.name] = rec
        if on_done:
            on_done(d, rec, None)
    return out
