"""What the analysis reads from a results table: required columns, which runs are analysed
(and why the others are not), the hyperparameters that vary, bit-width labels and their
order, and the training protocol the runs followed.

Column conventions are those of :mod:`qgen.results.table`. Bit width is the column
``hp.quant.label`` ('fp', 'w8a8', 'w4a4', ...); ``hp.quant.w_bits`` and ``hp.quant.a_bits``
are derived from it and never count as hyperparameters of their own. ``hp.train.seed`` is
part of every comparison group but never a hyperparameter whose effect is measured.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qgen.errors import QgenError

REQUIRED = ("run_id", "status", "hp.quant.label", "gen.loss_gap")
GAPS = {"loss": "gen.loss_gap", "acc": "gen.acc_gap"}
LABEL = "hp.quant.label"
SEED = "hp.train.seed"
#: columns that restate the bit width held by ``hp.quant.label``
DERIVED = ("hp.quant.w_bits", "hp.quant.a_bits")
FP = "fp"
EQUAL_FIT = "equal fit"
EQUAL_BUDGET = "equal budget"
ANALYSED_STATUSES = ("converged", "max_epochs")


def check_table(df: Any, gap: str = "loss") -> str:
    """Check that ``df`` is a results table that can be analysed; return the gap column.

    Raises QgenError naming what is missing and what is needed.
    """
    if gap not in GAPS:
        raise QgenError(f"gap {gap!r}: must be one of {', '.join(GAPS)}")
    if df is None or len(df) == 0:
        raise QgenError("the results table has no runs; train and collect some first "
                        "(qgen sweep run, then qgen collect)")
    need = list(REQUIRED) + [GAPS[gap]]
    missing = [c for c in dict.fromkeys(need) if c not in df.columns]
    if missing:
        raise QgenError(f"the results table lacks the column(s) {', '.join(missing)}; "
                        f"a table from qgen collect has {', '.join(dict.fromkeys(need))}")
    return GAPS[gap]


def is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA."""
    import pandas as pd

    if value is None:
        return True
    try:
        result = pd.isna(value)
    except (TypeError, ValueError):
        return False
    return bool(result) if isinstance(result, (bool, np.bool_)) else False


def canon(value: Any) -> Any:
    """A hashable, comparable form of a cell: missing values are None (so NaN == NaN),
    integral floats are ints (a CSV reads a nullable integer column as floats)."""
    if is_missing(value):
        return None
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class Exclusion:
    """A run left out of the analysis, and why."""

    run_id: str
    reason: str
    status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass
