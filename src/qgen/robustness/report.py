"""The report's robustness section and the claim "quantized models degrade less under
distortion". Imports no torch (it reads the results table only).

The section (order 55, after the paired comparisons) shows, from the ``robust.*`` columns:

- the paper's table: per corruption and quantized bit width, the median paired difference
  (quantized − full-precision twin) of the gap under distortion (mean over severities),
  with its bootstrap interval and which side is better (a smaller gap is better);
- per bit width: clean and corrupted accuracy, the mean gap under distortion, and the
  corruption error against the full-precision twin, CE = Σ_s E_q / Σ_s E_fp and the
  relative CE = Σ_s (E_q − E_q,clean) / Σ_s (E_fp − E_fp,clean) (errors E = 1 − accuracy;
  averaged over corruptions: mCE and relative mCE, as Hendrycks & Dietterich normalize by a
  baseline model, here the twin);
- accuracy against severity per bit width (mean over corruptions, and per corruption).

A table without ``robust.*`` columns gets the section omitted, with the reason.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from qgen.analysis import (
    INCONCLUSIVE,
    Claim,
    ClaimContext,
    direction_verdict,
    register_claim,
)
from qgen.analysis.estimate import rng_for
from qgen.analysis.frame import FP, LABEL, finite_values, lowest_label, quantized_labels
from qgen.analysis.paired import DIFFERENCE, PairedStat, differences, paired_stat
from qgen.report.figures import FIGSIZE, Figure, colors, new_figure, to_png
from qgen.report.sections import (
    FigureBlock,
    Paragraph,
    ReportContext,
    Section,
    TableBlock,
    register_section,
)
from qgen.report.tables import DASH, Table, fmt
from qgen.robustness.constants import NAMES, SEVERITIES

PREFIX = "robust."
MEAN_GAP = "robust.mean_gap"
CLAIM_ID = "quantized_degrade_less"
TITLE = "Robustness to corrupted data"
#: what a cell of the difference table says about its interval
Q_BETTER, FP_BETTER, UNCLEAR = "q better", "fp better", "≈"


def corruptions_in(df: Any) -> list[str]:
    """The corruptions with a ``robust.<c>.gap`` column, in benchmark order."""
    return [c for c in NAMES if f"{PREFIX}{c}.gap" in df.columns]


def severities_in(df: Any) -> list[int]:
    """The severities with a ``robust.s<k>.acc`` column."""
    return [s for s in SEVERITIES if f"{PREFIX}s{s}.acc" in df.columns]


def has_robustness(df: Any) -> bool:
    """Whether the table has the robustness columns the section needs."""
    return MEAN_GAP in df.columns and bool(corruptions_in(df))


def side(s: PairedStat) -> str:
    """Which model the interval of a gap difference favours (smaller gap is better)."""
    if s.low is None or s.high is None:
        return UNCLEAR
    if s.high < 0:
        return Q_BETTER
    if s.low > 0:
        return FP_BETTER
    return UNCLEAR


def _cell(s: PairedStat) -> str:
    """'median [low, high] (side)', or the reason there is none."""
    if s.median is None:
        return s.reason.split(":")[0].split(";")[0] if s.reason else DASH
    if s.low is None or s.high is None:
        return fmt(s.median)
    return f"{fmt(s.median)} [{fmt(s.low)}, {fmt(s.high)}] ({side(s)})"


def _stat(a: Any, label: str, values: np.ndarray, name: str) -> PairedStat:
    ok = np.isfinite(values)
    return paired_stat(values[ok], name, DIFFERENCE, n_boot=a.settings["n_boot"],
                       conf=a.settings["conf"], dropped=int((~ok).sum()),
                       rng=rng_for(a.settings["seed"], "robust", label, name))


def gap_difference(a: Any, label: str, column: str) -> PairedStat:
    """The paired statistics of ``column`` (quantized − fp) at ``label``."""
    d, dropped = differences(a.runs, a.pairing.pairs.get(label, []), column)
    return paired_stat(d, column, DIFFERENCE, n_boot=a.settings["n_boot"],
                       conf=a.settings["conf"], dropped=dropped,
                       rng=rng_for(a.settings["seed"], "robust", label, column))


def corruption_errors(runs: Any, pairs: list[tuple[int, int]], corruptions: list[str],
                      severities: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, mCE and relative mCE of the quantized run against its twin (module
    docstring); a corruption whose twin's error (or its rise over clean) is not positive
    is left out of that pair's mean; NaN when none is left."""
    def err(col: str) -> np.ndarray:
        return 1.0 - finite_values(runs, col) if col in runs.columns else \
            np.full(len(runs), np.nan)

    clean = err(f"{PREFIX}clean_acc")
    per_c = {c: np.sum([err(f"{PREFIX}{c}.s{s}.acc") for s in severities], axis=0)
            if all(f"{PREFIX}{c}.s{s}.acc" in runs.columns for s in severities)
            else np.full(len(runs), np.nan) for c in corruptions}
    k = len(severities)
    ce, rce = [], []
    for q, f in pairs:
        ratios, rel = [], []
        for c in corruptions:
            eq, ef = per_c[c][q], per_c[c][f]
            if np.isfinite(eq) and np.isfinite(ef) and ef > 0:
                ratios.append(eq / ef)
            dq, df_ = eq - k * clean[q], ef - k * clean[f]
            if np.isfinite(dq) and np.isfinite(df_) and df_ > 0:
                rel.append(dq / df_)
        ce.append(np.mean(ratios) if ratios else np.nan)
        rce.append(np.mean(rel) if rel else np.nan)
    return np.array(ce, dtype=float), np.array(rce, dtype=float)


