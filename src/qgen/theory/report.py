"""The report's theory section: the ``theory.*`` columns of the results table as three
figures and three tables (docs/theory.md explains every quantity).

- noise variance against bit width: each run's median noise-to-signal ratio
  mean(Δ²)/mean(v²) per bit width of its layers (weights and activations), beside the
  4^(−b) line of a fixed clipping range and the 2^(−b) line of LSQ's start step, with a table
  of the measured/predicted variance ratio var(Δ)/(s²/12), the KS statistic and the clipped
  fraction;
- the regularizer: predicted Σ(s²/24)·tr(H) against the measured E[L(w + Δ')] − L(w) and
  L(Q(w)) − L(w), and their ratios per bit width;
- the bound: its gap term against the observed gap, its value against the observed test
  error, and how often it held (and was vacuous) per bit width.

Registered as the report section ``theory`` (order 60); a table without theory columns gets
the section omitted with a note. Imports no torch (the report reads a table).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from qgen.analysis.frame import LABEL, finite_values, order_labels
from qgen.report.figures import Figure, colors, new_figure, to_png
from qgen.report.sections import (
    FigureBlock,
    Paragraph,
    ReportContext,
    Section,
    TableBlock,
    register_section,
)
from qgen.report.tables import DASH, Table, fmt

NAME = "theory"
TITLE = "Theory: quantization noise, its regularizer and the bound"
PREFIX = "theory."
ROLES = {"noise": "weights", "act": "activations"}
_BITS_COLUMN = re.compile(r"^theory\.(noise|act)\.b(\d+)\.([a-z_]+)$")
_NOISE_KEYS = ("var_ratio", "nsr", "nsr_predicted", "ks_stat", "clipped_fraction")


def theory_columns(df: Any) -> list[str]:
    """The ``theory.*`` columns of a results table."""
    return [c for c in df.columns if str(c).startswith(PREFIX)]


def _labels(df: Any) -> np.ndarray:
    if LABEL in df.columns:
        return df[LABEL].astype(str).to_numpy()
    return np.array(["all"] * len(df), dtype=object)


def _col(df: Any, name: str) -> np.ndarray:
    """``theory.<name>`` as floats (NaN where missing or absent)."""
    col = PREFIX + name
    if col not in df.columns:
        return np.full(len(df), np.nan)
    return finite_values(df, col)


def _median(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else float("nan")


def _count(flags: np.ndarray) -> str:
    ok = np.isfinite(flags)
    if not ok.any():
        return DASH
    k, n = int((flags[ok] > 0.5).sum()), int(ok.sum())
    return f"{k}/{n} ({k / n:.0%})"


# ------------------------------------------------------------------------------ data
def noise_by_bits(df: Any) -> Any:
    """One row per run, role (weights/activations) and layer bit width, from the
    ``theory.{noise,act}.b<bits>.*`` columns: run_id, label, role, bits and the medians over
    that run's layers of var_ratio, nsr, nsr_predicted, ks_stat, clipped_fraction."""
    import pandas as pd

    found: dict[tuple[str, int], list[str]] = {}
    for c in df.columns:
        m = _BITS_COLUMN.match(str(c))
        if m and m.group(3) in _NOISE_KEYS:
            found.setdefault((m.group(1), int(m.group(2))), []).append(m.group(3))
    labels = _labels(df)
    run_ids = df["run_id"].astype(str).to_numpy() if "run_id" in df.columns else \
        np.arange(len(df)).astype(str)
    rows = []
    for (prefix, bits), keys in sorted(found.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        vals = {k: _col(df, f"{prefix}.b{bits}.{k}") for k in keys}
        for i in range(len(df)):
            if not any(np.isfinite(v[i]) for v in vals.values()):
                continue
            rows.append({"run_id": run_ids[i], "label": labels[i], "role": ROLES[prefix],
                         "bits": bits, **{k: float(v[i]) for k, v in vals.items()}})
    cols = ["run_id", "label", "role", "bits", *_NOISE_KEYS]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------ drawing
def noise_figure(long: Any) -> Figure | None:
    """Noise-to-signal ratio against the layers' bit width (log y), one point per run and
    role, with the 4^(−b) and 2^(−b) lines through the weights' median at the most bits."""
    w = long[(long["role"] == "weights") & np.isfinite(long["nsr"].astype(float))]
    if w.empty:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # fixed jitter: the same picture every time
    for role, marker, shift, color in (("weights", "o", -0.12, "#4c72b0"),
                                       ("activations", "^", 0.12, "#dd8452")):
        d = long[(long["role"] == role) & np.isfinite(long["nsr"].astype(float))
                 & (long["nsr"].astype(float) > 0)]
        if d.empty:
            continue
        x = d["bits"].to_numpy(float) + shift + rng.uniform(-0.05, 0.05, len(d))
        ax.scatter(x, d["nsr"].to_numpy(float), marker=marker, s=24, color=color, alpha=0.8,
                   label=f"{role}: mean(Δ²)/mean(v²)", zorder=3)
    bits = np.array(sorted(set(long["bits"].astype(int))), dtype=float)
    top = bits.max()
    anchor = float(np.exp(np.median(np.log(w[w["bits"] == top]["nsr"].to_numpy(float)))))
    b = np.linspace(bits.min(), top, 50)
    ax.plot(b, anchor * 4.0 ** (top - b), color="#333333", lw=1.2,
            label="4^(−b): fixed range, step ∝ 2^(−b)")
    ax.plot(b, anchor * 2.0 ** (top - b), color="#999999", lw=1.2, ls=":",
            label="2^(−b): LSQ's start step 2·mean|w|/√Qp")
    ax.set_yscale("log")
    ax.set_xticks(bits, [str(int(v)) for v in bits])
    ax.set_xlabel("bit width of the layer")
    ax.set_ylabel("noise-to-signal ratio mean(Δ²)/mean(v²)")
    ax.set_title("Quantization noise against bit width")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig, "theory_noise_vs_bits", "Noise-to-signal ratio of the quantization error "
                "Δ = Q(v) − v per run (median over its layers of that bit width; a run's "
                "first and last layers may have 8 bits), weights and activations, against "
                "the bit width. Lines through the weights' median at the most bits: 4^(−b) "
                "(each bit removed quadruples the noise, a fixed clipping range) and 2^(−b) "
                "(LSQ's start step).")


