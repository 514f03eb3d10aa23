"""``analyze``: a results table in, every statistic of the study out, as one
:class:`Analysis` (JSON-able, with table builders for the report).

It checks the table, selects the runs that can be analysed (counting the rest), finds the
varying hyperparameters, then per measure computes τ, τ-b (over all runs and within each
value of every varying hyperparameter, bit width first), Ψ with ψ_k and the CMI score;
pairs quantized runs with their full-precision twins, compares them per bit width and
evaluates the registered claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qgen.analysis.claims import Claim, ClaimContext, evaluate_claims
from qgen.analysis.cmi import CMI, conditional_mi, set_name
from qgen.analysis.estimate import Estimate, rng_for
from qgen.analysis.frame import (
    LABEL,
    Exclusion,
    Hyperparameters,
    canon,
    check_table,
    finite_values,
    hyperparameters,
    is_flatness,
    measure_columns,
    order_labels,
    protocol,
    select_runs,
)
from qgen.analysis.kendall import tau_estimates
from qgen.analysis.paired import (
    DIFFERENCE,
    GEN_QUANTITIES,
    LOG_RATIO,
    LabelComparison,
    Pairing,
    compare_label,
    pair_runs,
)
from qgen.analysis.psi import Psi, granulated_psi

#: the quantities summarized per bit width (table a)
SUMMARY_QUANTITIES = ("gen.loss_gap", "gen.acc_gap", "gen.train_loss", "gen.test_accuracy",
                      "gen.epochs")


@dataclass
class MeasureCorrelation:
    """How one measure ranks the gap: τ and τ-b over all runs, both within each value of
    each varying hyperparameter (``tau_by[column][value]``), Ψ and CMI."""

    measure: str
    n: int
    tau: Estimate
    tau_b: Estimate
    tau_by: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    tau_b_by: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    psi: Psi | None = None
    cmi: CMI | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        def by(d: dict[str, dict[str, Estimate]]) -> dict[str, Any]:
            return {c: {v: e.to_dict() for v, e in g.items()} for c, g in d.items()}
        return {"measure": self.measure, "n": self.n, "tau": self.tau.to_dict(),
                "tau_b": self.tau_b.to_dict(), "tau_by": by(self.tau_by),
                "tau_b_by": by(self.tau_b_by),
                "psi": self.psi.to_dict() if self.psi else None,
                "cmi": self.cmi.to_dict() if self.cmi else None}


@dataclass
class Analysis:
    """Everything :func:`analyze` computed. ``table`` is the input table and ``runs`` the
    analysed runs (neither goes into :meth:`to_dict`)."""

    gap: str
    gap_column: str
    settings: dict[str, Any]
    n_runs: int
    status_counts: dict[str, int]
    runs: Any
    table: Any
    protocol: str
    exclusions: list[Exclusion]
    hyperparameters: Hyperparameters
    measures: list[str]
    labels: list[str]
    summary: dict[str, dict[str, dict[str, float | int | None]]]
    correlations: dict[str, MeasureCorrelation]
    pairing: Pairing
    comparisons: dict[str, LabelComparison]
    claims: list[Claim]

    @property
    def n_analysed(self) -> int:
        """Runs analysed."""
        return len(self.runs)

    @property
    def n_max_epochs(self) -> int:
        """Analysed runs that stopped at the epoch cap."""
        return int((self.runs["status"].astype(str) == "max_epochs").sum())

    def exclusion_counts(self) -> dict[str, int]:
        """Runs left out or unpaired, per reason (zero counts omitted), plus the analysed
        runs that stopped at the epoch cap."""
        out: dict[str, int] = {}
        for e in self.exclusions:
            out[e.reason] = out.get(e.reason, 0) + 1
        for u in self.pairing.unpaired:
            key = f"unpaired quantized ({u.reason})"
            out[key] = out.get(key, 0) + 1
        if self.pairing.fp_without_twin:
            out["full precision without a quantized twin"] = len(self.pairing.fp_without_twin)
        if self.n_max_epochs:
            out["analysed but stopped at the epoch cap (max_epochs)"] = self.n_max_epochs
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-able data."""
        return {
            "gap": self.gap, "gap_column": self.gap_column, "settings": dict(self.settings),
            "n_runs": self.n_runs, "n_analysed": self.n_analysed,
            "status_counts": dict(self.status_counts), "protocol": self.protocol,
            "n_max_epochs": self.n_max_epochs,
            "exclusions": [e.to_dict() for e in self.exclusions],
            "exclusion_counts": self.exclusion_counts(),
            "hyperparameters": self.hyperparameters.to_dict(), "measures": list(self.measures),
            "labels": list(self.labels), "summary": self.summary,
            "correlations": {m: c.to_dict() for m, c in self.correlations.items()},
            "pairing": self.pairing.to_dict(self.runs),
            "comparisons": {k: v.to_dict() for k, v in self.comparisons.items()},
            "claims": [c.to_dict() for c in self.claims],
        }

    # ---------------------------------------------------------------- table builders
    def gap_table(self) -> Any:
        """Per bit width: n and mean, sd, median of each summarized quantity."""
        import pandas as pd

        rows = []
        for label, qs in self.summary.items():
            row: dict[str, Any] = {"label": label, "n": qs["n"]["n"]}
            for q, s in qs.items():
                if q == "n":
                    continue
                for k in ("mean", "sd", "median"):
                    row[f"{q}.{k}"] = s[k]
            rows.append(row)
        return pd.DataFrame(rows)

    def tau_groups(self) -> list[str]:
        """The columns of :meth:`tau_table`: 'all' and each bit-width label."""
        return ["all"] + list(self.labels)

    def tau_table(self, which: str = "tau") -> Any:
        """τ (``which='tau'``) or τ-b (``'tau_b'``) of each measure, over all runs and per
        bit width, with interval bounds and the number of runs."""
        import pandas as pd

        rows = []
        for m, c in self.correlations.items():
            row: dict[str, Any] = {"measure": m}
            by = c.tau_by if which == "tau" else c.tau_b_by
            for g in self.tau_groups():
                e = (c.tau if which == "tau" else c.tau_b) if g == "all" else \
                    by.get(LABEL, {}).get(g, Estimate.missing("no runs"))
                row.update({f"{g}": e.value, f"{g}.low": e.low, f"{g}.high": e.high,
                            f"{g}.n": e.n, f"{g}.reason": e.reason})
            rows.append(row)
        return pd.DataFrame(rows)

    def psi_cmi_table(self) -> Any:
        """Ψ, each ψ_k and the CMI score (with its minimizing S) of each measure."""
        import pandas as pd

        rows = []
        for m, c in self.correlations.items():
            row: dict[str, Any] = {"measure": m}
            for name, e in [("psi", c.psi.psi if c.psi else None)] + [
                    (f"psi[{k}]", v) for k, v in (c.psi.psi_k.items() if c.psi else [])]:
                e = e or Estimate.missing("not computed")
                row.update({name: e.value, f"{name}.low": e.low, f"{name}.high": e.high,
                            f"{name}.reason": e.reason})
            e = c.cmi.score if c.cmi else Estimate.missing("not computed")
            row.update({"cmi": e.value, "cmi.low": e.low, "cmi.high": e.high,
                        "cmi.set": (set_name(c.cmi.best_set) if c.cmi and
                                    c.cmi.best_set is not None else None),
                        "cmi.reason": e.reason})
            rows.append(row)
        return pd.DataFrame(rows)

    def paired_table(self) -> Any:
        """One row per (quantized label, quantity): the paired statistics."""
        import pandas as pd

        rows = []
        for label, comp in self.comparisons.items():
            for s in comp.stats.values():
                rows.append({"label": label, "protocol": comp.protocol, **s.to_dict()})
        return pd.DataFrame(rows)

    def claims_table(self) -> Any:
        """One row per claim and per part of a claim."""
        import pandas as pd

        rows = []
        for c in self.claims:
            for part in (c, *c.parts):
                rows.append({"id": part.id, "statement": part.statement,
                             "protocol": part.protocol, "verdict": part.verdict,
                             "explanation": part.explanation,
                             "is_part": part is not c})
        return pd.DataFrame(rows)

    def exclusions_table(self) -> Any:
        """Every run left out, unpaired or without a twin, with the reason."""
        import pandas as pd

        rows = [{"run_id": e.run_id, "reason": e.reason, "status": e.status}
                for e in self.exclusions]
        rows += [{"run_id": u.run_id, "reason": f"unpaired quantized ({u.reason})",
                  "status": None} for u in self.pairing.unpaired]
        rows += [{"run_id": r, "reason": "full precision without a quantized twin",
                  "status": None} for r in self.pairing.fp_without_twin]
        return pd.DataFrame(rows, columns=["run_id", "reason", "status"])


