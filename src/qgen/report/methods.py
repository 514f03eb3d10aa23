"""The methods section's content, generated from what the runs recorded: the data, model,
training protocol and quantizer settings (``hp.*``), the measure settings
(``meta.measure_settings``, JSON), the runs and their statuses, versions and threads, and
the statistics the analysis used. A value that differs between runs is listed with
"(varied)".
"""

from __future__ import annotations

import json
from typing import Any

from qgen.analysis import Analysis
from qgen.analysis.frame import canon

#: short glosses of spec fields a reader may not know
GLOSS = {
    "hp.train.target_ce": "stop when the train cross-entropy reaches this",
    "hp.train.max_epochs": "epoch cap",
    "hp.train.bn_recalibration": "BatchNorm statistics re-estimated before each check",
    "hp.quant.first_last": "precision of the first and last layer",
    "hp.quant.granularity": "step size per tensor or per channel",
    "hp.data.train_subset": "training images used (empty: all)",
}
SECTIONS = (("data", "Data"), ("model", "Model"), ("train", "Training protocol"),
            ("quant", "Quantizer (LSQ)"))


def distinct(df: Any, col: str) -> list[Any]:
    """The distinct recorded values of ``col`` (missing ones left out), in a stable order."""
    if col not in df.columns:
        return []
    seen: dict[str, Any] = {}
    for v in df[col].tolist():
        c = canon(v)
        if c is not None:
            seen.setdefault(repr(c), c)
    return [seen[k] for k in sorted(seen)]


def describe_values(df: Any, col: str) -> str:
    """The value of ``col`` when all runs agree, else the values and '(varied)'; 'not
    recorded' without the column, 'unset (its default rule applies)' when every run left
    the field empty (e.g. a step momentum that follows the training momentum)."""
    if col not in df.columns:
        return "not recorded"
    vals = distinct(df, col)
    if not vals:
        return "unset (its default rule applies)"
    text = ", ".join(str(v) for v in vals)
    return text if len(vals) == 1 else f"{text} (varied)"


def hp_items(df: Any, section: str) -> list[tuple[str, str]]:
    """(field, description) for every ``hp.<section>.*`` column."""
    out = []
    for col in (c for c in df.columns if str(c).startswith(f"hp.{section}.")):
        text = describe_values(df, col)
        if col in GLOSS:
            text += f" — {GLOSS[col]}"
        out.append((col.removeprefix(f"hp.{section}."), text))
    return out


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(d, dict):
        out = []
        for k in sorted(d):
            out += _flatten(d[k], f"{prefix}{k}.")
        return out
    return [(prefix.rstrip("."), json.dumps(d) if not isinstance(d, str) else d)]


def measure_settings(df: Any) -> tuple[list[tuple[str, str]], str | None]:
    """(setting, value) of the recorded measure settings, and a warning when runs used
    different settings (each set is then listed with its number of runs)."""
    if "meta.measure_settings" not in df.columns:
        return [], None
    counts: dict[str, int] = {}
    for v in df["meta.measure_settings"].tolist():
        if canon(v) is not None:
            counts[str(v)] = counts.get(str(v), 0) + 1
    if not counts:
        return [], None
    items: list[tuple[str, str]] = []
    for i, (text, n) in enumerate(sorted(counts.items())):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = text
        prefix = f"[set {i + 1}, {n} runs] " if len(counts) > 1 else ""
        items += [(f"{prefix}{k}", v) for k, v in _flatten(parsed)]
    warn = (f"the runs used {len(counts)} different measure settings; their measures are "
            "not comparable" if len(counts) > 1 else None)
    return items, warn


def statistics_items(a: Analysis) -> list[tuple[str, str]]:
    """How the statistics were computed."""
    s = a.settings
    gap = "test − train cross-entropy" if a.gap == "loss" else "train − test accuracy"
    return [
        ("gap", f"{a.gap_column} ({gap})"),
        ("Kendall τ", "Jiang et al. 2020: mean over pairs of sign(Δμ)·sign(Δg), ties count "
                      "0 (τ-a); τ-b from scipy.stats.kendalltau; at least 3 runs"),
        ("granulated Ψ", "per varying hyperparameter k, τ within groups of runs equal in "
                         "every other hyperparameter (seed included), averaged (ψ_k); Ψ = "
                         "mean of ψ_k"),
        ("conditional MI", "min over conditioning sets S (≤ 2 hyperparameters, ∅ included) "
                           "of I(sign Δμ; sign Δg | S) / H(sign Δg | S), bins weighted by "
                           "p(u), pairs counted in both orders"),
        ("hyperparameters", ", ".join(a.hyperparameters.varying) or "none varies"),
        ("bootstrap", f"{s['n_boot']} resamples of the runs (of the pairs for paired "
                      f"statistics), percentile {s['conf']:.0%} intervals, seed {s['seed']}"),
        ("paired tests", "two-sided sign test (scipy.stats.binomtest) and Wilcoxon "
                         "signed-rank test (scipy.stats.wilcoxon, from 6 pairs)"),
    ]


def runs_items(a: Analysis) -> list[tuple[str, str]]:
    """Counts of runs, statuses and pairs, and the software that made them."""
    df = a.table
    statuses = ", ".join(f"{v} {k}" for k, v in sorted(a.status_counts.items()))
    pairs = ", ".join(f"{lab}: {c.n_pairs}" for lab, c in a.comparisons.items()) or "none"
    items = [("runs in the table", f"{a.n_runs} ({statuses})"),
             ("runs analysed", f"{a.n_analysed} ({a.n_max_epochs} stopped at the epoch cap)"),
             ("protocol", a.protocol),
             ("pairs with a full-precision twin", pairs)]
    for col, name in (("meta.qgen", "qgen version"), ("meta.torch", "torch version"),
                      ("meta.threads", "torch threads per run"), ("meta.device", "device"),
                      ("meta.measure_preset", "measure preset")):
        if col in df.columns:
            items.append((name, describe_values(df, col)))
    return items