def regularizer_figure(df: Any) -> Figure | None:
    """Left: measured E[L(w + Δ')] − L(w) against the predicted Σ(s²/24)·tr(H) (log–log,
    ± one standard error); right: measured/predicted per bit width (uniform and rounding)."""
    pred, pred_se = _col(df, "reg.predicted"), _col(df, "reg.predicted_se")
    uni, uni_se = _col(df, "reg.measured_uniform"), _col(df, "reg.measured_uniform_se")
    r_uni, r_round = _col(df, "reg.ratio_uniform"), _col(df, "reg.ratio_rounding")
    ok = np.isfinite(pred) & np.isfinite(uni)
    if not ok.any():
        return None
    labels = _labels(df)
    order = [g for g in order_labels(labels[ok])]
    col = colors(order)
    fig = new_figure()
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    pos = ok & (pred > 0) & (uni > 0)
    for g in order:
        m = pos & (labels == g)
        if m.any():
            ax.errorbar(pred[m], uni[m], xerr=np.nan_to_num(pred_se[m]),
                        yerr=np.nan_to_num(uni_se[m]), fmt="o", ms=4, color=col[g], label=g,
                        alpha=0.85, capsize=2)
    if pos.any():
        lo = float(min(pred[pos].min(), uni[pos].min()))
        hi = float(max(pred[pos].max(), uni[pos].max()))
        ax.plot([lo, hi], [lo, hi], color="#999999", lw=1, ls="--", label="measured = predicted")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("predicted Σ (s²/24)·tr(H)")
    ax.set_ylabel("measured E[L(w+Δ')] − L(w)")
    ax.set_title("Regularizer: uniform noise", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    rng = np.random.default_rng(0)
    for i, g in enumerate(order):
        m = labels == g
        for vals, marker, shift, face in ((r_uni, "o", -0.15, col[g]), (r_round, "s", 0.15,
                                                                          "none")):
            v = vals[m & np.isfinite(vals)]
            bx.scatter(i + shift + rng.uniform(-0.05, 0.05, len(v)), v, marker=marker, s=24,
                       facecolors=face, edgecolors=col[g], zorder=3)
    bx.axhline(1.0, color="#999999", lw=1, ls="--")
    bx.scatter([], [], marker="o", color="#555555", label="uniform Δ' / predicted")
    bx.scatter([], [], marker="s", facecolors="none", edgecolors="#555555",
               label="rounding Q(w)−w / predicted")
    bx.set_xticks(range(len(order)), order)
    bx.set_xlabel("bit width")
    bx.set_ylabel("measured / predicted")
    bx.set_title("Ratio per bit width", fontsize=10)
    bx.legend(fontsize=7)
    bx.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    dropped = int((ok & ~pos).sum())
    note = f" {dropped} run(s) with a value ≤ 0 are not on the log–log panel." if dropped else ""
    return to_png(fig, "theory_regularizer", "Predicted regularizer Σ(s²/24)·tr(H) (Hutchinson) "
                "against the measured loss increase under fresh uniform noise of the same "
                "scale (left, ± one standard error), and the measured/predicted ratios per bit "
                f"width for that noise and for the rounding itself (right).{note}")


def bound_figure(df: Any) -> Figure | None:
    """Left: the bound's gap term against the observed gap; right: the bound against the
    observed test error; log y, one point per run."""
    value, comp = _col(df, "bound.value"), _col(df, "bound.complexity")
    gap, test = _col(df, "bound.observed_gap"), _col(df, "bound.observed_test_error")
    ok = np.isfinite(value) & np.isfinite(comp) & np.isfinite(gap) & np.isfinite(test)
    if not ok.any():
        return None
    labels = _labels(df)
    order = order_labels(labels[ok])
    col = colors(order)
    fig = new_figure()
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    # log–log: the bound sits orders of magnitude above what it bounds; a run whose observed
    # gap is ≤ 0 cannot be drawn there (it is in the table)
    pos = ok & (gap > 0) & (test > 0) & (comp > 0) & (value > 0)
    for g in order:
        m = pos & (labels == g)
        ax.scatter(gap[m], comp[m], s=24, color=col[g], label=g, alpha=0.85, zorder=3)
        bx.scatter(test[m], value[m], s=24, color=col[g], label=g, alpha=0.85, zorder=3)
    for axis, x, y in ((ax, gap[pos], comp[pos]), (bx, test[pos], value[pos])):
        if len(x):
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max(), 1.0))
            axis.plot([lo, hi], [lo, hi], color="#999999", lw=1, ls="--",
                      label="bound = observed")
            axis.set_xscale("log")
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    bx.axhline(1.0, color="#c44e52", lw=1, ls=":", label="1: vacuous above")
    dropped = int((ok & ~pos).sum())
    note = f" {dropped} run(s) with an observed gap ≤ 0 are not drawn." if dropped else ""
    ax.set_xlabel("observed gap (test − train 0-1 error)")
    ax.set_ylabel("bound's gap term √((KL + ln(m/δ))/(2(m−1)))")
    ax.set_title("Gap term vs observed gap", fontsize=10)
    bx.set_xlabel("observed test error")
    bx.set_ylabel("bound on the test error")
    bx.set_title("Bound vs observed test error", fontsize=10)
    ax.legend(fontsize=7)
    bx.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig, "theory_bound", "The PAC-Bayes bound with the quantization noise as the "
                "posterior's scale: its gap term against the observed gap (left) and its "
                "value against the observed test error (right), one point per run (log–log); "
                f"above the dashed line the bound held.{note}")


