"""Paired comparisons of quantized runs with their full-precision twins.

A quantized run's twin is the full-precision run with the same value in every ``hp.*``
column except the bit width (``hp.quant.w_bits``, ``hp.quant.a_bits``, ``hp.quant.label``),
seed included; missing values count as equal. For each quantity the paired difference is
quantized − full precision; for measures (positive, spanning decades) it is the difference
of natural logs, i.e. the log ratio log(μ_q / μ_fp). Per quantity: the number of pairs,
median, mean, a bootstrap interval of the median (pairs resampled), the two-sided sign test
(``scipy.stats.binomtest``) and Wilcoxon signed-rank test (``scipy.stats.wilcoxon``; None
with fewer than 6 pairs or all differences zero).

Runs that cannot pair are counted, never dropped silently: quantized runs without a twin,
full-precision runs that are nobody's twin, and runs that stopped at the epoch cap (they
pair, but then the protocol is not equal fit).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from qgen.analysis.estimate import MIN_PAIRS, finite_or_none, percentile_ci, rng_for
from qgen.analysis.frame import DERIVED, FP, LABEL, canon, hp_columns, order_labels, protocol

#: the gen.* quantities compared by default, as plain differences
GEN_QUANTITIES = ("gen.loss_gap", "gen.acc_gap", "gen.train_loss", "gen.test_accuracy",
                  "gen.epochs")
DIFFERENCE = "difference"
LOG_RATIO = "log ratio"
MIN_WILCOXON = 6


@dataclass(frozen=True)
class Unpaired:
    """A run without a partner, and why."""

    run_id: str
    label: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


@dataclass
class Pairing:
    """Quantized runs matched with their full-precision twins.

    ``pairs``: label → list of (quantized row, fp row) positions in the analysed runs;
    ``unpaired``: quantized runs without a twin; ``fp_without_twin``: full-precision runs
    no quantized run pairs with.
    """

    pairs: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    unpaired: list[Unpaired] = field(default_factory=list)
    fp_without_twin: list[str] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        """Pairs over all labels."""
        return sum(len(v) for v in self.pairs.values())

    def to_dict(self, runs: Any) -> dict[str, Any]:
        """A JSON-able dict naming the runs of each pair."""
        ids = runs["run_id"].astype(str).tolist()
        return {"pairs": {lab: [[ids[q], ids[f]] for q, f in v] for lab, v in self.pairs.items()},
                "unpaired": [u.to_dict() for u in self.unpaired],
                "fp_without_twin": list(self.fp_without_twin)}


def pair_runs(runs: Any) -> Pairing:
    """Match every quantized run of ``runs`` with its full-precision twin (see the module
    docstring); a key shared by several full-precision runs, or by several runs of one
    label, leaves those quantized runs unpaired (the twin would be ambiguous)."""
    key_cols = [c for c in hp_columns(runs) if c != LABEL and c not in DERIVED]
    keys = [tuple(canon(v) for v in row) for row in runs[key_cols].itertuples(index=False)]
    labels = runs[LABEL].astype(str).tolist()
    ids = runs["run_id"].astype(str).tolist()
    fp_by_key: dict[tuple, list[int]] = {}
    q_by_key: dict[tuple[tuple, str], list[int]] = {}
    for i, (key, lab) in enumerate(zip(keys, labels, strict=True)):
        if lab == FP:
            fp_by_key.setdefault(key, []).append(i)
        else:
            q_by_key.setdefault((key, lab), []).append(i)
    pairing = Pairing({lab: [] for lab in order_labels(labels) if lab != FP})
    used: set[int] = set()
    for i, (key, lab) in enumerate(zip(keys, labels, strict=True)):
        if lab == FP:
            continue
        twins = fp_by_key.get(key, [])
        if len(q_by_key[(key, lab)]) > 1:
            pairing.unpaired.append(Unpaired(ids[i], lab, f"several {lab} runs share its "
                                                          "hyperparameters"))
        elif not twins:
            pairing.unpaired.append(Unpaired(ids[i], lab, "no full-precision twin"))
        elif len(twins) > 1:
            pairing.unpaired.append(Unpaired(ids[i], lab, "several full-precision twins"))
        else:
            pairing.pairs[lab].append((i, twins[0]))
            used.add(twins[0])
    pairing.fp_without_twin = [ids[i] for i, lab in enumerate(labels)
                               if lab == FP and i not in used]
    return pairing


@dataclass(frozen=True)
class PairedStat:
    """Paired differences (quantized − fp, or the log ratio) of one quantity at one label.

    ``low``/``high``: bootstrap interval of the median at ``conf``; ``low90``/``high90`` at
    90% (for equivalence). Values are None, with ``reason``, below :data:`MIN_PAIRS` pairs.
    ``dropped``: pairs without a usable value (missing, or ≤ 0 for a log ratio).
    """

    column: str
    transform: str
    n: int
    median: float | None = None
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    conf: float | None = None
    low90: float | None = None
    high90: float | None = None
    sign_p: float | None = None
    wilcoxon_p: float | None = None
    n_positive: int = 0
    n_negative: int = 0
    n_zero: int = 0
    dropped: int = 0
    reason: str | None = None

    @property
    def p_value(self) -> float | None:
        """Wilcoxon's p, or the sign test's when Wilcoxon has none."""
        return self.wilcoxon_p if self.wilcoxon_p is not None else self.sign_p

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)


def differences(runs: Any, pairs: list[tuple[int, int]], column: str,
                transform: str = DIFFERENCE) -> tuple[np.ndarray, int]:
    """The paired differences of ``column`` (quantized − fp, or log ratio) and the number
    of pairs dropped for lack of a usable value."""
    import pandas as pd

    if column not in runs.columns or not pairs:
        return np.zeros(0), len(pairs)
    v = pd.to_numeric(runs[column], errors="coerce").astype(float).to_numpy()
    q = np.array([v[i] for i, _ in pairs])
    f = np.array([v[j] for _, j in pairs])
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.log(q) - np.log(f) if transform == LOG_RATIO else q - f
    ok = np.isfinite(d)
    return d[ok], int((~ok).sum())


def paired_stat(d: np.ndarray, column: str, transform: str = DIFFERENCE, *, n_boot: int = 1000,
                conf: float = 0.95, rng: np.random.Generator | None = None,
                dropped: int = 0) -> PairedStat:
    """The statistics of paired differences ``d`` (see :class:`PairedStat`)."""
    from scipy.stats import binomtest, wilcoxon

    d = np.asarray(d, dtype=float)
    n = len(d)
    base = dict(column=column, transform=transform, n=n, dropped=dropped)
    if n < MIN_PAIRS:
        return PairedStat(**base, reason=f"too few pairs ({n} < {MIN_PAIRS})")
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    sign_p = float(binomtest(pos, pos + neg, 0.5).pvalue) if pos + neg else None
    wil_p, why = None, None
    if n < MIN_WILCOXON:
        why = f"no Wilcoxon test: fewer than {MIN_WILCOXON} pairs"
    elif pos + neg == 0:
        why = "no Wilcoxon test: every difference is zero"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wil_p = finite_or_none(wilcoxon(d).pvalue)
    ci = ci90 = None
    if n_boot > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        meds = np.median(d[rng.integers(0, n, size=(n_boot, n))], axis=1)
        ci, ci90 = percentile_ci(meds, conf), percentile_ci(meds, 0.90)
    else:
        why = "; ".join(x for x in (why, "no bootstrap (n_boot = 0)") if x)
    return PairedStat(**base, median=float(np.median(d)), mean=float(np.mean(d)),
                      low=ci[0] if ci else None, high=ci[1] if ci else None,
                      conf=conf if ci else None, low90=ci90[0] if ci90 else None,
                      high90=ci90[1] if ci90 else None, sign_p=sign_p, wilcoxon_p=wil_p,
                      n_positive=pos, n_negative=neg, n_zero=n - pos - neg, reason=why)


@dataclass
class LabelComparison:
    """A quantized label against full precision: its pairs, protocol and statistics."""

    label: str
    n_pairs: int
    protocol: str
    n_max_epochs: int
    fp_median_gap: float | None
    stats: dict[str, PairedStat] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        d = asdict(self)
        d["stats"] = {k: v.to_dict() for k, v in self.stats.items()}
        return d


def compare_label(runs: Any, pairing: Pairing, label: str, quantities: list[tuple[str, str]],
                  *, gap: str, n_boot: int = 1000, conf: float = 0.95,
                  seed: int = 0) -> LabelComparison:
    """The paired statistics of ``quantities`` ((column, transform) pairs) at ``label``;
    ``fp_median_gap`` is the median ``gap`` of the full-precision twins."""
    import pandas as pd

    pairs = pairing.pairs.get(label, [])
    members = sorted({i for p in pairs for i in p})
    statuses = runs["status"].astype(str).to_numpy()[members] if members else []
    gaps = pd.to_numeric(runs[gap], errors="coerce").astype(float).to_numpy()
    fp_gap = np.array([gaps[j] for _, j in pairs])
    stats = {}
    for col, transform in quantities:
        d, dropped = differences(runs, pairs, col, transform)
        stats[col] = paired_stat(d, col, transform, n_boot=n_boot, conf=conf, dropped=dropped,
                                 rng=rng_for(seed, "paired", label, col, transform))
    return LabelComparison(label, len(pairs), protocol(statuses) if members else "no pairs",
                           int(sum(s == "max_epochs" for s in statuses)),
                           float(np.median(fp_gap)) if len(fp_gap) else None, stats)
