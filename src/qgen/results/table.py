"""The results table: one tidy row per run of a store, and the column conventions.

Columns (prefixes after nitarshan/robust-generalization-measures' tidy results):

- ``run_id``, ``status`` ('converged' | 'max_epochs' | 'diverged' | 'failed'), ``error_type``
  and ``error`` (the message; null unless failed);
- ``hp.<section>.<field>``: every spec field, e.g. ``hp.data.name``, ``hp.model.depth``,
  ``hp.train.lr``, plus ``hp.quant.label`` ('fp', 'w8a8', 'w4a4', 'w8afp', …);
- ``gen.*``: ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``,
  ``loss_gap``, ``acc_gap``, the margin statistics, ``epochs``, ``steps``, ``wall_time_s``;
- one prefix per post-pass, from the columns each record carries (:mod:`qgen.store.postpass`):
  ``measure.<name>`` (measures), ``robust.<...>`` (robustness), ``theory.<...>`` (theory),
  with their flags under ``meta.*``; a ``measures.json`` written before post-passes carried
  their columns is read the way it always was;
- ``meta.*``: ``num_params``, ``device``, ``threads``, ``torch``, ``qgen`` versions,
  ``measure_preset``, ``saturated.<family>`` (a measure search that ended at a bound), and
  the training-health verdict: ``healthy`` (False: never report the run as a normal model),
  ``health_flags`` (why), ``max_ce_rise`` and ``max_step_decades``.

Types are chosen so that pandas, Parquet and DuckDB agree: integer spec fields are nullable
64-bit integers, floats are float64, flags are nullable booleans, names are strings.
**Full precision** is a null in ``hp.quant.w_bits`` / ``hp.quant.a_bits`` (so the columns stay
integers and ``WHERE "hp.quant.w_bits" IS NULL`` selects it) and the string ``'fp'`` in
``hp.quant.label``, which is the column to group by. ``hp.quant.overrides`` and
``hp.model.options`` are JSON text.
Non-finite metrics (a diverged run's loss) are NaN / ±inf floats.

Collecting reads JSON only: it imports neither torch nor the code that wrote the records.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from qgen.config import DataSpec, ModelSpec, QuantSpec, RunSpec, TrainSpec
from qgen.errors import QgenError
from qgen.io import atomic_write
from qgen.store import SPEC_FILE, RunDir, run_dirs

SECTIONS = {"data": DataSpec, "model": ModelSpec, "quant": QuantSpec, "train": TrainSpec}
TABLE_SUFFIXES = (".parquet", ".csv")


def _number(value: Any) -> float | None:
    """A float from a JSON value; the strings 'nan'/'inf'/'-inf' (how qgen.io writes
    non-finite floats) become the floats again."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def _hp_columns(spec: RunSpec) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        sub = getattr(spec, section)
        for f in fields(cls):
            value = getattr(sub, f.name)
            if f.name == "overrides":
                value = json.dumps([list(o) for o in value])
            elif f.name == "options":
                value = json.dumps(dict(value), sort_keys=True)
            row[f"hp.{section}.{f.name}"] = value
    row["hp.quant.label"] = spec.quant.label
    return row


def _hp_dtypes() -> dict[str, str]:
    """Column name -> pandas dtype of every hp.* column, in spec order."""
    dtypes: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            col = f"hp.{section}.{f.name}"
            t = str(f.type)
            if f.name in ("overrides", "options"):
                dtypes[col] = "string"
            elif "bool" in t:
                dtypes[col] = "boolean"
            elif "int" in t:
                dtypes[col] = "Int64"
            elif "float" in t:
                dtypes[col] = "float64"
            else:
                dtypes[col] = "string"
        if section == "quant":
            dtypes["hp.quant.label"] = "string"
    return dtypes


#: the record files of post-passes, besides the run's own files
_RUN_JSON = {SPEC_FILE, "result.json", "error.json"}


def _legacy_measure_columns(record: dict[str, Any]) -> dict[str, Any]:
    """Columns of a measures.json written before records carried their own columns."""
    cols: dict[str, Any] = {
        "meta.measure_preset": (record.get("measure_spec") or {}).get("preset_name")}
    for key, diag in (record.get("diagnostics") or {}).items():
        if key.startswith("search.") and isinstance(diag, dict):
            # a search that ended at an interval bound: its values are bounds only
            cols[f"meta.saturated.{key.removeprefix('search.')}"] = bool(diag.get("saturated"))
    for name, value in (record.get("values") or {}).items():
        cols[f"measure.{name}"] = value
    return cols


def _postpass_columns(run: RunDir) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for path in sorted(run.path.glob("*.json")):
        if path.name in _RUN_JSON:
            continue
        record = run.record(path.stem)
        if not record:
            continue
        if isinstance(record.get("columns"), dict):
            cols.update(record["columns"])
        elif path.stem == "measures" and isinstance(record.get("values"), dict):
            cols.update(_legacy_measure_columns(record))
    return {k: (_number(v) if k.split(".", 1)[0] != "meta" else v) for k, v in cols.items()}


