"""The theory of stored runs, as the ``theory`` post-pass: ``<run_dir>/theory.json``.

:data:`THEORY` supplies the post-pass contract of :mod:`qgen.store.postpass`: the record
holds the values (table columns ``theory.<name>``), the per-layer tables (``weights``,
``activations``, ``curvature``), the regularizer and bound details, what is undefined and
why, the time of each part and the :class:`TheorySpec`; its settings key is the whole
TheorySpec, so other settings are refused unless ``force``. Extra columns:
``meta.theory_settings`` (the key as JSON) and ``meta.theory_undefined`` (the parts left
out, e.g. for a full-precision run, and why).

Importing this module imports no torch (the computation does), so a study can check its
``study.theory`` section with :func:`settings_from_dict` cheaply.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qgen.store import PostPass, Resources, RunDir, register_postpass, run_postpass
from qgen.store import run_postpass_many as _run_many
from qgen.theory.settings import TheorySpec


def _settings_key(spec: TheorySpec) -> dict[str, Any]:
    return spec.to_dict()


def _compute(run: RunDir, spec: TheorySpec, previous: dict[str, Any] | None,
             resources: Resources) -> dict[str, Any]:
    # torch is imported here, not with the module: reading settings and records needs none
    from qgen.theory.compute import compute_theory
    from qgen.train import load_run_data, load_run_model, versions

    splits = load_run_data(run, resources)
    model = load_run_model(run, info=splits.info, device=resources.device)
    res = compute_theory(model, run.weights("init"), splits.train, splits.test, spec,
                         observed=run.result.get("metrics"), device=resources.device)
    record = res.to_dict()
    record["theory_spec"] = spec.to_dict()
    record["quant_label"] = run.spec.quant.label
    record["versions"] = versions()
    return record


def _columns(record: dict[str, Any]) -> dict[str, Any]:
    undefined = record.get("undefined") or {}
    return {"meta.theory_settings": json.dumps(record.get("settings_key"), sort_keys=True),
            "meta.theory_undefined": "; ".join(f"{k}: {v}" for k, v in sorted(undefined.items()))}


THEORY = register_postpass(PostPass(name="theory", prefix="theory", settings_key=_settings_key,
                                    compute=_compute, columns=_columns))


def settings_from_dict(data: Mapping[str, Any] | None) -> TheorySpec:
    """A TheorySpec from a mapping (a sweep file's ``study.theory`` section, or ``{}`` for
    the defaults); an unknown key or an impossible value is a one-line QgenError that names
    the field and what is allowed.

    >>> settings_from_dict({"hutchinson_probes": 24}).hutchinson_probes
    24
    """
    return TheorySpec.from_dict(data)


def read_theory(run_dir: str | Path) -> dict[str, Any] | None:
    """The stored theory record of a run, or None."""
    return RunDir(run_dir).record("theory")


def theory_run(run_dir: str | Path | RunDir, spec: TheorySpec | None = None, *,
               data_dir: str | Path | None = None, device: str = "cpu", force: bool = False,
               resources: Resources | None = None) -> dict[str, Any]:
    """Compute the theory of one complete run and store it; return the record.

    A run that is not complete or that diverged is a QgenError; a record with the same
    settings comes back unchanged with ``"reused": True``; other settings need ``force``.
    """
    resources = resources or Resources(data_dir=Path(data_dir) if data_dir else None,
                                       device=device)
    return run_postpass(THEORY, run_dir, spec or TheorySpec(), force=force,
                        resources=resources)


def theory_runs(run_dirs: Iterable[str | Path | RunDir], spec: TheorySpec | None = None, *,
                data_dir: str | Path | None = None, device: str = "cpu", force: bool = False,
                strict: bool = False, on_done: Any = None) -> dict[str, dict[str, Any]]:
    """The theory of several runs, loading each dataset once (see
    :func:`qgen.store.run_postpass_many`)."""
    resources = Resources(data_dir=Path(data_dir) if data_dir else None, device=device)
    return _run_many(THEORY, run_dirs, spec or TheorySpec(), force=force, resources=resources,
                     on_done=on_done, strict=strict)
