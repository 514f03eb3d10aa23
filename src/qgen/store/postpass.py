"""Post-passes: named stages that take a complete run and write ``<name>.json`` beside it.

Measures, robustness and theory are post-passes. Each supplies only what is its own (a
:class:`PostPass`): its name, the column prefix of its values in the results table, the
settings key that must match for two records to be merged, when a stored record already
answers a request, and the compute function. :func:`run_postpass` does the rest for all of
them: it refuses a run that is not complete or that diverged, reuses a record made with the
same settings, refuses to mix settings unless ``force``, times the work, records versions
and writes the record atomically with its table columns precomputed, so that
:func:`qgen.results.collect` reads every post-pass without knowing it (and without torch).

A record holds at least::

    {"postpass": name, "run_id": ..., "settings_key": {...}, "values": {name: number},
     "columns": {"<prefix>.<name>": value, "meta.<...>": value}, "wall_time_s": ...,
     "versions": {...}}

This module imports no torch; the compute functions do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgen.errors import QgenError
from qgen.store.rundir import RunDir, light_versions, now_iso


#: what a compute function gets besides the run and the settings: where data is, the device,
#: and a cache that lives across the runs of one call (datasets loaded once)
@dataclass
class Resources:
    """Shared by every run of one post-pass call."""

    data_dir: Path | None = None
    device: str = "cpu"
    cache: dict[Any, Any] = field(default_factory=dict)


Compute = Callable[[RunDir, Any, "dict[str, Any] | None", Resources], dict[str, Any]]


@dataclass(frozen=True)
class PostPass:
    """One post-pass.

    - ``name``: the record file is ``<name>.json``;
    - ``prefix``: its values become ``<prefix>.<value name>`` columns;
    - ``settings_key(settings) -> dict``: what must be equal for a stored record to count;
    - ``is_done(record, settings) -> bool``: a record with the same key already answers
      (e.g. it holds every measure asked for);
    - ``compute(run, settings, previous, resources) -> dict``: the record's own content, at
      least ``values``; ``previous`` is the stored record with the same settings key (for
      passes that add to it), else None;
    - ``columns(record) -> dict``: extra table columns (``meta.*``) besides the values;
    - ``stored_key(key) -> dict``: a stored record's settings key as this version keys it
      (for a pass whose key dropped a field that no longer needs to match); identity by
      default.
    """

    name: str
    prefix: str
    settings_key: Callable[[Any], dict[str, Any]]
    compute: Compute
    is_done: Callable[[dict[str, Any], Any], bool] = lambda record, settings: True
    columns: Callable[[dict[str, Any]], dict[str, Any]] = lambda record: {}
    stored_key: Callable[[dict[str, Any]], dict[str, Any]] = lambda key: key

    def table_columns(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record's columns for the results table."""
        cols: dict[str, Any] = {f"{self.prefix}.{k}": v
                                for k, v in (record.get("values") or {}).items()}
        cols.update(self.columns(record))
        return cols


_REGISTRY: dict[str, PostPass] = {}


def register_postpass(postpass: PostPass) -> PostPass:
    """Make a post-pass known by name (the module that defines it calls this)."""
    if postpass.name in _REGISTRY and _REGISTRY[postpass.name] is not postpass:
        raise ValueError(f"post-pass {postpass.name!r} is registered twice")
    _REGISTRY[postpass.name] = postpass
    return postpass