def _row_for(run: RunDir) -> dict[str, Any] | None:
    state = run.state
    if state == "complete":
        result = run.result
        row: dict[str, Any] = {"run_id": run.run_id, "status": result.get("status"),
                               "error_type": None, "error": None}
        row.update(_hp_columns(run.spec))
        for key, value in (result.get("metrics") or {}).items():
            num = _number(value)
            if num is not None:
                row[f"gen.{key}"] = num
        for key in ("epochs", "steps", "wall_time_s"):
            row[f"gen.{key}"] = _number(result.get(key))
        row.update(_postpass_columns(run))
        health = result.get("health")
        if isinstance(health, dict):  # runs from before the health check have none
            row["meta.healthy"] = bool(health.get("healthy"))
            row["meta.health_flags"] = "; ".join(health.get("flags") or [])
            row["meta.max_ce_rise"] = _number(health.get("max_ce_rise"))
            row["meta.max_step_decades"] = _number(health.get("max_step_decades"))
        versions = result.get("versions") or {}
        row.update({"meta.num_params": result.get("num_params"),
                    "meta.device": result.get("device"), "meta.threads": result.get("threads"),
                    "meta.torch": versions.get("torch"), "meta.qgen": versions.get("qgen")})
        return row
    if state == "failed":
        err = run.error or {}
        row = {"run_id": run.run_id, "status": "failed",
               "error_type": err.get("error_type"), "error": err.get("message")}
        try:
            row.update(_hp_columns(RunSpec.from_dict(err.get("spec") or {})))
        except QgenError:
            pass  # a record from an unreadable spec: keep the row, without hp columns
        versions = err.get("versions") or {}
        row.update({"meta.torch": versions.get("torch"), "meta.qgen": versions.get("qgen")})
        return row
    return None


def collect(out_dir: str | Path) -> Any:
    """One row per run directory of the store (complete or failed), sorted by run id.

    Returns a pandas DataFrame with the columns described in the module docstring; a store
    without runs gives an empty frame with the base columns. Directories that are neither
    complete nor failed (e.g. a damaged result.json) have no row; they are listed with the
    reason in ``df.attrs["skipped"]`` as (run id, reason) pairs.
    """
    import pandas as pd

    rows = []
    skipped: list[tuple[str, str]] = []
    for run in run_dirs(out_dir):
        row = _row_for(run)
        if row is not None:
            rows.append(row)
        else:
            skipped.append((run.run_id, run.why_incomplete()))
    base = ["run_id", "status", "error_type", "error"]
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame({c: pd.Series(dtype="string") for c in base})
        df.attrs["skipped"] = skipped
        return df
    hp = _hp_dtypes()
    order = base + [c for c in hp if c in df.columns]
    for prefix in ("gen.", "measure.", "robust.", "theory."):
        order += sorted(c for c in df.columns if c.startswith(prefix))
    order += sorted(c for c in df.columns if c not in order and not c.startswith("meta."))
    order += sorted(c for c in df.columns if c.startswith("meta."))
    order += [c for c in df.columns if c not in order]
    df = df[order]
    for col in df.columns:
        if col in base or col in ("meta.device", "meta.torch", "meta.qgen",
                                  "meta.health_flags", "meta.measure_settings",
                                  "meta.measure_preset"):
            df[col] = df[col].astype("string")
        elif col == "meta.healthy":
            df[col] = df[col].astype("boolean")
        elif col in ("meta.max_ce_rise", "meta.max_step_decades"):
            df[col] = df[col].astype("float64")
        elif col in hp:
            df[col] = df[col].astype(hp[col])
        elif col in ("gen.steps", "meta.num_params", "meta.threads") or (
                col.startswith("gen.") and col.endswith("_n")):
            df[col] = df[col].astype("Int64")
        elif col.startswith(("gen.", "measure.", "robust.", "theory.")):
            df[col] = df[col].astype("float64")
    df = df.reset_index(drop=True)
    df.attrs["skipped"] = skipped
    return df


def write_table(df: Any, path: str | Path) -> Path:
    """Write ``df`` as Parquet or CSV (by suffix) atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise QgenError(f"{path}: unknown table format {suffix or '(no suffix)'!r}; "
                        f"use one of {', '.join(TABLE_SUFFIXES)}")
    if path.is_dir():
        raise QgenError(f"{path}: is a directory; give a file name ending in "
                        f"{' or '.join(TABLE_SUFFIXES)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise QgenError(f"{path}: folder {parent} does not exist")
    if suffix == ".parquet":
        return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def read_table(path: str | Path) -> Any:
    """A results table written by :func:`write_table` (Parquet or CSV), as a DataFrame."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise QgenError(f"{path}: unknown table format {suffix or '(no suffix)'!r}; "
                        f"use one of {', '.join(TABLE_SUFFIXES)}")
    if not path.is_file():
        raise QgenError(f"{path}: no such results table")
    try:
        return pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pyarrow and pandas raise many kinds on a damaged file
        raise QgenError(f"{path}: not a readable results table ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})") from exc


def summarize(df: Any) -> dict[str, int]:
    """Counts of each status in a collected table."""
    if df.empty:
        return {}
    counts = df["status"].value_counts(dropna=False)
    return {str(k): int(v) for k, v in counts.items() if not (isinstance(k, float)
                                                              and math.isnan(k))}
