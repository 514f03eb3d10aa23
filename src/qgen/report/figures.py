"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no global
backend) at a fixed size and resolution, to PNG bytes without a timestamp or version stamp,
so the same analysis draws the same bytes.

Figures: the gap per bit width (box and points), train vs test loss, each flatness measure
against the gap (log x), a heatmap of τ (measures × bit widths) and the paired differences
with their intervals per bit width. Colours follow the bit-width order (fp first).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from qgen.analysis import Analysis
from qgen.analysis.frame import LABEL, finite_values, is_flatness
from qgen.errors import QgenError

#: every figure's size in inches and its resolution: 800 × 500 pixels
FIGSIZE = (8.0, 5.0)
DPI = 100
#: the τ heatmap is taller, to fit one row per measure: 800 × 700 pixels
HEATMAP_SIZE = (8.0, 7.0)
PALETTE = ("#4c72b0", "#55a868", "#dd8452", "#c44e52", "#8172b3", "#937860", "#da8bc3",
           "#8c8c8c")


def require_matplotlib() -> None:
    """Raise a QgenError saying how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise QgenError("the report needs matplotlib, which is not installed; install it "
                        "with: pip install 'qgen[plot]'") from None


@dataclass(frozen=True)
class Figure:
    """A drawn figure: file stem ``name``, PNG bytes, caption and pixel size."""

    name: str
    png: bytes
    caption: str
    width: int
    height: int

    @property
    def filename(self) -> str:
        """The file name under figures/."""
        return f"{self.name}.png"


def new_figure(size: tuple[float, float] = FIGSIZE) -> Any:
    """A matplotlib figure on the Agg canvas (no pyplot, no global backend) at ``size``
    inches and the report's resolution; every section draws on these."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Any, name: str, caption: str) -> Figure:
    """The drawn ``fig`` as a :class:`Figure` (PNG bytes without a timestamp or version
    stamp, so the same drawing gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    w, h = (int(round(v * DPI)) for v in fig.get_size_inches())
    return Figure(name, buf.getvalue(), caption, w, h)


def colors(labels: list[str]) -> dict[str, str]:
    """A colour per bit-width label, in the analysis order."""
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}


def _labels_of(a: Analysis) -> np.ndarray:
    return a.runs[LABEL].astype(str).to_numpy()


def gap_by_bits(a: Analysis) -> Figure:
    """The gap of every analysed run per bit width: box plot with the runs as points."""
    fig = new_figure()
    ax = fig.add_subplot()
    gap = finite_values(a.runs, a.gap_column)
    lab = _labels_of(a)
    data = [gap[(lab == g) & np.isfinite(gap)] for g in a.labels]
    ax.boxplot(data, widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same picture every time
    col = colors(a.labels)
    for i, (g, v) in enumerate(zip(a.labels, data, strict=True)):
        ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(v)), v, s=18, color=col[g],
                   alpha=0.8, zorder=3)
    ax.set_xticks(range(1, len(a.labels) + 1), a.labels)
    ax.set_xlabel("bit width")
    ax.set_ylabel(a.gap_column)
    ax.set_title(f"Generalization gap by bit width ({a.protocol})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return to_png(fig, "gap_by_bits", f"{a.gap_column} of every analysed run per bit width "
                "(box: quartiles and median; points: runs).")


def train_vs_test_loss(a: Analysis) -> Figure | None:
    """Train against test cross-entropy, one point per run, coloured by bit width."""
    if not {"gen.train_loss", "gen.test_loss"} <= set(a.runs.columns):
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    tr, te = finite_values(a.runs, "gen.train_loss"), finite_values(a.runs, "gen.test_loss")
    lab = _labels_of(a)
    for g, c in colors(a.labels).items():
        m = lab == g
        ax.scatter(tr[m], te[m], s=22, color=c, label=g, alpha=0.85)
    ok = np.isfinite(tr) & np.isfinite(te)
    if ok.any():
        lo, hi = float(min(tr[ok].min(), te[ok].min())), float(max(tr[ok].max(), te[ok].max()))
        ax.plot([lo, hi], [lo, hi], color="#999999", lw=1, ls="--", label="test = train")
    ax.set_xlabel("train cross-entropy")
    ax.set_ylabel("test cross-entropy")
    ax.set_title("Train vs test loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig, "train_vs_test_loss", "Train against test cross-entropy per run; the "
                "vertical distance to the dashed line is the loss gap.")


def measure_vs_gap(a: Analysis, measure: str) -> Figure:
    """One measure (log x) against the gap, coloured by bit width, with τ in the title."""
    fig = new_figure()
    ax = fig.add_subplot()
    x, y = finite_values(a.runs, measure), finite_values(a.runs, a.gap_column)
    lab = _labels_of(a)
    pos = np.isfinite(x) & np.isfinite(y) & (x > 0)
    for g, c in colors(a.labels).items():
        m = pos & (lab == g)
        ax.scatter(x[m], y[m], s=22, color=c, label=g, alpha=0.85)
    if pos.any():
        ax.set_xscale("log")
    tau = a.correlations[measure].tau if measure in a.correlations else None
    name = measure.removeprefix("measure.")
    title = name if tau is None or tau.value is None else f"{name}: τ = {tau.value:.2f}"
    ax.set_title(title)
    ax.set_xlabel(f"{name} (log scale; larger = sharper)")
    ax.set_ylabel(a.gap_column)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    dropped = int((np.isfinite(x) & (x <= 0)).sum())
    note = f" {dropped} run(s) with a value ≤ 0 are not shown." if dropped else ""
    return to_png(fig, f"measure_{name.replace('.', '_')}",
                f"{name} against the gap, one point per run.{note}")


def tau_heatmap(a: Analysis) -> Figure | None:
    """τ of each measure (rows) over all runs and per bit width (columns)."""
    if not a.correlations:
        return None
    groups = a.tau_groups()
    data = a.tau_table("tau")
    vals = np.array([[np.nan if v is None else float(v) for v in data[g]] for g in groups]).T
    fig = new_figure(HEATMAP_SIZE)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(vals), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_facecolor("#dddddd")
    names = [m.removeprefix("measure.") for m in data["measure"]]
    ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 15 else 9)
    ax.set_xticks(range(len(groups)), groups)
    if len(names) <= 30:
        for i in range(vals.shape[0]):
            for j in range(vals.shape[1]):
                if np.isfinite(vals[i, j]):
                    ax.text(j, i, f"{vals[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(vals[i, j]) > 0.6 else "black")
    fig.colorbar(im, ax=ax, label="Kendall τ")
    ax.set_title("Kendall τ of each measure with the gap")
    fig.tight_layout()
    return to_png(fig, "tau_heatmap", "Kendall τ (Jiang) of each measure with the gap, over "
                "all runs and within each bit width; grey: too few runs.")


def paired_differences(a: Analysis) -> Figure | None:
    """Median paired difference with its interval, per quantity (panel) and bit width."""
    comps = [c for c in a.comparisons.values() if c.n_pairs]
    if not comps:
        return None
    quantities = list(dict.fromkeys(q for c in comps for q in c.stats))
    ncols = 3
    nrows = int(np.ceil(len(quantities) / ncols))
    fig = new_figure()
    col = colors(a.labels)
    for k, q in enumerate(quantities):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for i, c in enumerate(comps):
            s = c.stats.get(q)
            if s is None or s.median is None:
                continue
            err = None
            if s.low is not None and s.high is not None:
                err = [[max(s.median - s.low, 0.0)], [max(s.high - s.median, 0.0)]]
            ax.errorbar([i], [s.median], yerr=err, fmt="o", color=col.get(c.label, "k"),
                        capsize=3)
        ax.axhline(0, color="#999999", lw=1)
        ax.set_xticks(range(len(comps)), [c.label for c in comps], fontsize=7)
        short = q.removeprefix("gen.").removeprefix("measure.")
        ax.set_title(("log ratio " if is_flatness(q) else "Δ ") + short, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("Paired differences, quantized − full precision (median, CI)", fontsize=10)
    fig.tight_layout()
    return to_png(fig, "paired_differences", "Median paired difference (quantized − "
                "full-precision twin; log ratio for measures) with its bootstrap interval, per "
                "bit width; 0 = no change.")


def all_figures(a: Analysis) -> list[Figure]:
    """Every figure the analysis supports, in report order."""
    require_matplotlib()
    figs = [gap_by_bits(a), train_vs_test_loss(a)]
    figs += [measure_vs_gap(a, m) for m in a.measures if is_flatness(m)]
    figs += [tau_heatmap(a), paired_differences(a)]
    return [f for f in figs if f is not None]