def get_postpass(name: str) -> PostPass:
    """A registered post-pass (QgenError listing the known ones)."""
    if name not in _REGISTRY:
        raise QgenError(f"unknown post-pass {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def check_postpass_input(postpass: PostPass, run: RunDir) -> RunDir:
    """What every post-pass needs of a run, checked before any work: complete, with a
    readable spec, and not diverged; a QgenError saying which is not so."""
    run.require_complete()
    _ = run.spec  # read and validated here, so that a bad spec.json fails before any work
    if run.result.get("status") == "diverged":
        raise QgenError(f"{run.path}: the run diverged; its {postpass.name} are undefined")
    return run


def _skip_reason(run: RunDir, exc: QgenError) -> str:
    """The short reason a run of a store is skipped by a post-pass."""
    if not run.is_complete:
        return "not a complete run"
    if run.result.get("status") == "diverged":
        return "diverged"
    return str(exc)


def run_postpass(postpass: PostPass, run: RunDir | str | Path, settings: Any, *,
                 force: bool = False, resources: Resources | None = None) -> dict[str, Any]:
    """Run ``postpass`` on one complete run and store its record; return the record.

    A run that is not complete, or that diverged, is a QgenError. A stored record with other
    settings is refused unless ``force`` (one settings record per run, so a results table
    never mixes settings silently); one with the same settings that already answers comes
    back with ``"reused": True`` (a flag for callers, never stored).
    """
    run = check_postpass_input(postpass, run if isinstance(run, RunDir) else RunDir(run))
    key = postpass.settings_key(settings)
    old = _stored_record(postpass, run, key, force)
    previous = None
    if old is not None:
        if postpass.is_done(old, settings):
            return {**old, "reused": True}
        previous = old
    t0 = time.perf_counter()
    record = postpass.compute(run, settings, previous, resources or Resources())
    record.update({
        "postpass": postpass.name,
        "run_id": run.run_id,
        "settings_key": key,
        "wall_time_s": time.perf_counter() - t0,
        "time": now_iso(),
        "versions": {**light_versions(), **(record.get("versions") or {})},
        "device": (resources or Resources()).device,
    })
    record["columns"] = postpass.table_columns(record)
    run.write_record(postpass.name, record)
    return record


def _stored_record(postpass: PostPass, run: RunDir, key: dict[str, Any],
                   force: bool) -> dict[str, Any] | None:
    """The run's stored record when it may be reused or added to (None with ``force``); a
    QgenError when it was made with other settings."""
    old = run.record(postpass.name)
    if old is None or force:
        return None
    stored = old.get("settings_key")
    if isinstance(stored, dict):
        stored = postpass.stored_key(dict(stored))
    if stored != key:
        raise QgenError(f"{run.path}: {postpass.name} already computed with other "
                        f"settings ({_difference(stored, key)}); use "
                        "--force to replace them")
    return old


def _difference(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "an unreadable settings key"
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            return f"{k}: stored {old.get(k)!r}, asked {new.get(k)!r}"
    return "same keys"


OnDone = Callable[[RunDir, "dict[str, Any] | None", "str | None"], None]


def run_postpass_many(postpass: PostPass, runs: Iterable[RunDir | str | Path], settings: Any,
                      *, force: bool = False, resources: Resources | None = None,
                      on_done: OnDone | None = None, strict: bool = False, workers: int = 1,
                      threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Run ``postpass`` on several runs, sharing ``resources`` (data loaded once).

    Inside a store (``strict=False``) runs that are not complete or that diverged are
    skipped and reported through ``on_done(run, None, reason)``; with ``strict`` (runs the
    user named one by one) they are errors, raised before anything is computed, as is a
    stored record made with other settings (unless ``force``). Every other run is reported
    with ``on_done(run, record, None)``, in finishing order. Returns the records by run id.

    ``workers`` > 1 computes runs in that many worker processes (spawned; each loads the
    datasets it needs once and sets ``threads`` torch threads, default 1), so that a
    two-core machine measures two models at once; records are the same as in one process
    with the same thread count.
    """
    resources = resources or Resources()
    items = [r if isinstance(r, RunDir) else RunDir(r) for r in runs]
    todo: list[RunDir] = []
    skipped: list[tuple[RunDir, str]] = []
    for run in items:
        try:
            check_postpass_input(postpass, run)
        except QgenError as exc:
            if strict:
                raise
            skipped.append((run, _skip_reason(run, exc)))
            continue
        todo.append(run)
    key = postpass.settings_key(settings)
    for run in todo:  # a record with other settings is refused before any run is computed
        _stored_record(postpass, run, key, force)
    for run, reason in skipped:
        if on_done is not None:
            on_done(run, None, reason)
    out: dict[str, dict[str, Any]] = {}

    def finish(run: RunDir, record: dict[str, Any]) -> None:
        out[run.run_id] = record
        if on_done is not None:
            on_done(run, record, None)

    if workers <= 1 or len(todo) <= 1:
        if threads:
            import torch

            torch.set_num_threads(threads)
        for run in todo:
            finish(run, run_postpass(postpass, run, settings, force=force,
                                     resources=resources))
        return out
    _run_in_workers(postpass, todo, settings, force, resources, workers, threads or 1, finish)
    return out


def _worker_init(threads: int) -> None:
    import os

    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


_WORKER_RESOURCES: dict[tuple[Any, ...], Resources] = {}


def _worker_run(module: str, name: str, path: str, settings: Any, force: bool,
                data_dir: str | None, device: str) -> dict[str, Any]:
    import importlib

    importlib.import_module(module)  # registers the post-pass in this process
    key = (data_dir, device)
    resources = _WORKER_RESOURCES.setdefault(
        key, Resources(data_dir=Path(data_dir) if data_dir else None, device=device))
    return run_postpass(get_postpass(name), RunDir(path), settings, force=force,
                        resources=resources)


def _run_in_workers(postpass: PostPass, runs: list[RunDir], settings: Any, force: bool,
                    resources: Resources, workers: int, threads: int,
                    finish: Callable[[RunDir, dict[str, Any]], None]) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    module = postpass.compute.__module__
    data_dir = str(resources.data_dir) if resources.data_dir else None
    with ProcessPoolExecutor(max_workers=min(workers, len(runs)),
                             mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_worker_run, module, postpass.name, str(run.path), settings,
                               force, data_dir, resources.device): run for run in runs}
        try:
            for fut in as_completed(futures):
                finish(futures[fut], fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
