"""Conditional mutual information between a measure and the gap (Jiang et al. 2020, §6).

Over pairs of runs (i, j): V_μ = sign(μ_i − μ_j) ∈ {−1, 0, 1}, V_g = sign(g_i − g_j) ∈
{−1, 1} (pairs with a tied gap are dropped), and U_S = (θ_i^S, θ_j^S), the two runs' values
of the hyperparameters in S. Then, in bits,

    I(V_μ; V_g | U_S) = Σ_u p(u) I(V_μ; V_g | U_S = u),  H(V_g | U_S) = Σ_u p(u) H(V_g | U_S = u)

over the non-empty bins u, and the measure's score is min over S (|S| ≤ 2, S = ∅ included)
of I / H: how much the measure tells about the gap's order once the hyperparameters in S
are known. The S attaining the minimum is reported. (The PGDL competition code averages
the bins uniformly; we weight them by p(u), as the paper writes it.)

Pairs are ordered: every pair of runs is counted in both orientations, (i, j) and (j, i).
Counting each unordered pair once in table order makes the value depend on the row order
(three runs whose measure and gap rise together would then have H = 0); with both
orientations a perfectly ranked gap gives I / H = 1 and the value is order-free.
A bin with H = 0 (S fixes the gap's order) adds nothing; when H(V_g | U_S) = 0 the score for
that S is undefined.

Bootstrap: resample runs; bin counts of a resample are Σ w_i w_j over the pairs of a cell,
so they come from matrix products with the multiplicities ``w``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from qgen.analysis.estimate import (
    MIN_RUNS,
    Estimate,
    bootstrap_samples,
    estimate_from,
    rng_for,
    too_few,
)
from qgen.analysis.frame import Hyperparameters, codes, finite_values, group_ids
from qgen.analysis.kendall import sign_matrix

EMPTY = "∅"


def set_name(s: tuple[str, ...]) -> str:
    """A conditioning set as text: '∅' or the columns joined by ' + '."""
    return " + ".join(s) if s else EMPTY


@dataclass(frozen=True)
class CMI:
    """The CMI score of one measure (the minimum over S), the S that attains it and the
    value for every S (None where undefined)."""

    score: Estimate
    best_set: tuple[str, ...] | None = None
    by_set: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {"score": self.score.to_dict(),
                "best_set": None if self.best_set is None else list(self.best_set),
                "by_set": dict(self.by_set)}


def normalized_cmi(counts: np.ndarray) -> np.ndarray:
    """I(V_μ; V_g | U) / H(V_g | U) from cell counts (B × bins × 3 × 2: V_μ ∈ {−1,0,1},
    V_g ∈ {−1,1}); NaN where H = 0 or there are no pairs. Bins are weighted by p(u)."""
    counts = np.asarray(counts, dtype=float)
    n_u = counts.sum(axis=(2, 3))
    total = n_u.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_u = n_u / total[:, None]
        joint = counts / n_u[:, :, None, None]
        pm = joint.sum(axis=3, keepdims=True)
        pg = joint.sum(axis=2, keepdims=True)
        terms = np.where(joint > 0, joint * np.log2(joint / (pm * pg)), 0.0)
        i_u = np.nan_to_num(terms.sum(axis=(2, 3)))
        ent = np.where(pg > 0, -pg * np.log2(pg), 0.0)
        h_u = np.nan_to_num(ent.sum(axis=(2, 3)))
        i = np.nansum(p_u * i_u, axis=1)
        h = np.nansum(p_u * h_u, axis=1)
        return np.where((h > 1e-12) & (total > 0), i / h, np.nan)


def _cells(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """The six pair indicators [V_μ = m and V_g = s] for m ∈ (−1, 0, 1), s ∈ (−1, 1)."""
    sx, sy = sign_matrix(x), sign_matrix(y)
    return [((sx == m) & (sy == s)).astype(float) for m in (-1, 0, 1) for s in (-1, 1)]


def _stat(cells: list[np.ndarray], onehot: np.ndarray):
    """Normalized CMI of resamples (B × n multiplicities) for one conditioning set."""
    def stat(W: np.ndarray) -> np.ndarray:
        V = W[:, :, None] * onehot[None]  # B × n × values
        per_cell = [np.matmul(V.transpose(0, 2, 1), np.matmul(M, V)) for M in cells]
        B, a = W.shape[0], onehot.shape[1]
        counts = np.stack(per_cell, axis=-1).reshape(B, a * a, 3, 2)
        return normalized_cmi(counts)
    return stat


def conditioning_sets(varying: tuple[str, ...], max_size: int = 2) -> list[tuple[str, ...]]:
    """Every S of at most ``max_size`` of the varying hyperparameters, ∅ first."""
    return [s for size in range(max_size + 1) for s in combinations(varying, size)]


def conditional_mi(runs: Any, measure: str, gap: str, hps: Hyperparameters, *,
                   max_size: int = 2, n_boot: int = 1000, conf: float = 0.95,
                   seed: int = 0) -> CMI:
    """The CMI score of column ``measure`` against column ``gap`` over ``runs``: min over
    conditioning sets S of at most ``max_size`` varying hyperparameters (∅ included)."""
    x, y = finite_values(runs, measure), finite_values(runs, gap)
    keep = ~(np.isnan(x) | np.isnan(y))
    sub = runs[keep].reset_index(drop=True)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < MIN_RUNS:
        return CMI(too_few(n, MIN_RUNS))
    if not hps.varying:
        return CMI(Estimate.missing("too few runs: no hyperparameter varies (CMI needs runs "
                                    "with at least two values of one)", n=n))
    cells = _cells(x, y)
    sets = conditioning_sets(hps.varying, max_size)
    cm = codes(sub, list(hps.varying))
    stats = []
    for s in sets:
        gid = group_ids(cm[:, [hps.varying.index(c) for c in s]])
        stats.append(_stat(cells, np.eye(gid.max() + 1)[gid]))

    def all_sets(W: np.ndarray) -> np.ndarray:
        return np.stack([f(W) for f in stats], axis=1)

    point = all_sets(np.ones((1, n)))[0]
    by_set = {set_name(s): (float(v) if np.isfinite(v) else None)
              for s, v in zip(sets, point, strict=True)}
    if not np.isfinite(point).any():
        return CMI(Estimate.missing("undefined: no pair of runs with different gaps", n=n),
                   None, by_set)
    best = int(np.nanargmin(point))
    samples = None
    if n_boot > 0:
        with np.errstate(invalid="ignore"):
            s = bootstrap_samples(all_sets, n, n_boot, rng_for(seed, "cmi", measure, gap))
            samples = np.where(np.isfinite(s).any(axis=1),
                               np.nanmin(np.where(np.isfinite(s), s, np.inf), axis=1),
                               np.nan)
    return CMI(estimate_from(point[best], samples, n, conf), sets[best], by_set)
