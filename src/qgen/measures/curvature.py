"""Curvature of the training loss: Hessian trace (Hutchinson) and top eigenvalue (power
iteration), with respect to the selected parameters, on a fixed seeded batch.

Both use Hessian-vector products by double backward: g = ∇L (with a graph), Hv = ∇(g·v).
Hutchinson: tr(H) = E[vᵀHv] for Rademacher v (entries ±1); the estimate is the mean over
``hessian_samples`` probes and its standard error is reported with it. Power iteration:
v ← Hv/‖Hv‖ from a seeded random start, ``power_iters`` times; the Rayleigh quotient vᵀHv
estimates the eigenvalue of largest magnitude. QGen's regularizer is ≈ (s²/24)·tr(H).

On a quantized model in 'latent' mode the loss goes through the quantizers' straight-through
estimators, so these are the curvatures autograd sees through them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qgen.measures.perturb import make_generator, upcast

Hvp = Callable[[list[Tensor]], list[Tensor]]


def make_hvp(model: nn.Module, params: list[Tensor], x: Tensor, y: Tensor) -> Hvp:
    """A Hessian-vector-product function of the mean cross-entropy of ``model`` on (x, y)."""
    with torch.enable_grad():
        loss = F.cross_entropy(upcast(model(x)), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(v: list[Tensor]) -> list[Tensor]:
        with torch.enable_grad():
            dot = sum((g * vi).sum() for g, vi in zip(grads, v, strict=True))
            hv = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, params,
                                                                                 strict=True)]

    return hvp


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((ai.double() * bi.double()).sum() for ai, bi in zip(a, b, strict=True)))


@dataclass
class TraceEstimate:
    """Hutchinson estimate of tr(H): mean, its standard error and the per-probe values."""

    value: float
    stderr: float
    samples: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {"value": self.value, "stderr": self.stderr, "samples": self.samples}


def hutchinson_trace(hvp: Hvp, params: list[Tensor], samples: int, seed: int) -> TraceEstimate:
    """tr(H) ≈ mean of vᵀHv over ``samples`` Rademacher probes (seeded)."""
    gen = make_generator(seed, params[0].device)
    values = []
    for _ in range(samples):
        v = [torch.randint(0, 2, p.shape, generator=gen, device=p.device).to(p.dtype) * 2 - 1
             for p in params]
        values.append(_dot(v, hvp(v)))
    mean = sum(values) / len(values)
    if len(values) > 1:
        var = sum((x - mean) ** 2 for x in values) / (len(values) - 1)
        stderr = math.sqrt(var / len(values))
    else:
        stderr = math.nan
    return TraceEstimate(mean, stderr, values)


@dataclass
class EigenEstimate:
    """Power-iteration estimate of the largest-magnitude Hessian eigenvalue."""

    value: float
    iterations: int
    history: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {"value": self.value, "iterations": self.iterations, "history": self.history}


def power_iteration(hvp: Hvp, params: list[Tensor], iters: int, seed: int) -> EigenEstimate:
    """Largest-magnitude eigenvalue of H by ``iters`` power iterations from a seeded start."""
    gen = make_generator(seed, params[0].device)
    v = [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in params]
    norm = math.sqrt(_dot(v, v))
    v = [vi / norm for vi in v]
    history: list[float] = []
    for _ in range(iters):
        hv = hvp(v)
        history.append(_dot(v, hv))  # Rayleigh quotient of the current unit vector
        norm = math.sqrt(_dot(hv, hv))
        if norm == 0:
            break
        v = [h / norm for h in hv]
    return EigenEstimate(history[-1] if history else math.nan, len(history), history)
