"""The regularizer implied by quantization noise, predicted and measured.

With Δ_i independent, zero-mean, variance s_i²/12, a second-order expansion of the loss gives

    E[L(w + Δ)] − L(w) ≈ ½ Σ_i (s_i²/12) H_ii = Σ_i (s_i²/24) H_ii

which is Σ_l (s_l²/24)·tr(H_ll) for one step per layer, and Σ_c (s_c²/24)·tr(H_cc) over the
channels for per-channel steps (docs/theory.md derives it). Three numbers, all on the same
batch and with the same activation quantizers on (only the weights differ between terms):

- **predicted**: Σ_i (s_i²/24)·H_ii by Hutchinson's estimator. One Hessian-vector product per
  Rademacher probe v gives every layer's share: E[v_i (Hv)_i] = H_ii, so
  Σ_{i∈l} v_i (Hv)_i estimates tr(H_ll) and Σ_i s_i² v_i (Hv)_i / 24 the regularizer; the
  totals over layers are :func:`qgen.measures.curvature.hutchinson_trace`'s.
- **rounding**: L(Q(w)) − L(w), the quantized network against its own latent weights.
- **uniform**: E[L(w + Δ')] − L(w) with fresh Δ'_i ~ U(−s_i/2, s_i/2), by Monte-Carlo over
  antithetic pairs: each draw is ½[L(w+Δ') + L(w−Δ')] − L(w), which has the same mean (the
  law is symmetric) but no first-order term gᵀΔ', whose variance would otherwise swamp the
  second-order effect. Its standard error is over the pairs.

The rounding gap is also split by its own quadratic model, gᵀΔ + ½ΔᵀHΔ with the actual
rounding error Δ: the first-order term is what the noise model assumes away (E[Δ] = 0,
Δ independent of the gradient), which a QAT-trained w need not satisfy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qgen.measures.curvature import Hvp, hutchinson_trace
from qgen.measures.perturb import make_generator

LossFn = Callable[[], Tensor]


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


@dataclass
class LossHvp:
    """L(w), ∇L(w) and Hessian-vector products of a scalar loss w.r.t. ``params``."""

    loss: float
    grads: list[Tensor]
    hvp: Hvp


def loss_hvp(loss_fn: LossFn, params: list[Tensor]) -> LossHvp:
    """Build Hessian-vector products of ``loss_fn()`` w.r.t. ``params`` by double backward.

    ``loss_fn`` evaluates the loss of the current parameter values (e.g. the mean
    cross-entropy of a model on a fixed batch); it is called once, with gradients on.
    """
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params,
                                                                         strict=True)]

    def hvp(v: list[Tensor]) -> list[Tensor]:
        with torch.enable_grad():
            dot = sum((g * vi).sum() for g, vi in zip(grads, v, strict=True))
            if not dot.requires_grad:  # the loss is linear in params: H = 0
                return [torch.zeros_like(p) for p in params]
            hv = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach()
                for h, p in zip(hv, params, strict=True)]

    return LossHvp(float(loss.detach()), [g.detach() for g in grads], hvp)


@dataclass
class LayerCurvature:
    """Hutchinson estimates, per parameter tensor and in total, of tr(H_ll) and of the
    predicted regularizer Σ_{i∈l} (s_i²/24)·H_ii, each with its standard error over probes
    (``probe_*``: the per-probe values, one list per tensor)."""

    names: list[str]
    trace: list[float]
    trace_se: list[float]
    regularizer: list[float]
    regularizer_se: list[float]
    trace_total: float
    trace_total_se: float
    regularizer_total: float
    regularizer_total_se: float
    probes: int
    probe_trace: list[list[float]] = field(default_factory=list)
    probe_regularizer: list[list[float]] = field(default_factory=list)

    def table(self) -> list[dict[str, float | str]]:
        """One row per tensor: name, trace, trace_se, regularizer, regularizer_se."""
        return [{"name": n, "trace": t, "trace_se": ts, "regularizer": r, "regularizer_se": rs}
                for n, t, ts, r, rs in zip(self.names, self.trace, self.trace_se,
                                           self.regularizer, self.regularizer_se, strict=True)]


def layer_curvature(hvp: Hvp, params: list[Tensor], steps: list[Tensor | None],
                    names: list[str], probes: int, seed: int) -> LayerCurvature:
    """Per-tensor tr(H_ll) and Σ_{i∈l}(s_i²/24)·H_ii from ``probes`` Rademacher probes.

    ``steps[l]`` is the step of each element of ``params[l]`` (a tensor broadcastable to it)
    or None for a tensor without quantization noise (its regularizer share is 0). The probes
    are those of :func:`~qgen.measures.curvature.hutchinson_trace` with the same seed, so
    ``trace_total`` is its estimate.
    """
    sq = [None if s is None else (s.to(p.dtype) ** 2).expand_as(p)
          for s, p in zip(steps, params, strict=True)]
    per_trace: list[list[float]] = [[] for _ in params]
    per_reg: list[list[float]] = [[] for _ in params]

    def recording(v: list[Tensor]) -> list[Tensor]:
        hv = hvp(v)
        for k, (vi, hi, s2) in enumerate(zip(v, hv, sq, strict=True)):
            prod = vi.double() * hi.double()
            per_trace[k].append(float(prod.sum()))
            per_reg[k].append(0.0 if s2 is None else float((prod * s2.double()).sum()) / 24)
        return hv

    total = hutchinson_trace(recording, params, probes, seed)
    reg_per_probe = [sum(r[j] for r in per_reg) for j in range(probes)]
    reg_total, reg_total_se = _mean_se(reg_per_probe)
    trace_stats = [_mean_se(t) for t in per_trace]
    reg_stats = [_mean_se(r) for r in per_reg]
    return LayerCurvature(
        names=list(names), trace=[m for m, _ in trace_stats], trace_se=[s for _, s in trace_stats],
        regularizer=[m for m, _ in reg_stats], regularizer_se=[s for _, s in reg_stats],
        trace_total=total.value, trace_total_se=total.stderr, regularizer_total=reg_total,
        regularizer_total_se=reg_total_se, probes=probes, probe_trace=per_trace,
        probe_regularizer=per_reg)


def uniform_noise(steps: list[Tensor], like: list[Tensor], gen: torch.Generator) -> list[Tensor]:
    """One draw of Δ'_i ~ U(−s_i/2, s_i/2), shaped like each tensor of ``like``."""
    out = []
    for s, p in zip(steps, like, strict=True):
        r = torch.rand(p.shape, generator=gen, device=p.device, dtype=p.dtype)
        out.append((r - 0.5) * s.to(p.dtype))
    return out


