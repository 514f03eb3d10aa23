"""PAC-Bayes measures: the Monte-Carlo σ search and the bounds built on it.

σ is the largest noise scale whose mean train error over Monte-Carlo draws exceeds the
unperturbed error by the target 0.1 (Jiang et al. 2020, appendix C.3; measures.md): the
deviation is the *increase* of the error, E_u[err(w+u)] − err(w), so a draw on which noise
helps (a quantized model's accuracy can rise under noise) counts against the others instead
of adding to them as |mean − base| would. The number of draws adapts (MeasureSpec's ``mc_*``
fields): few where the decision is clear, up to ``mc_draws`` at the final bracket, until
the deviation's standard error is at most ``mc_stderr``; draws, standard errors and the σ's
own standard error are kept in the search record.
The plain search draws u ~ N(0, s²I) with s = σ (or σ², preset 'dziugaite2020'); the
magnitude-aware one draws u_i ~ N(0, σ'²w_i² + ε²). Bounds, with m the training-set size,
ω the number of perturbed parameters and everything summed over the perturbed set:

- pacbayes.init = ‖w−w0‖²/(4σ²) + log(m/σ) + 10, .orig with ‖w‖², .flatness = 1/σ²;
- pacbayes.mag.init = ¼ Σ_i log[(ε² + (σ'²+1)‖w−w0‖²/ω) / (ε² + σ'²(w_i−w0_i)²)]
  + log(m/σ') + 10; .orig with ‖w‖² and w_i²; .flatness = 1/σ'².
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from qgen.measures.context import MeasureContext, family_search
from qgen.measures.perturb import (
    Perturbation,
    gaussian_std,
    magnitude_std,
    make_generator,
    standard_normals,
)
from qgen.measures.search import SearchResult, decided, deviation, deviation_range


class DrawCache:
    """The per-draw (metric, base metric) pairs measured at each scale of one search.

    Draw k at any scale uses the seeded streams ``key/k`` (noise) and ``key/examples/k``
    (which examples it is evaluated on): common random numbers, so the draws made at a scale
    during the search are the first draws of that scale's precise measurement, which
    continues them instead of starting over.
    """

    def __init__(self) -> None:
        self.values: dict[float, list[tuple[float, float]]] = {}


def pacbayes_deviation(ctx: MeasureContext, sigma: float, magnitude: bool, key: str, *,
                       max_draws: int | None = None, min_draws: int | None = None,
                       stderr_target: float = 0.0, decide: str = "none",
                       cache: DrawCache | None = None) -> tuple[float, dict[str, Any]]:
    """Mean-over-draws deviation of the target metric at noise scale σ, with its standard
    error and the per-draw metrics.

    Draw k perturbs the weights with the seeded stream ``key/k`` and evaluates on the
    examples :meth:`MeasureContext.draw_examples` gives for ``key/examples/k`` (the same at
    every σ); its deviation is paired with the unperturbed model's metric on those examples.
    Draws are made until ``max_draws`` (default ``mc_draws``), and stop earlier once
    ``min_draws`` are made and either the deviation's standard error is at most
    ``stderr_target`` or the search's decision is settled: ``decide='exact'`` when the
    remaining draws cannot change which side of target ± tolerance the mean falls on (the
    'bisect' search; every draw then sees the whole eval subset), ``'z'`` when the mean is
    ``mc_decision_z`` standard errors from the target (the 'threshold' search).
    """
    spec = ctx.spec
    base = ctx.base_metrics().get(spec.target)
    per_example = ctx.base_per_example()[0 if spec.target == "accuracy" else 1]
    n_max = spec.mc_draws if max_draws is None else max_draws
    n_min = min(n_max, spec.mc_min_draws if min_draws is None else min_draws)
    top = 1.0 if spec.target == "accuracy" else math.inf
    pairs = cache.values.setdefault(sigma, []) if cache is not None else []

    def dev_of() -> tuple[float, float]:
        n = len(pairs)
        mean = sum(v for v, _ in pairs) / n
        mean_base = sum(b for _, b in pairs) / n
        dev = deviation(mean, mean_base, spec.target, spec.deviation)
        diffs = [deviation(v, b, spec.target, "increase") for v, b in pairs]
        mean_diff = sum(diffs) / n
        var = sum((d - mean_diff) ** 2 for d in diffs) / (n - 1) if n > 1 else math.inf
        return dev, math.sqrt(var / n)

    def settled() -> bool:
        n = len(pairs)
        if n >= n_max:
            return True
        if n < n_min:
            return False
        dev, se = dev_of()
        if stderr_target > 0 and se <= stderr_target:
            return True
        if decide == "z":
            # The draws' spread is estimated with a prior of 2 pseudo-draws at sd 0.1·target
            # scale: a few identical draws (common when draws either break the network or
            # leave it alone) must not look certain.
            prior = spec.target_deviation
            sd2 = (se * se * n * (n - 1) + 2 * prior * prior) / (n - 1 + 2)
            return abs(dev - spec.target_deviation) >= spec.mc_decision_z * math.sqrt(sd2 / n)
        if decide == "exact":
            total, rest = sum(v for v, _ in pairs), n_max - n
            lo, hi = total / n_max, (total + rest * top) / n_max
            return decided(*deviation_range(lo, hi, base, spec.target, spec.deviation),
                           spec.target_deviation, spec.target_tolerance)
        return False

    if not settled():
        pert = Perturbation(ctx.prep.params)
        with pert, torch.no_grad():
            if magnitude:
                stds: list[Tensor | float] = [
                    magnitude_std(w, sigma, spec.mag_eps, spec.mag_noise) for w in pert.original]
            else:
                stds = [gaussian_std(sigma, spec.gauss_std)] * len(pert.original)
            while not settled():
                k = len(pairs)
                gen = make_generator(ctx.seed(f"{key}/{k}"), ctx.device)
                z = standard_normals(pert.original, gen)
                pert.apply([zi.mul_(s) for zi, s in zip(z, stds, strict=True)])
                idx = ctx.draw_examples(f"{key}/examples/{k}")
                value = ctx.evaluate(idx).get(spec.target)
                pairs.append((value, base if idx is None else float(per_example[idx].mean())))
    dev, se = dev_of()
    mean = sum(v for v, _ in pairs) / len(pairs)
    return dev, {"mean": mean, "draws": len(pairs), "stderr": se,
                 "samples": [v for v, _ in pairs], "base_samples": [b for _, b in pairs]}


def pacbayes_search(ctx: MeasureContext, magnitude: bool) -> SearchResult:
    """The σ (or σ') search of the plain or magnitude-aware PAC-Bayes family."""
    spec = ctx.spec
    key = "search.pacbayes.mag" if magnitude else "search.pacbayes"
    if spec.search == "bisect":
        decide = "exact" if spec.early_stop else "none"
        return family_search(ctx, lambda s: pacbayes_deviation(
            ctx, s, magnitude, key, min_draws=spec.mc_draws, decide=decide), magnitude)
    cache = DrawCache()
    n_search = min(spec.mc_search_draws, spec.mc_draws)
    return family_search(
        ctx,
        lambda s: pacbayes_deviation(ctx, s, magnitude, key, max_draws=n_search,
                                     decide="z" if spec.early_stop else "none", cache=cache),
        magnitude,
        refine=lambda s: pacbayes_deviation(ctx, s, magnitude, key, min_draws=n_search,
                                            stderr_target=spec.mc_stderr, cache=cache))


def sq_norm(values: list[Tensor]) -> float:
    """Σ of squares over a list of tensors, in float64."""
    return float(sum(v.double().square().sum() for v in values))


def pacbayes_bound(ref_sq_norm: float, sigma: float, m: int) -> float:
    """‖ref‖²/(4σ²) + log(m/σ) + 10 (inf when σ = 0)."""
    if sigma <= 0:
        return math.inf
    return ref_sq_norm / (4 * sigma**2) + math.log(m / sigma) + 10


def magnitude_log_sum(numerator_scale: float, ref_sq_norm: float, denom_values: list[Tensor],
                      scale_sq: float, eps: float) -> float:
    """¼ Σ_i log[(ε² + c‖ref‖²/ω) / (ε² + s² d_i²)], with c = ``numerator_scale``,
    s² = ``scale_sq`` and d = ``denom_values`` (ω = their number of elements), in float64."""
    omega = sum(v.numel() for v in denom_values)
    num = eps**2 + numerator_scale * ref_sq_norm / omega
    total = 0.0
    for d in denom_values:
        den = eps**2 + scale_sq * d.double().square()
        total += float(torch.log(num / den).sum())
    return total / 4
