"""Measures of stored runs, as the ``measures`` post-pass: ``<run_dir>/measures.json``.

:data:`MEASURES` supplies the post-pass contract of :mod:`qgen.store.postpass`: the record
holds the MeasureSpec, the values, every setting and the search traces; its settings key is
the MeasureSpec without the list of names, so asking again with the same settings computes
only the measures not yet stored, and other settings are refused unless ``force``.
The table columns are ``measure.<name>``, ``meta.measure_preset``, ``meta.measure_settings``
(the settings key as JSON) and ``meta.saturated.<family>`` (a search that ended at a bound
of its interval).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from qgen.measures.compute import compute_measures
from qgen.measures.registry import resolve_names
from qgen.measures.settings import MeasureSpec
from qgen.store import PostPass, Resources, RunDir, register_postpass, run_postpass
from qgen.store import run_postpass_many as _run_many
from qgen.train import load_run_data, load_run_model, versions

MEASURES_FILE = "measures.json"
Progress = Callable[[str, int, int], None]


#: settings added after records were first stored, with the value every older record was
#: computed with: keyed only when they differ from it, so older records still match
_LATER_FIELDS = {"bound_params": "perturbed", "size_transform": "none"}


def _settings_key(spec: MeasureSpec) -> dict[str, Any]:
    """The MeasureSpec without its list of names: what must match to merge records."""
    d = spec.to_dict()
    d.pop("names", None)
    for name, old_value in _LATER_FIELDS.items():
        if d.get(name) == old_value:
            d.pop(name)
    return d


def _is_done(record: dict[str, Any], spec: MeasureSpec) -> bool:
    return all(n in (record.get("values") or {}) for n in resolve_names(spec.names))


def _compute(run: RunDir, spec: MeasureSpec, previous: dict[str, Any] | None,
             resources: Resources) -> dict[str, Any]:
    wanted = resolve_names(spec.names)
    if previous is not None:
        wanted = [n for n in wanted if n not in previous.get("values", {})]
    splits = load_run_data(run, resources)
    model = load_run_model(run, info=splits.info, device=resources.device)
    res = compute_measures(model, run.weights("init"), splits.train, None, spec,
                           names=wanted, device=resources.device,
                           progress=resources.cache.get("measure_progress"))
    record: dict[str, Any] = res.to_dict()
    if previous is not None:
        record["values"] = {**previous.get("values", {}), **record["values"]}
        record["diagnostics"] = {**previous.get("diagnostics", {}),
                                 **record.get("diagnostics", {})}
    record["measure_spec"] = spec.to_dict()
    record["versions"] = versions()
    return record


def _columns(record: dict[str, Any]) -> dict[str, Any]:
    cols: dict[str, Any] = {
        "meta.measure_preset": (record.get("measure_spec") or {}).get("preset_name"),
        # every setting, so a report can say exactly how the measures were computed
        "meta.measure_settings": json.dumps(record.get("settings_key"), sort_keys=True)}
    for key, diag in (record.get("diagnostics") or {}).items():
        if key.startswith("search.") and isinstance(diag, dict):
            cols[f"meta.saturated.{key.removeprefix('search.')}"] = bool(diag.get("saturated"))
    return cols


MEASURES = register_postpass(PostPass(name="measures", prefix="measure",
                                      settings_key=_settings_key, compute=_compute,
                                      is_done=_is_done, columns=_columns))


def settings_from_dict(data: dict[str, Any]) -> MeasureSpec:
    """A MeasureSpec from a mapping (a ``preset`` key first, then fields; ``names`` are
    checked against the catalog)."""
    spec = MeasureSpec.from_dict(data)
    resolve_names(spec.names)
    return spec


def read_measures(run_dir: str | Path) -> dict[str, Any] | None:
    """The stored measures record of a run, or None."""
    return RunDir(run_dir).record("measures")


def measure_run(run_dir: str | Path | RunDir, spec: MeasureSpec | None = None, *,
                data_dir: str | Path | None = None, device: str = "cpu", force: bool = False,
                resources: Resources | None = None) -> dict[str, Any]:
    """Compute ``spec``'s measures of one complete run and store them; return the record.

    A run that is not complete or that diverged is a QgenError. When every asked measure is
    already stored with the same settings, nothing is computed and the stored record comes
    back with ``"reused": True``.
    """
    resources = resources or Resources(data_dir=Path(data_dir) if data_dir else None,
                                       device=device)
    return run_postpass(MEASURES, run_dir, spec or MeasureSpec(), force=force,
                        resources=resources)


def measure_runs(run_dirs: Iterable[str | Path | RunDir], spec: MeasureSpec | None = None, *,
                 data_dir: str | Path | None = None, device: str = "cpu", force: bool = False,
                 strict: bool = False, on_done: Any = None) -> dict[str, dict[str, Any]]:
    """Measure several runs, loading each dataset once (see
    :func:`qgen.store.run_postpass_many`: inside a store incomplete and diverged runs are
    skipped and reported; with ``strict`` they are errors)."""
    resources = Resources(data_dir=Path(data_dir) if data_dir else None, device=device)
    return _run_many(MEASURES, run_dirs, spec or MeasureSpec(), force=force,
                     resources=resources, on_done=on_done, strict=strict)
