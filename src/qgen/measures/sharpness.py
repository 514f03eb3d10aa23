"""Sharpness measures: the worst-case α search and the bounds built on it.

α' is the largest α such that the worst perturbation u in the set S(α) raises the train
error by the target 0.1 (Jiang et al. 2020, appendix C.4; measures.md). With a per-weight
radius r_i = α (plain) or, magnitude-aware, α(|w_i| + ε) ('scaled', default) or α|w_i| + ε
('additive', Jiang's), S(α) is the box |u_i| ≤ r_i (default) or the ellipsoid ‖u/r‖₂ ≤ 1
('l2'). The scaled floor shrinks with α, so it cannot dominate the search: with Jiang's
additive ε = 1e-3 the ε-box alone (α = 0) raised the demo models' error by ~0.7, i.e. every
model hit the lower end and reported the same bound.

The worst case is searched by projected gradient *ascent* on the train cross-entropy, in the
scaled coordinates v = u/r where the set is the unit box/ball: a random start in the set,
``ascent_steps`` steps of v += lr·sign(∇_v L) (box) or lr·∇_v L/‖∇_v L‖ (l2) followed by
clipping/radial projection, on minibatches cycling through the eval subset. The random start
and the iterate with the largest minibatch loss (``ascent_keep='best'``; or the last one) are
evaluated on the whole eval subset, and the worst deviation over these points of all
``ascent_restarts`` restarts is kept.
Restart k uses the same seeded start and batch order for every α of the bisection.

Bounds (m: training-set size; ω: number of perturbed parameters; δ: ``spec.delta``):

- sharpness.init = ‖w−w0‖² log(2ω)/(4α'²) + log(m/α') + 10, .orig with ‖w‖²,
  .flatness = 1/α'². (Jiang writes log(m/σ) in this bound; σ there is the sharpness scale,
  so qgen uses α'.)
- sharpness.mag.init = ¼ Σ_i log[(ε² + (α'² + 4 log(2ω/δ))‖w−w0‖²/ω) / (ε² + α'²(w_i−w0_i)²)]
  + log(m/δ) + 10; .orig with ‖w‖² and w_i²; .flatness = 1/α'². With the 'scaled' radius the
  floor of the perturbation is α'ε, so α'ε takes the place of ε in these sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from qgen.measures.context import MeasureContext, family_search
from qgen.measures.perturb import Perturbation, make_generator, upcast
from qgen.measures.search import SearchResult, deviation


def radii(w: list[Tensor], alpha: float, magnitude: bool, eps: float,
          mag_radius: str = "scaled") -> list[Tensor]:
    """Per-weight radius r_i: α (plain); magnitude-aware α(|w_i| + ε) ('scaled') or
    α|w_i| + ε ('additive')."""
    if magnitude:
        if mag_radius == "scaled":
            return [alpha * (wi.abs() + eps) for wi in w]
        return [alpha * wi.abs() + eps for wi in w]
    return [torch.full_like(wi, alpha) for wi in w]


def _project(v: list[Tensor], kind: str) -> None:
    if kind == "box":
        for vi in v:
            vi.clamp_(-1.0, 1.0)
    else:
        norm = torch.sqrt(sum(vi.square().sum() for vi in v))
        if norm > 1.0:
            for vi in v:
                vi.div_(norm)


def _random_start(shapes: list[Tensor], kind: str, gen: torch.Generator) -> list[Tensor]:
    if kind == "box":
        return [torch.rand(s.shape, generator=gen, device=s.device, dtype=s.dtype) * 2 - 1
                for s in shapes]
    # Uniform direction, radius U^(1/n) would pile every point on the sphere for large n;
    # a uniform radius in [0, 1] spreads the starts through the ball instead.
    z = [torch.randn(s.shape, generator=gen, device=s.device, dtype=s.dtype) for s in shapes]
    norm = torch.sqrt(sum(zi.square().sum() for zi in z))
    radius = torch.rand((), generator=gen, device=shapes[0].device, dtype=shapes[0].dtype)
    return [zi * (radius / norm) for zi in z]


def worst_case(ctx: MeasureContext, r: list[Tensor], pert: Perturbation, restart_key: str
               ) -> tuple[list[Tensor], Callable[[], tuple[float, list[Tensor]]]]:
    """One restart inside {u : u/r in the unit set}: the random start u0, and a function that
    runs the projected gradient ascent from it and returns (the minibatch cross-entropy of
    the iterate kept, that iterate u). ``ascent_keep='best'`` keeps the iterate whose
    minibatch loss was the largest (the final one included), 'last' the final one. Split so
    the start can be evaluated before the ascent runs."""
    spec = ctx.spec
    kind = spec.sharpness_set
    gen = make_generator(ctx.seed(restart_key), ctx.device)
    v = _random_start(pert.original, kind, gen)
    start = [vi * ri for vi, ri in zip(v, r, strict=True)]

    def ascend() -> tuple[float, list[Tensor]]:
        batch = ctx.batches(restart_key + "/batches", spec.ascent_batch)
        params = ctx.prep.params.tensors
        best_loss, best_v = -math.inf, [vi.clone() for vi in v]
        loss_v = math.nan
        for step in range(spec.ascent_steps + 1):
            pert.apply([vi * ri for vi, ri in zip(v, r, strict=True)])
            xb, yb = batch(step)
            last = step == spec.ascent_steps
            with torch.enable_grad() if not last else torch.no_grad():
                loss = F.cross_entropy(upcast(ctx.model(xb)), yb)
                grads = None if last else torch.autograd.grad(loss, params, allow_unused=True)
            loss_v = float(loss.detach())
            if spec.ascent_keep == "best" and loss_v > best_loss:
                best_loss = loss_v
                for b, vi in zip(best_v, v, strict=True):
                    b.copy_(vi)
            if last:
                break
            with torch.no_grad():
                # Chain rule into the scaled coordinates: dL/dv = dL/du * r.
                gv = [torch.zeros_like(vi) if g is None else g * ri
                      for g, vi, ri in zip(grads, v, r, strict=True)]
                if kind == "box":
                    for vi, g in zip(v, gv, strict=True):
                        vi.add_(g.sign(), alpha=spec.ascent_lr)
                else:
                    gnorm = torch.sqrt(sum(g.square().sum() for g in gv))
                    if gnorm > 0:
                        for vi, g in zip(v, gv, strict=True):
                            vi.add_(g, alpha=spec.ascent_lr / float(gnorm))
                _project(v, kind)
        if spec.ascent_keep == "best":
            return best_loss, [vi * ri for vi, ri in zip(best_v, r, strict=True)]
        return loss_v, [vi * ri for vi, ri in zip(v, r, strict=True)]

    return start, ascend


def sharpness_deviation(ctx: MeasureContext, alpha: float, magnitude: bool,
                        key: str) -> tuple[float, dict[str, Any]]:
    """Worst deviation of the target metric over the evaluated points of all restarts (each
    restart's random start and the ascent iterate it keeps) at radius scale α.

    With ``early_stop``, the remaining evaluations are skipped once the worst so far already
    settles the search's step ('threshold': above the target; 'bisect': above target +
    tolerance): the maximum can only grow, so the decision is that of the full computation.
    """
    spec = ctx.spec
    base = ctx.base_metrics().get(spec.target)
    pert = Perturbation(ctx.prep.params)
    r = radii(pert.original, alpha, magnitude, spec.mag_eps, spec.sharpness_mag_radius)
    samples: list[dict[str, float]] = []
    worst = -math.inf
    margin = spec.target_tolerance if spec.search == "bisect" else 0.0

    def evaluate(u: list[Tensor]) -> float:
        pert.apply(u)
        return ctx.evaluate().get(spec.target)

    def dev(value: float) -> float:
        return deviation(value, base, spec.target, spec.deviation)

    def done() -> bool:
        return spec.early_stop and worst > spec.target_deviation + margin

    with pert:
        for k in range(spec.ascent_restarts):
            start, ascend = worst_case(ctx, r, pert, f"{key}/restart{k}")
            record = {"start": evaluate(start)}
            worst = max(worst, dev(record["start"]))
            if not done():
                record["ascent_loss"], u = ascend()
                record["final"] = evaluate(u)
                worst = max(worst, dev(record["final"]))
            samples.append(record)
            if done():
                break
    return worst, {"samples": samples}


def sharpness_search(ctx: MeasureContext, magnitude: bool) -> SearchResult:
    """The α' bisection of the plain or magnitude-aware sharpness family."""
    key = "search.sharpness.mag" if magnitude else "search.sharpness"
    floor = magnitude and ctx.spec.sharpness_mag_radius == "additive" and ctx.spec.mag_eps > 0
    return family_search(ctx, lambda a: sharpness_deviation(ctx, a, magnitude, key), magnitude,
                         floor=floor)