def difference_table(a: Any) -> Table:
    """The paper's table: gap-under-distortion differences per corruption × bit width."""
    import pandas as pd

    labels = [lab for lab in quantized_labels(a.pairing.pairs) if a.pairing.pairs.get(lab)]
    rows_c = corruptions_in(a.runs) + ["mean"]
    rows, tones, data = [], [], []
    tone_of = {Q_BETTER: "good", FP_BETTER: "bad", UNCLEAR: ""}
    for c in rows_c:
        col = MEAN_GAP if c == "mean" else f"{PREFIX}{c}.gap"
        cells, row_tones = [c if c != "mean" else "mean over corruptions"], [""]
        for lab in labels:
            s = gap_difference(a, lab, col)
            cells.append(_cell(s))
            row_tones.append(tone_of[side(s)] if s.median is not None else "")
            data.append({"corruption": c, "label": lab, "side": side(s), **s.to_dict()})
        rows.append(cells)
        tones.append(row_tones)
    conf = a.settings["conf"]
    return Table("robust_gap_difference",
                 "Gap under distortion (corrupted test loss − clean train loss, mean over "
                 "severities), quantized − full-precision twin: median paired difference "
                 f"[{conf:.0%} bootstrap CI]. Below 0 the quantized model's gap is smaller; "
                 f"'{Q_BETTER}' / '{FP_BETTER}' when the whole interval is on one side of 0, "
                 f"'{UNCLEAR}' otherwise (in the HTML: green, red, uncoloured).",
                 ["corruption"] + labels, rows, pd.DataFrame(data), cell_tones=tones)


def _mean_sd(v: np.ndarray) -> str:
    v = v[np.isfinite(v)]
    if not len(v):
        return DASH
    return fmt(v.mean()) if len(v) == 1 else f"{fmt(v.mean())} ± {fmt(v.std(ddof=1))}"


def summary_table(a: Any) -> Table:
    """Per bit width: accuracy clean and corrupted, mean gap under distortion, and against
    the twin the gap difference, mCE and relative mCE."""
    import pandas as pd

    runs = a.runs
    lab = runs[LABEL].astype(str).to_numpy()
    corr, sev = corruptions_in(runs), severities_in(runs)
    rows, data = [], []
    for label in a.labels:
        m = lab == label
        acc = finite_values(runs, f"{PREFIX}mean_acc")[m]
        row = {"label": label, "n": int(np.isfinite(acc).sum()),
               "clean_acc": finite_values(runs, f"{PREFIX}clean_acc")[m],
               "mean_acc": acc, "mean_gap": finite_values(runs, MEAN_GAP)[m]}
        cells = [label, str(row["n"]), _mean_sd(row["clean_acc"]), _mean_sd(acc),
                 _mean_sd(row["mean_gap"])]
        rec = {"label": label, "n": row["n"]}
        for k in ("clean_acc", "mean_acc", "mean_gap"):
            v = row[k][np.isfinite(row[k])]
            rec[f"{k}.mean"] = float(v.mean()) if len(v) else None
        pairs = a.pairing.pairs.get(label, []) if label != FP else []
        if pairs:
            gd = gap_difference(a, label, MEAN_GAP)
            ce, rce = corruption_errors(runs, pairs, corr, sev)
            s_ce, s_rce = _stat(a, label, ce, "mCE"), _stat(a, label, rce, "relative mCE")
            cells += [_cell(gd), _ratio_cell(s_ce), _ratio_cell(s_rce)]
            rec.update({"gap_diff.median": gd.median, "gap_diff.low": gd.low,
                        "gap_diff.high": gd.high, "mce.median": s_ce.median,
                        "mce.low": s_ce.low, "mce.high": s_ce.high,
                        "rel_mce.median": s_rce.median, "rel_mce.low": s_rce.low,
                        "rel_mce.high": s_rce.high, "pairs": len(pairs)})
        else:
            cells += [DASH, DASH, DASH] if label != FP else ["(reference)", "1", "1"]
        rows.append(cells)
        data.append(rec)
    conf = a.settings["conf"]
    return Table("robust_by_bits",
                 "Robustness by bit width: accuracy on the clean and the corrupted test "
                 "images (mean ± sd over runs), the gap under distortion, and against the "
                 "full-precision twin the paired difference of that gap, the mean corruption "
                 "error ratio mCE = mean_c Σ_s E_q / Σ_s E_fp and the relative mCE (errors "
                 "above clean), medians over pairs "
                 f"[{conf:.0%} bootstrap CI]; below 1 the quantized model errs less.",
                 ["bits", "runs", "clean acc", "corrupted acc", "gap under distortion",
                  "Δ gap vs fp", "mCE vs fp", "relative mCE vs fp"], rows,
                 pd.DataFrame(data))