# ------------------------------------------------------------------------------ tables
def noise_table(long: Any) -> Table:
    """Per role and layer bit width: runs, median measured/predicted variance, noise-to-
    signal ratio (measured and s²/12), KS statistic and clipped fraction."""
    import pandas as pd

    rows, data = [], []
    for role in ("weights", "activations"):
        d = long[long["role"] == role]
        for bits in sorted(set(d["bits"].astype(int)), reverse=True):
            g = d[d["bits"] == bits]
            med = {k: _median(g[k].to_numpy(float)) for k in _NOISE_KEYS}
            data.append({"role": role, "bits": bits, "runs": len(g), **med})
            rows.append([role, str(bits), str(len(g)), fmt(med["var_ratio"]),
                         fmt(med["nsr"]), fmt(med["nsr_predicted"]), fmt(med["ks_stat"]),
                         fmt(med["clipped_fraction"])])
    return Table("theory_noise", "Quantization noise per layer bit width (medians over runs "
                 "of each run's median over its layers): var(Δ)/(s²/12), the measured over the "
                 "predicted noise variance (1 = the uniform model); the noise-to-signal ratio "
                 "mean(Δ²)/mean(v²) measured and predicted by s²/12; the Kolmogorov–Smirnov "
                 "statistic of Δ/s against U(−½, ½); the fraction of elements clipped by more "
                 "than half a step.",
                 ["role", "bits", "runs", "var ratio", "NSR", "NSR (s²/12)", "KS",
                  "clipped"], rows, pd.DataFrame(data))


