"""The registered measures: one short function per measure, over shared cached ingredients.

Equation numbers are those of Jiang et al. 2020 ("Fantastic Generalization Measures"),
appendix C, as numbered in arXiv 1912.02178 and in the public code of Dziugaite et al. 2020;
where that numbering is not certain the appendix section is cited instead. Values are raw:
no dataset-size transform (√(v/m), ½(v − log m)) is applied here.

Ingredients (each computed once per model through ``ctx.cached``):

- ``weights``: ‖w‖², ‖w−w0‖² and ω over the selected parameter set;
- ``margin``: γ, the 10th-percentile margin on the eval subset;
- ``layer_norms``: per conv/linear weight (of the selected set) Frobenius, reshaped spectral
  and exact FFT spectral norms, of W and of W − W0;
- ``search.*``: the four bisections (PAC-Bayes, magnitude-aware PAC-Bayes, sharpness,
  magnitude-aware sharpness);
- ``hessian.*``: the curvature estimates on a seeded batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from qgen.measures.context import MeasureContext
from qgen.measures.curvature import Hvp, hutchinson_trace, make_hvp, power_iteration
from qgen.measures.norms import (
    LayerNorms,
    conv_input_sizes,
    layer_norms,
    margin_gamma,
    path_norm,
)
from qgen.measures.pacbayes import magnitude_log_sum, pacbayes_bound, pacbayes_search, sq_norm
from qgen.measures.registry import MeasureValue, register
from qgen.measures.search import SearchResult
from qgen.measures.sharpness import sharpness_search

JIANG = "Jiang et al. 2020, appendix C"


# ----------------------------------------------------------------------------- ingredients
@dataclass(frozen=True)
class WeightStats:
    """‖w‖², ‖w−w0‖² and ω over the selected set."""

    sq_norm: float
    dist_sq_norm: float
    omega: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(self.__dict__)


def bound_values(ctx: MeasureContext) -> tuple[list[Tensor], list[Tensor]]:
    """(w, w0) over the set the bound terms run over (``spec.bound_params``): the perturbed
    set, or only its conv/linear weight tensors."""
    if ctx.spec.bound_params == "perturbed":
        return ctx.w, ctx.w0
    idx = [i for i, is_m in enumerate(ctx.prep.params.matrix) if is_m]
    return [ctx.w[i] for i in idx], [ctx.w0[i] for i in idx]


def weight_stats(ctx: MeasureContext) -> WeightStats:
    """Cached ‖w‖², ‖w−w0‖², ω over the bound set (:func:`bound_values`)."""
    def compute() -> WeightStats:
        w, w0 = bound_values(ctx)
        dist = [a - b for a, b in zip(w, w0, strict=True)]
        return WeightStats(sq_norm(w), sq_norm(dist), sum(t.numel() for t in w))
    return ctx.cached("weights", compute)


@dataclass(frozen=True)
class Margin:
    """γ (10th-percentile margin, signed) and the value the measures use, |γ|."""

    gamma: float

    @property
    def used(self) -> float:
        """|γ|: a negative γ (over 10% misclassified) is used by magnitude, as the public
        code does, and flagged in the diagnostics."""
        return abs(self.gamma)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"gamma": self.gamma, "used": self.used, "negative": self.gamma < 0}


def margin(ctx: MeasureContext) -> Margin:
    """Cached margin γ on the eval subset."""
    return ctx.cached("margin", lambda: Margin(margin_gamma(ctx.evaluator.logits(ctx.eval_model()),
                                                            ctx.y)))


def norms(ctx: MeasureContext) -> LayerNorms:
    """Cached per-layer norms of the matrix weights of the selected set."""
    def compute() -> LayerNorms:
        p = ctx.prep.params
        idx = [i for i, is_m in enumerate(p.matrix) if is_m]
        sizes = conv_input_sizes(ctx.model, ctx.x[:1])
        return layer_norms([p.names[i] for i in idx], [p.owners[i] for i in idx],
                           [ctx.w[i] for i in idx], [ctx.w0[i] for i in idx], sizes)
    return ctx.cached("layer_norms", compute)


def search(ctx: MeasureContext, family: str, magnitude: bool) -> SearchResult:
    """Cached bisection of a flatness family ('pacbayes' or 'sharpness')."""
    key = f"search.{family}" + (".mag" if magnitude else "")
    fn = pacbayes_search if family == "pacbayes" else sharpness_search
    return ctx.cached(key, lambda: fn(ctx, magnitude))


def _search_diag(res: SearchResult, key: str) -> dict[str, Any]:
    return {"scale": res.value, "search": key, "converged": res.converged,
            "saturated": res.saturated, "saturation": res.saturation,
            "bracket": list(res.bracket), "scale_stderr": res.value_stderr}


# ------------------------------------------------------------------------- vector norms
@register("norm.l2", equation="‖w‖₂ over the bound set (bound_params)", needs=("weights",))
def _l2(ctx: MeasureContext) -> float:
    return math.sqrt(weight_stats(ctx).sq_norm)


@register("norm.l2_dist", equation="‖w − w0‖₂ over the bound set (bound_params)",
          needs=("weights", "w0"))
def _l2_dist(ctx: MeasureContext) -> float:
    return math.sqrt(weight_stats(ctx).dist_sq_norm)


@register("norm.params", equation=f"ω, number of parameters in the bound set ({JIANG}, "
                                  "eq. 20)",
          needs=("weights",))
def _params(ctx: MeasureContext) -> float:
    return float(weight_stats(ctx).omega)


@register("norm.inverse_margin", equation=f"1/γ², γ = 10th-percentile margin ({JIANG}, eq. 22)",
          needs=("margin",))
def _inverse_margin(ctx: MeasureContext) -> MeasureValue:
    g = margin(ctx)
    return MeasureValue(1.0 / g.used**2 if g.used > 0 else math.inf, g.to_dict())


# ------------------------------------------------------------- spectral and Frobenius
def _log_sum(values: list[float]) -> float:
    return sum(math.log(v) if v > 0 else -math.inf for v in values)


def _spectral_family(kind: str) -> None:
    """Register the spectral-norm measures for ``kind`` 'spectral' (reshaped kernel,
    approximate) or 'spectral_fft' (exact circular-convolution operator norm)."""
    pre = f"norm.{kind}"
    how = ("reshaped-kernel approximation" if kind == "spectral"
           else "exact FFT operator norm, Sedghi et al. 2019")

    def spec_sq(ctx: MeasureContext) -> list[float]:
        n = norms(ctx)
        return n.spec_sq if kind == "spectral" else n.spec_fft_sq

    def dist_spec_sq(ctx: MeasureContext) -> list[float]:
        n = norms(ctx)
        return n.dist_spec_sq if kind == "spectral" else n.dist_spec_fft_sq

    def diag(ctx: MeasureContext) -> dict[str, Any]:
        n = norms(ctx)
        return {"fft_inexact_layers": n.fft_inexact} if kind == "spectral_fft" else {}

    def log_prod(ctx: MeasureContext) -> float:
        return _log_sum(spec_sq(ctx))

    def over_margin(ctx: MeasureContext) -> float:
        return log_prod(ctx) - 2 * math.log(margin(ctx).used)

    def fro_over_spec(ctx: MeasureContext) -> float:
        return sum(f / s for f, s in zip(norms(ctx).fro_sq, spec_sq(ctx), strict=True))

    @register(f"{pre}_log_prod", equation=f"Σ_j log ‖W_j‖₂² ({how}; {JIANG}, eq. 32)",
              needs=("layer_norms",))
    def _lp(ctx: MeasureContext) -> MeasureValue:
        return MeasureValue(log_prod(ctx), diag(ctx))

    @register(f"{pre}_log_prod_margin",
              equation=f"Σ_j log ‖W_j‖₂² − 2 log γ ({how}; {JIANG}, eq. 31)",
              needs=("layer_norms", "margin"))
    def _lpm(ctx: MeasureContext) -> MeasureValue:
        return MeasureValue(over_margin(ctx), diag(ctx))

    @register(f"{pre}_log_sum",
              equation=f"log d + (1/d) Σ_j log ‖W_j‖₂² ({how}; {JIANG}, eq. 35)",
              needs=("layer_norms",))
    def _ls(ctx: MeasureContext) -> MeasureValue:
        d = len(spec_sq(ctx))
        return MeasureValue(math.log(d) + log_prod(ctx) / d, diag(ctx))

    @register(f"{pre}_log_sum_margin",
              equation=f"log d + (1/d)(Σ_j log ‖W_j‖₂² − 2 log γ) ({how}; {JIANG}, eq. 34)",
              needs=("layer_norms", "margin"))
    def _lsm(ctx: MeasureContext) -> MeasureValue:
        d = len(spec_sq(ctx))
        return MeasureValue(math.log(d) + over_margin(ctx) / d, diag(ctx))

    @register(f"{pre}_fro_over_spec",
              equation=f"Σ_j ‖W_j‖_F² / ‖W_j‖₂² ({how}; {JIANG}, eq. 33)",
              needs=("layer_norms",))
    def _fos(ctx: MeasureContext) -> MeasureValue:
        return MeasureValue(fro_over_spec(ctx), diag(ctx))

    @register(f"{pre}_init_main",
              equation=f"Σ log ‖W_j‖₂² − 2 log γ + log Σ_j ‖W_j−W0_j‖_F²/‖W_j‖₂² "
                       f"({how}; {JIANG}, eq. 29)",
              needs=("layer_norms", "margin", "w0"))
    def _im(ctx: MeasureContext) -> MeasureValue:
        ratio = sum(f / s for f, s in zip(norms(ctx).dist_fro_sq, spec_sq(ctx), strict=True))
        return MeasureValue(over_margin(ctx) + math.log(ratio), diag(ctx))

    @register(f"{pre}_orig_main",
              equation=f"Σ log ‖W_j‖₂² − 2 log γ + log Σ_j ‖W_j‖_F²/‖W_j‖₂² "
                       f"({how}; {JIANG}, eq. 30)",
              needs=("layer_norms", "margin"))
    def _om(ctx: MeasureContext) -> MeasureValue:
        return MeasureValue(over_margin(ctx) + math.log(fro_over_spec(ctx)), diag(ctx))

    @register(f"{pre}_dist_init", equation=f"Σ_j ‖W_j − W0_j‖₂² ({how}; {JIANG}, eq. 41)",
              needs=("layer_norms", "w0"))
    def _di(ctx: MeasureContext) -> MeasureValue:
        return MeasureValue(sum(dist_spec_sq(ctx)), diag(ctx))


_spectral_family("spectral")
_spectral_family("spectral_fft")


def _fro_log_prod(ctx: MeasureContext) -> float:
    return _log_sum(norms(ctx).fro_sq)


@register("norm.frobenius_log_prod", equation=f"Σ_j log ‖W_j‖_F² ({JIANG}, eq. 37)",
          needs=("layer_norms",))
def _flp(ctx: MeasureContext) -> float:
    return _fro_log_prod(ctx)


@register("norm.frobenius_log_prod_margin",
          equation=f"Σ_j log ‖W_j‖_F² − 2 log γ ({JIANG}, eq. 36)", needs=("layer_norms", "margin"))
def _flpm(ctx: MeasureContext) -> float:
    return _fro_log_prod(ctx) - 2 * math.log(margin(ctx).used)


@register("norm.frobenius_log_sum", equation=f"log d + (1/d) Σ_j log ‖W_j‖_F² ({JIANG}, eq. 39)",
          needs=("layer_norms",))
def _fls(ctx: MeasureContext) -> float:
    d = len(norms(ctx).fro_sq)
    return math.log(d) + _fro_log_prod(ctx) / d


@register("norm.frobenius_log_sum_margin",
          equation=f"log d + (1/d)(Σ_j log ‖W_j‖_F² − 2 log γ) ({JIANG}, eq. 38)",
          needs=("layer_norms", "margin"))
def _flsm(ctx: MeasureContext) -> float:
    d = len(norms(ctx).fro_sq)
    return math.log(d) + (_fro_log_prod(ctx) - 2 * math.log(margin(ctx).used)) / d


@register("norm.frobenius_dist", equation=f"Σ_j ‖W_j − W0_j‖_F² ({JIANG}, eq. 40)",
          needs=("layer_norms", "w0"))
def _fd(ctx: MeasureContext) -> float:
    return sum(norms(ctx).dist_fro_sq)


@register("norm.frobenius_param_norm", equation=f"Σ_j ‖W_j‖_F² ({JIANG}, eq. 42)",
          needs=("layer_norms",))
def _fpn(ctx: MeasureContext) -> float:
    return sum(norms(ctx).fro_sq)


# ------------------------------------------------------------------------------ path norm
@dataclass(frozen=True)
class PathNorm:
    """f_{w²}(1) and the folding report of the squared copy."""

    value: float
    folded: int
    unfolded_bn: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"value": self.value, "folded": self.folded, "unfolded_bn": list(self.unfolded_bn)}


def path(ctx: MeasureContext) -> PathNorm:
    """Cached path norm of the prepared model (BN folded, quantizers off, params squared)."""
    def compute() -> PathNorm:
        value, report = path_norm(ctx.model, ctx.input_shape, ctx.device)
        return PathNorm(value, len(report.folded), report.unfolded)
    return ctx.cached("path", compute)


@register("norm.path", equation=f"Σ_paths Π w² = Σ f_(w²)(1) ({JIANG}, eq. 44)", needs=("path",))
def _path(ctx: MeasureContext) -> MeasureValue:
    p = path(ctx)
    return MeasureValue(p.value, p.to_dict())


@register("norm.path_margin", equation=f"Σ f_(w²)(1) / γ² ({JIANG}, eq. 43)",
          needs=("path", "margin"))
def _path_margin(ctx: MeasureContext) -> float:
    return path(ctx).value / margin(ctx).used ** 2


# ---------------------------------------------------------------------------- PAC-Bayes
def _pacbayes(ctx: MeasureContext, which: str) -> MeasureValue:
    res = search(ctx, "pacbayes", False)
    s = res.value
    ws = weight_stats(ctx)
    diag = _search_diag(res, "search.pacbayes")
    if which == "flatness":
        return MeasureValue(1 / s**2 if s > 0 else math.inf, diag)
    ref = ws.dist_sq_norm if which == "init" else ws.sq_norm
    return MeasureValue(pacbayes_bound(ref, s, ctx.m), diag)


@register("pacbayes.init", equation=f"‖w−w0‖²/(4σ²) + log(m/σ) + 10 ({JIANG}, eq. 48)",
          needs=("search.pacbayes", "weights", "w0"))
def _pb_init(ctx: MeasureContext) -> MeasureValue:
    return _pacbayes(ctx, "init")


@register("pacbayes.orig", equation=f"‖w‖²/(4σ²) + log(m/σ) + 10 ({JIANG}, eq. 49)",
          needs=("search.pacbayes", "weights"))
def _pb_orig(ctx: MeasureContext) -> MeasureValue:
    return _pacbayes(ctx, "orig")


@register("pacbayes.flatness", equation=f"1/σ² ({JIANG}, eq. 53)", needs=("search.pacbayes",))
def _pb_flat(ctx: MeasureContext) -> MeasureValue:
    return _pacbayes(ctx, "flatness")


def _mag_denominator(ctx: MeasureContext, which: str) -> list[Tensor]:
    """Per-weight denominator values: w − w0 for init; w (or w − w0, the public code's quirk,
    when ``mag_orig_denominator='w_minus_w0'``) for orig."""
    w, w0 = bound_values(ctx)
    if which == "init" or ctx.spec.mag_orig_denominator == "w_minus_w0":
        return [a - b for a, b in zip(w, w0, strict=True)]
    return w


def _pacbayes_mag(ctx: MeasureContext, which: str) -> MeasureValue:
    res = search(ctx, "pacbayes", True)
    s = res.value
    diag = _search_diag(res, "search.pacbayes.mag")
    if which == "flatness":
        return MeasureValue(1 / s**2 if s > 0 else math.inf, diag)
    if s <= 0:
        return MeasureValue(math.inf, diag)
    ws = weight_stats(ctx)
    ref = ws.dist_sq_norm if which == "init" else ws.sq_norm
    total = magnitude_log_sum(s**2 + 1, ref, _mag_denominator(ctx, which), s**2,
                              ctx.spec.mag_eps)
    return MeasureValue(total + math.log(ctx.m / s) + 10, diag)


@register("pacbayes.mag.init",
          equation="¼ Σ_i log[(ε² + (σ'²+1)‖w−w0‖²/ω)/(ε² + σ'²(w_i−w0_i)²)] + log(m/σ') + 10 "
                   f"({JIANG}, eq. 56)",
          needs=("search.pacbayes.mag", "weights", "w0"))
def _pbm_init(ctx: MeasureContext) -> MeasureValue:
    return _pacbayes_mag(ctx, "init")


@register("pacbayes.mag.orig",
          equation="¼ Σ_i log[(ε² + (σ'²+1)‖w‖²/ω)/(ε² + σ'² w_i²)] + log(m/σ') + 10 "
                   f"({JIANG}, eq. 57)",
          needs=("search.pacbayes.mag", "weights"))
def _pbm_orig(ctx: MeasureContext) -> MeasureValue:
    return _pacbayes_mag(ctx, "orig")


@register("pacbayes.mag.flatness", equation=f"1/σ'² ({JIANG}, eq. 61)",
          needs=("search.pacbayes.mag",))
def _pbm_flat(ctx: MeasureContext) -> MeasureValue:
    return _pacbayes_mag(ctx, "flatness")


# ---------------------------------------------------------------------------- sharpness
def _sharpness(ctx: MeasureContext, which: str) -> MeasureValue:
    res = search(ctx, "sharpness", False)
    a = res.value
    diag = _search_diag(res, "search.sharpness")
    if a <= 0:
        return MeasureValue(math.inf, diag)
    if which == "flatness":
        return MeasureValue(1 / a**2, diag)
    ws = weight_stats(ctx)
    ref = ws.dist_sq_norm if which == "init" else ws.sq_norm
    value = ref * math.log(2 * ws.omega) / (4 * a**2) + math.log(ctx.m / a) + 10
    return MeasureValue(value, diag)


@register("sharpness.init",
          equation=f"‖w−w0‖² log(2ω)/(4α'²) + log(m/α') + 10 ({JIANG}.4, sharpness-init)",
          needs=("search.sharpness", "weights", "w0"))
def _sh_init(ctx: MeasureContext) -> MeasureValue:
    return _sharpness(ctx, "init")


@register("sharpness.orig",
          equation=f"‖w‖² log(2ω)/(4α'²) + log(m/α') + 10 ({JIANG}.4, sharpness-orig)",
          needs=("search.sharpness", "weights"))
def _sh_orig(ctx: MeasureContext) -> MeasureValue:
    return _sharpness(ctx, "orig")


@register("sharpness.flatness", equation=f"1/α'² ({JIANG}.4, sharpness-flatness)",
          needs=("search.sharpness",))
def _sh_flat(ctx: MeasureContext) -> MeasureValue:
    return _sharpness(ctx, "flatness")


def _sharpness_mag(ctx: MeasureContext, which: str) -> MeasureValue:
    res = search(ctx, "sharpness", True)
    a = res.value
    diag = _search_diag(res, "search.sharpness.mag")
    if a <= 0:
        return MeasureValue(math.inf, diag)
    if which == "flatness":
        return MeasureValue(1 / a**2, diag)
    ws = weight_stats(ctx)
    delta = ctx.spec.delta
    ref = ws.dist_sq_norm if which == "init" else ws.sq_norm
    c = a**2 + 4 * math.log(2 * ws.omega / delta)
    # the floor of the perturbation: ε, or α'ε with the radius α'(|w| + ε)
    eps = ctx.spec.mag_eps * (a if ctx.spec.sharpness_mag_radius == "scaled" else 1.0)
    total = magnitude_log_sum(c, ref, _mag_denominator(ctx, which), a**2, eps)
    return MeasureValue(total + math.log(ctx.m / delta) + 10, diag)


@register("sharpness.mag.init",
          equation="¼ Σ_i log[(ε² + (α'² + 4 log(2ω/δ))‖w−w0‖²/ω)/(ε² + α'²(w_i−w0_i)²)] "
                   f"+ log(m/δ) + 10, ε → α'ε for the scaled radius ({JIANG}.5, "
                   "sharpness-mag-init)",
          needs=("search.sharpness.mag", "weights", "w0"))
def _shm_init(ctx: MeasureContext) -> MeasureValue:
    return _sharpness_mag(ctx, "init")


@register("sharpness.mag.orig",
          equation="¼ Σ_i log[(ε² + (α'² + 4 log(2ω/δ))‖w‖²/ω)/(ε² + α'² w_i²)] "
                   f"+ log(m/δ) + 10, ε → α'ε for the scaled radius ({JIANG}.5, "
                   "sharpness-mag-orig)",
          needs=("search.sharpness.mag", "weights"))
def _shm_orig(ctx: MeasureContext) -> MeasureValue:
    return _sharpness_mag(ctx, "orig")


@register("sharpness.mag.flatness", equation=f"1/α'² ({JIANG}.5, sharpness-mag-flatness)",
          needs=("search.sharpness.mag",))
def _shm_flat(ctx: MeasureContext) -> MeasureValue:
    return _sharpness_mag(ctx, "flatness")


# ---------------------------------------------------------------------------- curvature
def _hvp(ctx: MeasureContext) -> Hvp:
    """Cached Hessian-vector product of the train loss on one seeded batch of the subset."""
    def compute() -> Hvp:
        x, y = ctx.batches("hessian/batch", ctx.spec.hessian_batch)(0)
        return make_hvp(ctx.model, ctx.prep.params.tensors, x, y)
    return ctx.cached("hessian.hvp", compute)


@register("hessian.trace",
          equation="tr(∇²L̂(w)) by Hutchinson's estimator with Rademacher probes "
                   "(QGen's regularizer ≈ (s²/24)·tr(H))",
          needs=("hessian",))
def _trace(ctx: MeasureContext) -> MeasureValue:
    est = ctx.cached("hessian.trace", lambda: hutchinson_trace(
        _hvp(ctx), ctx.prep.params.tensors, ctx.spec.hessian_samples,
        ctx.seed("hessian/trace")))
    return MeasureValue(est.value, {"stderr": est.stderr, "samples": ctx.spec.hessian_samples,
                                    "batch": min(ctx.spec.hessian_batch, len(ctx.x))})


@register("hessian.top_eig",
          equation="largest-magnitude eigenvalue of ∇²L̂(w) by power iteration",
          needs=("hessian",))
def _top_eig(ctx: MeasureContext) -> MeasureValue:
    est = ctx.cached("hessian.top_eig", lambda: power_iteration(
        _hvp(ctx), ctx.prep.params.tensors, ctx.spec.power_iters,
        ctx.seed("hessian/power")))
    hist = est.history
    rel = abs(hist[-1] - hist[-2]) / max(abs(hist[-1]), 1e-30) if len(hist) > 1 else math.nan
    return MeasureValue(est.value, {"iterations": est.iterations, "last_rel_change": rel,
                                    "batch": min(ctx.spec.hessian_batch, len(ctx.x))})