def _describe(values: np.ndarray) -> dict[str, float | int | None]:
    v = values[np.isfinite(values)]
    if not len(v):
        return {"n": 0, "mean": None, "sd": None, "median": None}
    return {"n": len(v), "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else None, "median": float(np.median(v))}


def _summary(runs: Any, labels: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    out = {}
    lab = runs[LABEL].astype(str).to_numpy()
    for label in labels:
        sub = runs[lab == label]
        qs: dict[str, dict[str, Any]] = {"n": {"n": len(sub)}}
        for q in SUMMARY_QUANTITIES:
            if q in runs.columns:
                qs[q] = _describe(finite_values(sub, q))
        out[label] = qs
    return out


def _correlate(runs: Any, measure: str, gap: str, hps: Hyperparameters, *, n_boot: int,
               conf: float, seed: int) -> MeasureCorrelation:
    x, y = finite_values(runs, measure), finite_values(runs, gap)
    keep = ~(np.isnan(x) | np.isnan(y))

    def taus(mask: np.ndarray, *key: str) -> tuple[Estimate, Estimate]:
        return tau_estimates(x[mask], y[mask], n_boot=n_boot, conf=conf,
                             rng_tau=rng_for(seed, "tau", measure, gap, *key),
                             rng_tau_b=rng_for(seed, "tau_b", measure, gap, *key))

    tau, tau_b = taus(keep)
    corr = MeasureCorrelation(measure, int(keep.sum()), tau, tau_b)
    for col in hps.varying:
        values = [canon(v) for v in runs[col].tolist()]
        levels = order_labels(values) if col == LABEL else sorted(
            set(values), key=lambda v: (v is None, str(type(v)), v if v is not None else 0))
        corr.tau_by[col], corr.tau_b_by[col] = {}, {}
        for level in levels:
            mask = keep & np.array([str(v) == str(level) for v in values])
            corr.tau_by[col][str(level)], corr.tau_b_by[col][str(level)] = taus(
                mask, col, str(level))
    corr.psi = granulated_psi(runs, measure, gap, hps, n_boot=n_boot, conf=conf, seed=seed)
    corr.cmi = conditional_mi(runs, measure, gap, hps, n_boot=n_boot, conf=conf, seed=seed)
    return corr


def analyze(df: Any, *, gap: str = "loss", measures: Any = None, n_boot: int = 1000,
            seed: int = 0, conf: float = 0.95) -> Analysis:
    """Analyse a results table (a DataFrame from :func:`qgen.results.collect` or
    :func:`qgen.results.read_table`).

    ``gap``: 'loss' (gen.loss_gap) or 'acc' (gen.acc_gap); ``measures``: names of
    ``measure.*`` columns (default: all of them); ``n_boot`` bootstrap resamples (0: no
    intervals) at confidence ``conf``, drawn from generators seeded by ``seed``.

    Raises QgenError for a table without runs, without analysable runs, or without the
    columns run_id, status, hp.quant.label and the gap.
    """
    from qgen.errors import QgenError

    if not isinstance(n_boot, int) or isinstance(n_boot, bool) or n_boot < 0:
        raise QgenError(f"n_boot: must be an integer >= 0, got {n_boot!r}")
    if not (isinstance(conf, float) and 0.5 <= conf < 1.0):
        raise QgenError(f"conf: must be a float in [0.5, 1), got {conf!r}")
    gap_col = check_table(df, gap)
    sel = select_runs(df, gap_col)
    runs = sel.runs
    cols = measure_columns(runs, measures)
    hps = hyperparameters(runs)
    labels = order_labels(runs[LABEL].astype(str))
    correlations = {m: _correlate(runs, m, gap_col, hps, n_boot=n_boot, conf=conf, seed=seed)
                    for m in cols}
    pairing = pair_runs(runs)
    quantities = [(q, DIFFERENCE) for q in dict.fromkeys((gap_col, *GEN_QUANTITIES))
                  if q in runs.columns]
    quantities += [(m, LOG_RATIO) for m in cols if is_flatness(m)]
    comparisons = {label: compare_label(runs, pairing, label, quantities, gap=gap_col,
                                        n_boot=n_boot, conf=conf, seed=seed)
                   for label in pairing.pairs}
    overall = protocol(runs["status"].astype(str))
    ctx = ClaimContext(runs, df, pairing, comparisons, overall, gap_col, conf=conf,
                       n_boot=n_boot, seed=seed)
    status_counts = {str(k): int(v) for k, v in
                     df["status"].astype(str).value_counts(dropna=False).items()}
    return Analysis(gap=gap, gap_column=gap_col,
                    settings={"n_boot": n_boot, "seed": seed, "conf": conf,
                              "min_runs": 3, "min_pairs": 3},
                    n_runs=len(df), status_counts=status_counts, runs=runs, table=df,
                    protocol=overall, exclusions=sel.excluded, hyperparameters=hps,
                    measures=cols, labels=labels, summary=_summary(runs, labels),
                    correlations=correlations, pairing=pairing, comparisons=comparisons,
                    claims=evaluate_claims(ctx))