def regularizer_table(df: Any) -> Table:
    """Per bit width: runs, median predicted regularizer, measured values and ratios."""
    import pandas as pd

    pred = _col(df, "reg.predicted")
    qs = {"predicted": pred, "uniform": _col(df, "reg.measured_uniform"),
          "ratio_uniform": _col(df, "reg.ratio_uniform"),
          "rounding": _col(df, "reg.measured_rounding"),
          "ratio_rounding": _col(df, "reg.ratio_rounding"),
          "rounding_trained": _col(df, "reg.trained.measured_rounding")}
    labels = _labels(df)
    rows, data = [], []
    for g in order_labels(labels[np.isfinite(pred)]):
        m = (labels == g) & np.isfinite(pred)
        med = {k: _median(v[m]) for k, v in qs.items()}
        data.append({"label": g, "runs": int(m.sum()), **med})
        rows.append([g, str(int(m.sum())), fmt(med["predicted"]), fmt(med["uniform"]),
                     fmt(med["ratio_uniform"]), fmt(med["rounding"]),
                     fmt(med["ratio_rounding"]), fmt(med["rounding_trained"])])
    return Table("theory_regularizer", "The regularizer per bit width (medians over runs): "
                 "predicted Σ(s²/24)·tr(H) by Hutchinson; measured E[L(w+Δ')] − L(w) under "
                 "fresh uniform noise of the same scale and its ratio to the prediction; the "
                 "rounding's own L(Q(w)) − L(w) and its ratio; the rounding with the "
                 "activation quantizers as trained. All on one training batch.",
                 ["bits", "runs", "predicted", "uniform", "uniform / pred.", "rounding",
                  "rounding / pred.", "rounding (act. as trained)"], rows, pd.DataFrame(data))


