"""Kendall's rank correlation between a measure and the generalization gap.

Two variants, both over the pairs of runs:

- **τ (Jiang et al. 2020, eq. 3)**: the mean over all pairs of
  sign(μ_i − μ_j)·sign(g_i − g_j); a pair tied in either counts zero (this is τ-a);
- **τ-b**: ties corrected, ``scipy.stats.kendalltau(variant='b')``.

Conditioned versions compute τ within each group of runs that share a hyperparameter value
(e.g. each bit width). Bootstrap resamples are multiplicities ``w`` of the runs; a pair
statistic of a resample is then a quadratic form in ``w`` (pairs of copies of one run are
tied in both), which gives the resample τ and τ-b exactly without building the resample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qgen.analysis.estimate import MIN_RUNS, Estimate, bootstrap_estimate, finite_or_none
from qgen.analysis.estimate import too_few as _too_few


def sign_matrix(x: np.ndarray) -> np.ndarray:
    """sign(x_i − x_j) for all i, j (n × n of −1, 0, 1); infinities order like numbers."""
    x = np.asarray(x, dtype=float)
    return (x[:, None] > x[None, :]).astype(float) - (x[:, None] < x[None, :])


def _paired(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"need two 1-d arrays of equal length, got {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def kendall_tau(x: Any, y: Any) -> float:
    """Jiang et al.'s τ (τ-a): mean over pairs of sign(Δx)·sign(Δy), ties count zero.

    Pairs with a NaN are dropped; NaN when fewer than two values remain.
    """
    x, y = _paired(x, y)
    if len(x) < 2:
        return float("nan")
    return float(_tau_a(sign_matrix(x) * sign_matrix(y))(np.ones((1, len(x))))[0])


def kendall_tau_b(x: Any, y: Any) -> float:
    """Kendall's τ-b (``scipy.stats.kendalltau``, variant 'b'); NaN when undefined."""
    from scipy.stats import kendalltau

    x, y = _paired(x, y)
    if len(x) < 2:
        return float("nan")
    return float(kendalltau(x, y, variant="b").statistic)


def _tau_a(P: np.ndarray):
    """τ of resamples with multiplicities W: Σ_{i≠j} w_i w_j P_ij / (N(N−1))."""
    def stat(W: np.ndarray) -> np.ndarray:
        N = W.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return ((W @ P) * W).sum(axis=1) / (N * (N - 1))
    return stat


def _tau_b(sx: np.ndarray, sy: np.ndarray):
    """τ-b of resamples: ordered pairs of the resample, copies of one run tied in both."""
    P, Tx, Ty = sx * sy, (sx == 0).astype(float), (sy == 0).astype(float)

    def stat(W: np.ndarray) -> np.ndarray:
        N = W.sum(axis=1)
        n0 = N * (N - 1)
        tied_x = ((W @ Tx) * W).sum(axis=1) - N
        tied_y = ((W @ Ty) * W).sum(axis=1) - N
        with np.errstate(invalid="ignore", divide="ignore"):
            out = ((W @ P) * W).sum(axis=1) / np.sqrt((n0 - tied_x) * (n0 - tied_y))
        return np.where((n0 - tied_x) * (n0 - tied_y) > 0, out, np.nan)
    return stat


def tau_estimates(x: Any, y: Any, *, n_boot: int, conf: float, rng_tau: np.random.Generator,
                  rng_tau_b: np.random.Generator, min_runs: int = MIN_RUNS
                  ) -> tuple[Estimate, Estimate]:
    """(τ, τ-b) of ``x`` against ``y`` with bootstrap intervals; "too few runs" below
    ``min_runs`` runs with both values."""
    x, y = _paired(x, y)
    n = len(x)
    if n < min_runs:
        return _too_few(n, min_runs), _too_few(n, min_runs)
    sx, sy = sign_matrix(x), sign_matrix(y)
    tau = bootstrap_estimate(_tau_a(sx * sy), n, n_boot=n_boot, conf=conf, rng=rng_tau)
    tau_b_value = finite_or_none(kendall_tau_b(x, y))
    if tau_b_value is None:
        tau_b = Estimate.missing("τ-b undefined: the measure or the gap is constant here", n=n)
    else:
        tau_b = bootstrap_estimate(_tau_b(sx, sy), n, n_boot=n_boot, conf=conf,
                                   rng=rng_tau_b, value=tau_b_value)
    return tau, tau_b


def weighted_tau_a(x: Any, y: Any, weights: np.ndarray) -> np.ndarray:
    """τ of bootstrap resamples given as multiplicities (B × n) of the runs of ``x``, ``y``
    (which must hold no NaN). Exposed to check the quadratic form against a built
    resample."""
    return _tau_a(sign_matrix(np.asarray(x, float)) * sign_matrix(np.asarray(y, float)))(
        np.atleast_2d(weights).astype(float))


def weighted_tau_b(x: Any, y: Any, weights: np.ndarray) -> np.ndarray:
    """τ-b of bootstrap resamples given as multiplicities (B × n); see
    :func:`weighted_tau_a`."""
    return _tau_b(sign_matrix(np.asarray(x, float)), sign_matrix(np.asarray(y, float)))(
        np.atleast_2d(weights).astype(float))