class Selection:
    """The analysed runs of a table and the runs left out."""

    runs: Any  # DataFrame of analysed runs (index reset)
    excluded: list[Exclusion] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of exclusions per reason."""
        out: dict[str, int] = {}
        for e in self.excluded:
            out[e.reason] = out.get(e.reason, 0) + 1
        return out


def select_runs(df: Any, gap_col: str) -> Selection:
    """Split ``df`` into analysed runs and exclusions: failed, diverged, unknown status,
    unhealthy (``meta.healthy`` False: training went wrong) and no finite gap. Runs that
    stopped at the epoch cap ('max_epochs') are analysed; :func:`protocol` notes them.

    Raises QgenError when no run is left.
    """
    keep: list[int] = []
    excluded: list[Exclusion] = []
    healthy = df["meta.healthy"] if "meta.healthy" in df.columns else None
    for i in range(len(df)):
        rid = str(df["run_id"].iloc[i])
        status = canon(df["status"].iloc[i])
        status = None if status is None else str(status)
        if status in ("failed", "diverged"):
            reason = status
        elif status not in ANALYSED_STATUSES:
            reason = "unknown status"
        elif healthy is not None and canon(healthy.iloc[i]) is False:
            reason = "unhealthy"
        elif not _finite(df[gap_col].iloc[i]):
            reason = "no finite gap"
        else:
            keep.append(i)
            continue
        excluded.append(Exclusion(rid, reason, status))
    if not keep:
        counts = Selection(None, excluded).counts()
        raise QgenError("no run can be analysed: "
                        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                        + "; the analysis needs converged or max_epochs runs that are "
                          "healthy and have a finite gap")
    return Selection(df.iloc[keep].reset_index(drop=True), excluded)


def _finite(value: Any) -> bool:
    v = canon(value)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def protocol(statuses: Any) -> str:
    """'equal fit' when every run reached the cross-entropy target ('converged'), else
    'equal budget' (some stopped at the epoch cap, so fits differ)."""
    values = [str(s) for s in statuses]
    return EQUAL_FIT if values and all(s == "converged" for s in values) else EQUAL_BUDGET


# ----------------------------------------------------------------------------- bit widths
_LABEL_RE = re.compile(r"^w(\d+|fp)a(\d+|fp)$")


def label_bits(label: str) -> tuple[int | None, int | None]:
    """(weight bits, activation bits) of a label: 'w4a4' → (4, 4), 'w8afp' → (8, None),
    'fp' → (None, None); an unknown label reads as (None, None)."""
    m = _LABEL_RE.match(str(label))
    if not m:
        return None, None
    return tuple(None if g == "fp" else int(g) for g in m.groups())  # type: ignore[return-value]


def _bits_key(label: str) -> tuple[int, int, str]:
    w, a = label_bits(label)
    wb, ab = (32 if w is None else w), (32 if a is None else a)
    return (-(wb + ab), -wb, str(label))


def order_labels(labels: Any) -> list[str]:
    """Labels ordered full precision first, then by decreasing bits ('fp', 'w8a8', 'w4a4',
    'w2a2')."""
    uniq = sorted({str(x) for x in labels})
    fp = [x for x in uniq if x == FP]
    return fp + sorted((x for x in uniq if x != FP), key=_bits_key)


def quantized_labels(labels: Any) -> list[str]:
    """The labels other than 'fp', by decreasing bits."""
    return [x for x in order_labels(labels) if x != FP]


def lowest_label(labels: Any) -> str | None:
    """The quantized label with the fewest bits, or None."""
    q = quantized_labels(labels)
    return q[-1] if q else None


def eight_bit_label(labels: Any) -> str | None:
    """The label with 8-bit weights and activations ('w8a8'), if present."""
    return next((x for x in quantized_labels(labels) if label_bits(x) == (8, 8)), None)


# ------------------------------------------------------------------------ hyperparameters
def hp_columns(df: Any) -> list[str]:
    """Every ``hp.*`` column, in table order."""
    return [c for c in df.columns if str(c).startswith("hp.")]


def codes(df: Any, cols: list[str]) -> np.ndarray:
    """Integer codes (n × len(cols)) of the canonical values of ``cols``; equal codes in a
    column mean equal values (missing values are equal to each other)."""
    import pandas as pd

    out = np.zeros((len(df), len(cols)), dtype=np.int64)
    for j, c in enumerate(cols):
        vals = [repr(canon(v)) for v in df[c].tolist()]
        out[:, j] = pd.factorize(np.array(vals, dtype=object))[0]
    return out


def group_ids(code_matrix: np.ndarray) -> np.ndarray:
    """One id per distinct row of ``code_matrix`` (0 for all when it has no columns)."""
    if code_matrix.shape[1] == 0:
        return np.zeros(code_matrix.shape[0], dtype=np.int64)
    return np.unique(code_matrix, axis=0, return_inverse=True)[1].reshape(-1)


@dataclass(frozen=True)
class Hyperparameters:
    """The hyperparameters that vary among the analysed runs.

    ``varying``: the columns whose effect is studied (bit width as ``hp.quant.label``; the
    seed, derived bit columns and constants left out); ``aliases``: a column that splits the
    runs exactly as an earlier one does, mapped to that one (kept out of ``varying``: the
    two cannot be told apart); ``seed``: the seed column, when present.
    """

    varying: tuple[str, ...]
    aliases: dict[str, str]
    seed: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"varying": list(self.varying), "aliases": dict(self.aliases),
                "seed": self.seed}


def hyperparameters(runs: Any) -> Hyperparameters:
    """The varying hyperparameters of ``runs`` (see :class:`Hyperparameters`)."""
    cols = [c for c in hp_columns(runs) if c != SEED and c not in DERIVED]
    if LABEL in cols:  # bit width first, so it wins over any column that restates it
        cols = [LABEL] + [c for c in cols if c != LABEL]
    cm = codes(runs, cols)
    varying: list[str] = []
    kept: list[np.ndarray] = []
    aliases: dict[str, str] = {}
    for j, c in enumerate(cols):
        col = cm[:, j]
        n_levels = len(np.unique(col))
        if n_levels < 2:
            continue
        twin = next((varying[i] for i, other in enumerate(kept)
                     if len(np.unique(np.stack([other, col], 1), axis=0)) == n_levels
                     == len(np.unique(other))), None)
        if twin is not None:
            aliases[c] = twin
            continue
        varying.append(c)
        kept.append(col)
    return Hyperparameters(tuple(varying), aliases, SEED if SEED in runs.columns else None)


def measure_columns(df: Any, names: Any = None) -> list[str]:
    """The ``measure.*`` columns to analyse: all of them, or the given names (with or
    without the ``measure.`` prefix). Unknown names are a QgenError listing what exists."""
    have = [c for c in df.columns if str(c).startswith("measure.")]
    if names is None:
        return have
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        col = name if str(name).startswith("measure.") else f"measure.{name}"
        if col not in have:
            listed = ", ".join(c.removeprefix("measure.") for c in have) or "none"
            raise QgenError(f"measure {name!r}: not in the results table; it has: {listed}")
        out.append(col)
    return list(dict.fromkeys(out))


def is_flatness(col: str) -> bool:
    """Whether a measure column is a flatness measure (larger = sharper)."""
    return str(col).startswith("measure.") and str(col).endswith("flatness")


def finite_values(runs: Any, col: str) -> np.ndarray:
    """``runs[col]`` as floats, NaN for missing; infinities kept (they still order)."""
    import pandas as pd

    return pd.to_numeric(runs[col], errors="coerce").astype(float).to_numpy()
