"""Collect a run store into one tidy table: one row per run directory.

Columns (prefixes after nitarshan/robust-generalization-measures' tidy results):

- ``run_id``, ``status`` ('converged' | 'max_epochs' | 'diverged' | 'failed'), ``error_type``
  and ``error`` (the message; null unless failed);
- ``hp.<section>.<field>``: every spec field, e.g. ``hp.data.name``, ``hp.model.depth``,
  ``hp.train.lr``, plus ``hp.quant.label`` ('fp', 'w8a8', 'w4a4', 'w8afp', …);
- ``gen.*``: ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``,
  ``loss_gap``, ``acc_gap``, the margin statistics, ``epochs``, ``steps``, ``wall_time_s``;
- ``measure.<name>``: each value of the run's ``measures.json`` (see qgen.measures.store);
- ``robust.<path>``: each number in ``result["robustness"]``, nested keys joined by dots;
- ``meta.*``: ``num_params``, ``device``, ``threads``, ``torch``, ``qgen`` versions,
  ``measure_preset``, ``saturated.<family>`` (a measure search that ended at a bound), and
  the training-health verdict: ``healthy`` (False: never report the run as a normal model),
  ``health_flags`` (why), ``max_ce_rise`` and ``max_step_decades``.

Types are chosen so that pandas, Parquet and DuckDB agree: integer spec fields are nullable
64-bit integers, floats are float64, flags are nullable booleans, names are strings.
**Full precision** is a null in ``hp.quant.w_bits`` / ``hp.quant.a_bits`` (so the columns stay
integers and ``WHERE "hp.quant.w_bits" IS NULL`` selects it) and the string ``'fp'`` in
``hp.quant.label``, which is the column to group by. ``hp.quant.overrides`` is JSON text.
Non-finite metrics (a diverged run's loss) are NaN / ±inf floats.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from qgen.config import DataSpec, ModelSpec, QuantSpec, RunSpec, TrainSpec
from qgen.errors import QgenError
from qgen.io import read_json
from qgen.sweep.store import ERROR_FILE, run_state

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


def _flatten_numbers(obj: Any, prefix: str, out: dict[str, float]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten_numbers(v, f"{prefix}.{k}", out)
        return
    num = _number(obj)
    if num is not None:
        out[prefix] = num


def _hp_columns(spec: RunSpec) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        sub = getattr(spec, section)
        for f in fields(cls):
            value = getattr(sub, f.name)
            if f.name == "overrides":
                value = json.dumps([list(o) for o in value])
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
            if f.name == "overrides":
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


def _row_for(run_dir: Path) -> dict[str, Any] | None:
    state = run_state(run_dir)
    if state == "done":
        spec = RunSpec.from_dict(read_json(run_dir / "spec.json"))
        result = read_json(run_dir / "result.json")
        row: dict[str, Any] = {"run_id": run_dir.name, "status": result.get("status"),
                               "error_type": None, "error": None}
        row.update(_hp_columns(spec))
        for key, value in (result.get("metrics") or {}).items():
            num = _number(value)
            if num is not None:
                row[f"gen.{key}"] = num
        for key in ("epochs", "steps", "wall_time_s"):
            row[f"gen.{key}"] = _number(result.get(key))
        measures = result.get("measures")
        if (run_dir / "measures.json").is_file():  # written by qgen.measures.store
            measures = read_json(run_dir / "measures.json")
            row["meta.measure_preset"] = (measures.get("measure_spec") or {}).get("preset_name")
            for key, diag in (measures.get("diagnostics") or {}).items():
                if key.startswith("search.") and isinstance(diag, dict):
                    # a search that ended at an interval bound: its values are bounds only
                    row[f"meta.saturated.{key.removeprefix('search.')}"] = bool(
                        diag.get("saturated"))
        if isinstance(measures, dict) and isinstance(measures.get("values"), dict):
            for name, value in measures["values"].items():
                num = _number(value)
                if num is not None:
                    row[f"measure.{name}"] = num
        robust: dict[str, float] = {}
        if isinstance(result.get("robustness"), dict):
            _flatten_numbers(result["robustness"], "robust", robust)
        row.update(robust)
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
        err = read_json(run_dir / ERROR_FILE)
        row = {"run_id": run_dir.name, "status": "failed",
               "error_type": err.get("error_type"), "error": err.get("message")}
        try:
            row.update(_hp_columns(RunSpec.from_dict(err.get("spec") or {})))
        except QgenError:
            pass  # a record from an older spec version: keep the row, without hp columns
        versions = err.get("versions") or {}
        row.update({"meta.torch": versions.get("torch"), "meta.qgen": versions.get("qgen")})
        return row
    return None


def collect(out_dir: str | Path) -> Any:
    """One row per run directory of the store (complete or failed), sorted by run id.

    Returns a pandas DataFrame with the columns described in the module docstring; a store
    without runs gives an empty frame with the base columns.
    """
    import pandas as pd

    out = Path(out_dir)
    if not out.is_dir():
        raise QgenError(f"{out}: no such run store")
    rows = []
    for d in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        row = _row_for(d)
        if row is not None:
            rows.append(row)
    base = ["run_id", "status", "error_type", "error"]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in base})
    hp = _hp_dtypes()
    order = base + [c for c in hp if c in df.columns]
    for prefix in ("gen.", "measure.", "robust.", "meta."):
        order += sorted(c for c in df.columns if c.startswith(prefix))
    order += [c for c in df.columns if c not in order]
    df = df[order]
    for col in df.columns:
        if col in base or col in ("meta.device", "meta.torch", "meta.qgen",
                                  "meta.health_flags"):
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
        elif col.startswith(("gen.", "measure.", "robust.")):
            df[col] = df[col].astype("float64")
    return df.reset_index(drop=True)


def write_table(df: Any, path: str | Path) -> Path:
    """Write ``df`` as Parquet or CSV (by suffix) atomically: temp file, fsync, rename."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise QgenError(f"{path}: unknown table format {suffix or '(no suffix)'!r}; "
                        f"use one of {', '.join(TABLE_SUFFIXES)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise QgenError(f"{path}: folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def summarize(df: Any) -> dict[str, int]:
    """Counts of each status in a collected table."""
    if df.empty:
        return {}
    counts = df["status"].value_counts(dropna=False)
    return {str(k): int(v) for k, v in counts.items() if not (isinstance(k, float)
                                                              and math.isnan(k))}