def bound_table(df: Any) -> Table:
    """Per bit width: runs, median bound and terms, observed gap, how often it held."""
    import pandas as pd

    value = _col(df, "bound.value")
    qs = {k: _col(df, f"bound.{k}") for k in ("value", "kl", "empirical_risk", "complexity",
                                              "observed_test_error", "observed_gap")}
    flags = {k: _col(df, f"bound.{k}") for k in ("held", "vacuous", "held_gibbs")}
    labels = _labels(df)
    rows, data = [], []
    for g in order_labels(labels[np.isfinite(value)]):
        m = (labels == g) & np.isfinite(value)
        med = {k: _median(v[m]) for k, v in qs.items()}
        counts = {k: _count(v[m]) for k, v in flags.items()}
        data.append({"label": g, "runs": int(m.sum()), **med,
                     **{f"{k}_count": int(np.nansum(v[m] > 0.5)) for k, v in flags.items()}})
        rows.append([g, str(int(m.sum())), fmt(med["value"]), fmt(med["kl"]),
                     fmt(med["empirical_risk"]), fmt(med["complexity"]),
                     fmt(med["observed_test_error"]), fmt(med["observed_gap"]),
                     counts["held"], counts["vacuous"], counts["held_gibbs"]])
    return Table("theory_bound", "The bound per bit width (medians over runs): its value "
                 "L̂(Q) + √((KL + ln(m/δ))/(2(m−1))), KL(Q‖P) with σ² = s²/12, the noisy "
                 "training error L̂(Q), the gap term; the observed test error and gap of the "
                 "quantized network; how often the bound held (bound ≥ observed test error), "
                 "how often it was vacuous (≥ 1), and how often it held for the noisy network's "
                 "own test error.",
                 ["bits", "runs", "bound", "KL", "noisy train error", "gap term", "test error",
                  "observed gap", "held", "vacuous", "held (Gibbs)"], rows,
                 pd.DataFrame(data))


# ------------------------------------------------------------------------------ section
def _settings_note(df: Any) -> str | None:
    col = "meta.theory_settings"
    if col not in df.columns:
        return None
    keys = {str(v) for v in df[col].dropna() if str(v) not in ("", "null", "None")}
    if len(keys) != 1:
        return "Warning: the runs were analysed with different theory settings." if keys \
            else None
    try:
        s = json.loads(next(iter(keys)))
    except ValueError:
        return None
    if not isinstance(s, dict):
        return None
    parts = [f"{k} = {s[k]}" for k in ("activations", "hessian_batch", "hutchinson_probes",
                                       "uniform_draws", "bound_draws", "delta") if k in s]
    return "Settings: " + ", ".join(parts) + "." if parts else None


@register_section(NAME, order=60)
def theory_section(ctx: ReportContext) -> Section:
    """Noise vs bits, predicted vs measured regularizer, bound vs observed gap."""
    df = ctx.table
    if df is None or not theory_columns(df):
        return Section.omit(NAME, TITLE, "the table has no theory.* columns (run qgen theory "
                            "RUN_DIR… or the study's theory stage, then collect again)")
    blocks: list[Any] = [Paragraph(
        "Quantization modelled as additive noise: Δ = Q(v) − v uniform on (−s/2, s/2), "
        "variance s²/12 for a step s, which to second order adds Σ(s²/24)·tr(H) to the "
        "training loss; a PAC-Bayes bound with a Gaussian posterior of that variance around "
        "the latent weights and a prior around the initial ones. docs/theory.md derives "
        "each quantity and says where its assumptions fail.")]
    note = _settings_note(df)
    if note:
        blocks.append(Paragraph(note))
    long = noise_by_bits(df)
    if not long.empty:
        fig = noise_figure(long)
        if fig is not None:
            blocks.append(FigureBlock(fig))
        blocks.append(TableBlock(noise_table(long)))
    if np.isfinite(_col(df, "reg.predicted")).any():
        fig = regularizer_figure(df)
        if fig is not None:
            blocks.append(FigureBlock(fig))
        blocks.append(TableBlock(regularizer_table(df)))
    if np.isfinite(_col(df, "bound.value")).any():
        fig = bound_figure(df)
        if fig is not None:
            blocks.append(FigureBlock(fig))
        blocks.append(TableBlock(bound_table(df)))
        blocks.append(Paragraph(
            "A vacuous bound (≥ 1) holds trivially: with the quantization noise as the "
            "posterior's scale, KL(Q‖P) grows as ‖w − w0‖²/s², which dwarfs m for any "
            "network trained from scratch; the gap term is what to compare with the gap."))
    if len(blocks) == 1 + bool(note):
        return Section.omit(NAME, TITLE, "the theory columns hold no quantized run (full "
                            "precision has no quantization noise)")
    return Section(NAME, TITLE, blocks)