def _ratio_cell(s: PairedStat) -> str:
    if s.median is None:
        return s.reason.split(":")[0].split(";")[0] if s.reason else DASH
    if s.low is None or s.high is None:
        return fmt(s.median)
    return f"{fmt(s.median)} [{fmt(s.low)}, {fmt(s.high)}]"


# ------------------------------------------------------------------------------ figures
def _curve(runs: Any, mask: np.ndarray, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    vals = np.array([finite_values(runs, c)[mask] if c in runs.columns
                     else np.full(int(mask.sum()), np.nan) for c in cols])
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(vals, axis=1) if vals.size else np.zeros(0)
        n = np.isfinite(vals).sum(axis=1)
        sd = np.nanstd(vals, axis=1, ddof=1) if vals.shape[1] > 1 else np.zeros(len(cols))
    se = np.where(n > 1, sd / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, se


def accuracy_vs_severity(a: Any) -> Figure | None:
    """Mean accuracy over corruptions against severity (0 = clean), one line per bit width,
    with the standard error over runs."""
    runs, sev = a.runs, severities_in(a.runs)
    if not sev:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    lab = runs[LABEL].astype(str).to_numpy()
    xs = [0] + sev
    cols = [f"{PREFIX}clean_acc"] + [f"{PREFIX}s{s}.acc" for s in sev]
    for label, color in colors(a.labels).items():
        mean, se = _curve(runs, lab == label, cols)
        ax.errorbar(xs, mean, yerr=se, marker="o", color=color, label=label, capsize=3)
    ax.set_xticks(xs, ["clean"] + [str(s) for s in sev])
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy (mean over corruptions)")
    ax.set_title("Accuracy under distortion by bit width")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig, "robust_accuracy_vs_severity",
                "Test accuracy against corruption severity (0: clean), averaged over the "
                "corruptions, mean over runs of each bit width with its standard error.")


def accuracy_by_corruption(a: Any) -> Figure | None:
    """Accuracy against severity for each corruption (small multiples), per bit width."""
    runs, sev, corr = a.runs, severities_in(a.runs), corruptions_in(a.runs)
    if not sev or not corr:
        return None
    ncols = min(5, len(corr))
    nrows = math.ceil(len(corr) / ncols)
    fig = new_figure((FIGSIZE[0], max(FIGSIZE[1], 1.9 * nrows)))
    lab = runs[LABEL].astype(str).to_numpy()
    xs = [0] + sev
    for k, c in enumerate(corr):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        cols = [f"{PREFIX}clean_acc"] + [f"{PREFIX}{c}.s{s}.acc" for s in sev]
        for label, color in colors(a.labels).items():
            mean, _ = _curve(runs, lab == label, cols)
            ax.plot(xs, mean, marker=".", color=color, label=label, lw=1)
        ax.set_title(c.replace("_", " "), fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=6)
    fig.suptitle("Accuracy against severity (0 = clean) per corruption", fontsize=10)
    fig.tight_layout()
    return to_png(fig, "robust_accuracy_by_corruption",
                "Test accuracy against severity for each corruption, mean over the runs of "
                "each bit width.")


# ------------------------------------------------------------------------------ section
def _settings_text(df: Any) -> str:
    from qgen.report.methods import distinct

    keys = distinct(df, "meta.robustness_settings")
    sources = distinct(df, "meta.robustness_source")
    parts = []
    if len(keys) == 1:
        try:
            d = json.loads(keys[0])
            n = d.get("test_examples")
            parts.append(f"{len(d.get('corruptions', []))} corruptions × "
                         f"{len(d.get('severities', []))} severities on "
                         f"{'all' if n is None else n} test images (seed {d.get('seed')})")
        except (TypeError, ValueError):
            pass
    elif len(keys) > 1:
        parts.append(f"warning: the runs were evaluated with {len(keys)} different settings")
    if sources:
        parts.append("corrupted images: " + ", ".join(
            "the released -C files" if s == "released" else "generated by qgen"
            for s in sources))
    return "; ".join(parts)


@register_section("robustness", order=55)
def robustness_section(ctx: ReportContext) -> Section:
    """Robustness to corrupted data: the paper's difference table, accuracy by bit width and
    severity, corruption errors against the twin, and the claim's verdict."""
    a = ctx.analysis
    if not has_robustness(a.runs):
        return Section.omit("robustness", TITLE, "the table has no robust.* columns (run "
                                                 "qgen robustness, then collect again)")
    blocks: list[Any] = []
    text = _settings_text(a.runs)
    if text:
        blocks.append(Paragraph(f"Common corruptions of Hendrycks & Dietterich (CIFAR "
                                f"severity constants): {text}."))
    claim = next((c for c in a.claims if c.id == CLAIM_ID), None)
    if claim is not None:
        blocks.append(Paragraph(f"Claim — {claim.statement} Verdict: {claim.verdict} "
                                f"({claim.protocol}). {claim.explanation}"))
    if a.pairing.n_pairs:
        blocks.append(TableBlock(difference_table(a)))
    else:
        blocks.append(Paragraph("No pairs: no quantized run has a full-precision twin, so "
                                "there is no difference table."))
    blocks.append(TableBlock(summary_table(a)))
    for fig in (accuracy_vs_severity(a), accuracy_by_corruption(a)):
        if fig is not None:
            blocks.append(FigureBlock(fig))
    return Section("robustness", TITLE, blocks)


# ------------------------------------------------------------------------------ claim
@register_claim
def quantized_degrade_less(ctx: ClaimContext) -> Claim | None:
    """Quantized models have a smaller gap under distortion than their full-precision twins
    (per bit width; overall at the lowest one). Left out without ``robust.mean_gap``."""
    if MEAN_GAP not in ctx.runs.columns:
        return None
    statement = "Quantized models degrade less under distortion."
    hyp = (f"The median paired difference (quantized − fp) of the gap under distortion "
           f"({MEAN_GAP}: corrupted test loss − clean train loss, mean over corruptions "
           f"and severities) is < 0 ({ctx.conf:.0%} CI below 0 and p < {ctx.alpha:.2g}).")
    parts = []
    for label in ctx.labels:
        comp = ctx.comparisons.get(label)
        if comp is None or not comp.n_pairs:
            continue
        s = ctx.stat(label, MEAN_GAP)
        acc = ctx.stat(label, f"{PREFIX}mean_acc") if f"{PREFIX}mean_acc" in ctx.runs.columns \
            else None
        verdict, why = direction_verdict(s, -1, ctx.alpha)
        ev = {"label": label, "column": MEAN_GAP, "n_pairs": s.n, "median": s.median,
              "ci": [s.low, s.high], "conf": s.conf, "p_wilcoxon": s.wilcoxon_p,
              "p_sign": s.sign_p, "reason": s.reason,
              "mean_acc_difference": None if acc is None else acc.median,
              "mean_acc_ci": None if acc is None else [acc.low, acc.high]}
        parts.append(Claim(f"{CLAIM_ID}.{label}",
                           f"{label} has a smaller gap under distortion than fp.", hyp,
                           comp.protocol, verdict, ev,
                           f"{verdict.capitalize()} at {label} ({comp.protocol}, {s.n} "
                           f"pairs): {why}."))
    low = lowest_label(ctx.labels)
    part = next((p for p in parts if p.evidence.get("label") == low), None)
    if part is None:
        why = "no pairs of quantized and full-precision runs with robustness values"
        return Claim(CLAIM_ID, statement, hyp, ctx.protocol, INCONCLUSIVE, {"reason": why},
                     f"Inconclusive: {why}.")
    return Claim(CLAIM_ID, statement, hyp, part.protocol, part.verdict,
                 {"decided_by": low, **part.evidence},
                 f"At the lowest bit width ({low}): {part.explanation}", tuple(parts))


__all__ = ["CLAIM_ID", "accuracy_by_corruption", "accuracy_vs_severity", "corruption_errors",
           "difference_table", "gap_difference", "has_robustness", "quantized_degrade_less",
           "robustness_section", "side", "summary_table"]
