"""Granulated Kendall coefficient Ψ (Jiang et al. 2020, eq. 4).

For each hyperparameter k that varies, the runs are grouped so that every other
hyperparameter (seed included) is equal within a group; τ (Jiang's, ties zero) is computed
within each group of at least two runs, and ψ_k is the mean over groups. Ψ is the mean of
ψ_k over the hyperparameters that have groups. A group then holds only runs that differ in
k, so ψ_k says how well the measure follows the gap when k alone changes.

Bootstrap: resample runs; a group counts in a resample when it holds at least two distinct
runs; ψ_k and Ψ of one resample come from the same draw, so their intervals are joint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qgen.analysis.estimate import (
    Estimate,
    bootstrap_samples,
    estimate_from,
    nanmean_rows,
    rng_for,
)
from qgen.analysis.frame import Hyperparameters, codes, finite_values, group_ids
from qgen.analysis.kendall import sign_matrix


@dataclass(frozen=True)
class Psi:
    """Ψ of one measure: ``psi`` (mean over k), ``psi_k`` per hyperparameter and the
    number of groups behind each ψ_k."""

    psi: Estimate
    psi_k: dict[str, Estimate] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"psi": self.psi.to_dict(),
                "psi_k": {k: v.to_dict() for k, v in self.psi_k.items()},
                "groups": dict(self.groups)}


def _group_matrix(gid: np.ndarray) -> np.ndarray:
    """One row per group of ≥ 2 runs: the indicator of its runs."""
    ids, counts = np.unique(gid, return_counts=True)
    return np.stack([gid == g for g in ids[counts >= 2]]).astype(float) if (
        counts >= 2).any() else np.zeros((0, len(gid)))


def _psi_k_stat(P: np.ndarray, G: np.ndarray):
    """ψ_k of resamples (B × n multiplicities): mean τ over groups with two distinct runs."""
    same = G.T @ G  # 1 where i and j share a group
    Pk = P * same

    def stat(W: np.ndarray) -> np.ndarray:
        num = ((W @ Pk) * W) @ G.T
        N = W @ G.T
        distinct = (W > 0).astype(float) @ G.T
        with np.errstate(invalid="ignore", divide="ignore"):
            tau = num / (N * (N - 1))
        return nanmean_rows(np.where(distinct >= 2, tau, np.nan))
    return stat


def granulated_psi(runs: Any, measure: str, gap: str, hps: Hyperparameters, *,
                   n_boot: int = 1000, conf: float = 0.95, seed: int = 0) -> Psi:
    """Ψ and ψ_k of column ``measure`` against column ``gap`` over ``runs``.

    Runs without a value of either are left out. ψ_k is "too few runs" when no two runs
    differ in k alone; Ψ when no ψ_k has a value.
    """
    x, y = finite_values(runs, measure), finite_values(runs, gap)
    keep = ~(np.isnan(x) | np.isnan(y))
    sub = runs[keep].reset_index(drop=True)
    x, y = x[keep], y[keep]
    n = len(x)
    if not hps.varying:
        return Psi(Estimate.missing("no hyperparameter varies, so Ψ has no groups", n=n))
    cols = list(hps.varying) + ([hps.seed] if hps.seed else [])
    cm = codes(sub, cols)
    P = sign_matrix(x) * sign_matrix(y)
    stats, groups = {}, {}
    for j, k in enumerate(hps.varying):
        others = [i for i in range(len(cols)) if i != j]
        G = _group_matrix(group_ids(cm[:, others]))
        groups[k] = len(G)
        if len(G):
            stats[k] = _psi_k_stat(P, G)
    if not stats:
        reason = ("too few runs: no two runs differ in one hyperparameter alone, so Ψ has no "
                  "groups")
        return Psi(Estimate.missing(reason, n=n),
                   {k: Estimate.missing(reason, n=n) for k in hps.varying}, groups)
    names = list(stats)

    def all_k(W: np.ndarray) -> np.ndarray:
        return np.stack([stats[k](W) for k in names], axis=1)

    point = all_k(np.ones((1, n)))[0]
    samples = (bootstrap_samples(all_k, n, n_boot, rng_for(seed, "psi", measure, gap))
               if n_boot > 0 else None)
    psi_k = {}
    for k in hps.varying:
        if k not in stats:
            psi_k[k] = Estimate.missing(f"too few runs: no two runs differ in {k} alone", n=n)
            continue
        j = names.index(k)
        psi_k[k] = estimate_from(point[j], None if samples is None else samples[:, j], n, conf)
    psi = estimate_from(nanmean_rows(point[None])[0],
                        None if samples is None else nanmean_rows(samples), n, conf)
    return Psi(psi, psi_k, groups)