@dataclass
class NoisyLossGap:
    """Monte-Carlo estimate of E[L(w + Δ')] − L(w): mean, standard error, per-pair values."""

    value: float
    stderr: float
    base_loss: float
    samples: list[float]

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {"value": self.value, "stderr": self.stderr, "base_loss": self.base_loss,
                "samples": self.samples}


@torch.no_grad()
def uniform_loss_gap(loss_fn: LossFn, params: list[Tensor], steps: list[Tensor], pairs: int,
                     seed: int) -> NoisyLossGap:
    """E[L(w + Δ')] − L(w) for Δ'_i ~ U(−s_i/2, s_i/2), over ``pairs`` antithetic pairs.

    Each pair writes w + Δ' and then w − Δ' into ``params`` (in place) and takes
    ½[L(w+Δ') + L(w−Δ')] − L(w); the original values are written back at the end (a copy,
    so they are restored exactly). ``steps[l]`` broadcasts to ``params[l]``.
    """
    original = [p.detach().clone() for p in params]
    base = float(loss_fn())
    gen = make_generator(seed, params[0].device)
    samples = []
    try:
        for _ in range(pairs):
            noise = uniform_noise(steps, params, gen)
            plus_minus = []
            for sign in (1.0, -1.0):
                for p, o, d in zip(params, original, noise, strict=True):
                    torch.add(o, d, alpha=sign, out=p.data)
                plus_minus.append(float(loss_fn()))
            samples.append(0.5 * (plus_minus[0] + plus_minus[1]) - base)
    finally:
        for p, o in zip(params, original, strict=True):
            p.data.copy_(o)
    mean, se = _mean_se(samples)
    return NoisyLossGap(mean, se, base, samples)


def quadratic_terms(lh: LossHvp, delta: list[Tensor]) -> tuple[float, float]:
    """(gᵀΔ, ½ΔᵀHΔ) at w for the perturbation ``delta`` (the quadratic model of L(w+Δ)−L(w))."""
    first = sum(float((g.double() * d.double()).sum()) for g, d in zip(lh.grads, delta,
                                                                        strict=True))
    hd = lh.hvp([d.to(g.dtype) for g, d in zip(lh.grads, delta, strict=True)])
    second = 0.5 * sum(float((d.double() * h.double()).sum()) for d, h in zip(delta, hd,
                                                                               strict=True))
    return first, second
