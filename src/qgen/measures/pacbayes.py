"""PAC-Bayes measures: the Monte-Carlo σ search and the bounds built on it.

σ is the largest noise scale whose mean (over ``mc_draws`` draws) train accuracy deviates from
the unperturbed accuracy by the target 0.1 (Jiang et al. 2020, appendix C.3; measures.md).
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
from qgen.measures.search import SearchResult, decided, deviation_range


def pacbayes_deviation(ctx: MeasureContext, sigma: float, magnitude: bool,
                       key: str) -> tuple[float, dict[str, Any]]:
    """Mean-over-draws deviation of the target metric at noise scale σ, and the per-draw
    metrics. Draw k uses the seeded stream ``key/k`` (the same for every σ).

    With ``early_stop``, drawing stops once the mean of all ``mc_draws`` is bound to give the
    same bisection step (accuracy lies in [0, 1] and loss in [0, inf), so the draws made bound
    the final mean); the deviation returned is then that of the draws made.
    """
    spec = ctx.spec
    base = ctx.base_metrics().get(spec.target)
    n = spec.mc_draws
    top = 1.0 if spec.target == "accuracy" else math.inf
    pert = Perturbation(ctx.prep.params)
    samples: list[float] = []
    with pert, torch.no_grad():
        if magnitude:
            stds: list[Tensor | float] = [magnitude_std(w, sigma, spec.mag_eps, spec.mag_noise)
                                          for w in pert.original]
        else:
            stds = [gaussian_std(sigma, spec.gauss_std)] * len(pert.original)
        for k in range(spec.mc_draws):
            gen = make_generator(ctx.seed(f"{key}/{k}"), ctx.device)
            z = standard_normals(pert.original, gen)
            pert.apply([zi.mul_(s) for zi, s in zip(z, stds, strict=True)])
            samples.append(ctx.evaluate().get(spec.target))
            rest = n - len(samples)
            if spec.early_stop and rest > 0:
                total = sum(samples)
                lo, hi = total / n, (total + rest * top) / n
                if decided(*deviation_range(lo, hi, base), spec.target_deviation,
                           spec.target_tolerance):
                    break
    mean = sum(samples) / len(samples)
    return abs(mean - base), {"mean": mean, "samples": samples}


def pacbayes_search(ctx: MeasureContext, magnitude: bool) -> SearchResult:
    """The σ (or σ') bisection of the plain or magnitude-aware PAC-Bayes family."""
    key = "search.pacbayes.mag" if magnitude else "search.pacbayes"
    return family_search(ctx, lambda s: pacbayes_deviation(ctx, s, magnitude, key), magnitude)


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
