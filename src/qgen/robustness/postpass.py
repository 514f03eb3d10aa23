"""Robustness of stored runs, as the ``robustness`` post-pass: ``<run_dir>/robustness.json``.

:data:`ROBUSTNESS` supplies the post-pass contract of :mod:`qgen.store.postpass`: the record
holds the values (table columns ``robust.<name>``, listed in :mod:`qgen.robustness.compute`),
where the corrupted images came from (``source``: generated or released, and the folder),
the :class:`RobustnessSpec` and the time spent; its settings key is the spec without
``released_dir`` (a path changes no number) and without the corruptions and severities, so
other settings (seed, test examples, source) are refused unless ``force``. A record answers
when it was made for exactly the corruptions and severities asked; otherwise it is made
again for them, reusing every (corruption, severity) cell it already holds (so `qgen demo
--full` after `qgen demo` evaluates only the 13 other corruptions, and the aggregates are
always over the set asked). A record made from generated corruptions is made again when
released files are asked for (a ``released_dir``, or ``source: released``). Extra columns:
``meta.robustness_settings`` (the key as JSON) and ``meta.robustness_source``.

Corrupted test sets are made once per dataset and test subset and kept in the call's
``Resources.cache``, so a study pays for them once, not once per run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qgen.errors import QgenError
from qgen.robustness.compute import compute_robustness, eval_set, resolve_source
from qgen.robustness.settings import RobustnessSpec
from qgen.store import PostPass, Resources, RunDir, register_postpass, run_postpass
from qgen.store import run_postpass_many as _run_many
from qgen.train import load_run_model, versions

#: what a record may hold more or less of without its settings counting as other settings
_SETS = ("corruptions", "severities")


def _settings_key(spec: RobustnessSpec) -> dict[str, Any]:
    key = spec.settings_key()
    for name in _SETS:
        key.pop(name)
    return key


def _stored_key(key: dict[str, Any]) -> dict[str, Any]:
    for name in _SETS:  # records written before the sets left the key
        key.pop(name, None)
    return key


def _is_done(record: dict[str, Any], spec: RobustnessSpec) -> bool:
    """A stored record answers when it covers exactly the asked corruptions and severities,
    unless released files are asked for (``source: released`` or a ``released_dir``) and it
    was made from generated corruptions."""
    if (list(record.get("corruptions") or []) != list(spec.corruptions)
            or list(record.get("severities") or []) != list(spec.severities)):
        return False
    wants_released = spec.source == "released" or spec.released_dir is not None
    return not wants_released or record.get("source") == "released"


def _known_cells(previous: dict[str, Any] | None, source: str
                 ) -> dict[tuple[str, int], tuple[float, float]]:
    """The (loss, accuracy) of every (corruption, severity) a previous record holds, when it
    was made from the same source (its other settings match: the key says so)."""
    if not previous or previous.get("source") != source:
        return {}
    values = previous.get("values") or {}
    out = {}
    for c in previous.get("corruptions") or []:
        for s in previous.get("severities") or []:
            loss, acc = values.get(f"{c}.s{s}.loss"), values.get(f"{c}.s{s}.acc")
            if isinstance(loss, (int, float)) and isinstance(acc, (int, float)):
                out[(c, int(s))] = (float(loss), float(acc))
    return out


def _compute(run: RunDir, spec: RobustnessSpec, previous: dict[str, Any] | None,
             resources: Resources) -> dict[str, Any]:
    result = run.result
    train_loss = (result.get("metrics") or {}).get("train_loss")
    if not isinstance(train_loss, (int, float)):
        raise QgenError(f"{run.path}: result.json has no training loss; the gap under "
                        "distortion needs it")
    data_dir = Path(resources.data_dir) if resources.data_dir else None
    es = eval_set(run.spec.data, result["data"], spec, data_dir, resources.cache)
    source, folder = resolve_source(spec, run.spec.data.name, data_dir)
    model = load_run_model(run, device=resources.device)
    record = compute_robustness(model, es, float(train_loss), spec, source=source,
                                folder=folder, cache=resources.cache,
                                device=resources.device,
                                known=_known_cells(previous, source))
    record["robustness_spec"] = spec.to_dict()
    record["quant_label"] = run.spec.quant.label
    record["versions"] = versions()
    return record


def _columns(record: dict[str, Any]) -> dict[str, Any]:
    return {"meta.robustness_settings": json.dumps(record.get("settings_key"), sort_keys=True),
            "meta.robustness_source": record.get("source")}


ROBUSTNESS = register_postpass(PostPass(name="robustness", prefix="robust",
                                        settings_key=_settings_key, compute=_compute,
                                        is_done=_is_done, columns=_columns,
                                        stored_key=_stored_key))


def settings_from_dict(data: Mapping[str, Any] | None) -> RobustnessSpec:
    """A RobustnessSpec from a mapping (a study's ``robustness`` section, or ``--set``
    pairs); unknown fields, corruptions and severities are one-line QgenErrors."""
    return RobustnessSpec.from_dict(data)


def read_robustness(run_dir: str | Path) -> dict[str, Any] | None:
    """The stored robustness record of a run, or None."""
    return RunDir(run_dir).record("robustness")


def robustness_run(run_dir: str | Path | RunDir, spec: RobustnessSpec | None = None, *,
                   data_dir: str | Path | None = None, device: str = "cpu",
                   force: bool = False, resources: Resources | None = None
                   ) -> dict[str, Any]:
    """Evaluate one complete run on corrupted test data and store the record; return it.

    A run that is not complete or that diverged is a QgenError; a record with the same
    settings comes back unchanged with ``"reused": True``; other settings need ``force``.
    """
    resources = resources or Resources(data_dir=Path(data_dir) if data_dir else None,
                                       device=device)
    return run_postpass(ROBUSTNESS, run_dir, spec or RobustnessSpec(), force=force,
                        resources=resources)


def robustness_runs(run_dirs: Iterable[str | Path | RunDir], spec: RobustnessSpec | None = None,
                    *, data_dir: str | Path | None = None, device: str = "cpu",
                    force: bool = False, strict: bool = False, on_done: Any = None,
                    workers: int = 1, threads: int | None = None,
                    resources: Resources | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate several runs, making each corrupted test set once (see
    :func:`qgen.store.run_postpass_many`: inside a store incomplete and diverged runs are
    skipped and reported; with ``strict`` they are errors)."""
    resources = resources or Resources(data_dir=Path(data_dir) if data_dir else None,
                                       device=device)
    return _run_many(ROBUSTNESS, run_dirs, spec or RobustnessSpec(), force=force,
                     resources=resources, on_done=on_done, strict=strict, workers=workers,
                     threads=threads)
