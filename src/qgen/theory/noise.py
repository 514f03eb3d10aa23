"""Quantization noise as it is: statistics of Δ = Q(v) − v for weights and activations.

QGen's noise model says Δ/s is uniform on (−1/2, 1/2) (variance 1/12), independent of v.
For each quantizer this module measures how far that holds, on u = Δ/s (the error in units of
the step; with per-channel steps each element is divided by its own channel's step, so the
channels pool into one comparable sample):

- ``mean``, ``var`` of u and ``var_ratio = 12·var(u)`` = var(Δ)/(s²/12) for a per-tensor
  step, with its standard error sqrt((μ₄ − var²)/n)·12 (μ₄ the fourth central moment);
- in the tensor's own units: ``delta_var`` = var(Δ) against ``predicted_var`` = mean(s_i²)/12,
  and the noise-to-signal ratios ``nsr`` = mean(Δ²)/mean(v²) and ``nsr_predicted`` =
  (mean(s_i²)/12)/mean(v²): dimensionless, so layers and bit widths compare (the report plots
  them against the bit width, beside the 4^(−b) line of a fixed clipping range);
- ``saturated_fraction``: elements outside the clip range (v/s < −Qn or v/s > Qp), and
  ``clipped_fraction``: those beyond it by more than half a step (v/s < −Qn − ½ or
  v/s > Qp + ½): there |Δ| > s/2, outside the uniform's support;
- ``var_ratio_unclipped`` and a Kolmogorov–Smirnov test of the unclipped u against
  U(−½, ½) (scipy.stats.kstest, asymptotic p-value; at most ``ks_max`` elements, a seeded
  sample);
- ``exact_fraction``: elements already on a code (Δ = 0 exactly), e.g. a ReLU's zeros
  before an unsigned activation quantizer: no noise at all there; ``var_ratio_nonexact``:
  12·var(u) over the unclipped elements that are not on a code.

The elements are treated as i.i.d. draws; they are one tensor's values, so the test says how
uniform the *empirical* error distribution is, not that Δ is random.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from qgen.quant import LSQQuantizer, quant_layers
from qgen.quant.lsq import broadcast_shape
from qgen.theory.settings import ACTIVATION_MODES

#: variance of U(−1/2, 1/2)
UNIFORM_VAR = 1.0 / 12.0


@dataclass
class NoiseStats:
    """Statistics of one quantizer's error u = Δ/s (see the module docstring)."""

    name: str
    role: str
    bits: int
    granularity: str
    n: int
    step: float
    mean: float
    var: float
    var_ratio: float
    var_ratio_se: float
    var_ratio_unclipped: float
    ks_stat: float
    ks_pvalue: float
    ks_n: int
    clipped_fraction: float
    exact_fraction: float
    saturated_fraction: float
    var_ratio_nonexact: float
    delta_var: float
    predicted_var: float
    signal_ms: float
    nsr: float
    nsr_predicted: float

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return asdict(self)


def element_steps(quantizer: LSQQuantizer, v: Tensor) -> Tensor:
    """The step each element of ``v`` is quantized with (the channel's, for per-channel)."""
    s = quantizer.effective_step().to(v.dtype)
    if quantizer.per_channel:
        s = s.view(broadcast_shape(v.dim(), quantizer.ch_axis, s.numel()))
    return s.expand_as(v)


def error_stats(name: str, quantizer: LSQQuantizer, v: Tensor, q: Tensor, *, ks_max: int,
                seed: int) -> NoiseStats:
    """Statistics of the error ``q − v`` of ``quantizer`` (``q`` its output for input ``v``)."""
    from scipy import stats

    v64 = v.detach().double().reshape(-1)
    s = element_steps(quantizer, v.detach()).double().reshape(-1)
    x = v64 / s
    delta = q.detach().double().reshape(-1) - v64
    u = delta / s
    clipped = (x < -quantizer.Qn - 0.5) | (x > quantizer.Qp + 0.5)
    n = u.numel()
    mean = float(u.mean())
    c = u - mean
    var = float(c.square().mean())
    m4 = float(c.pow(4).mean())
    inside = u[~clipped]
    nonexact = inside[inside != 0]
    sample = inside
    if sample.numel() > ks_max:
        gen = torch.Generator().manual_seed(seed)
        sample = sample[torch.randperm(sample.numel(), generator=gen)[:ks_max]]
    if sample.numel() > 0:
        # asymptotic p-value: scipy's exact one costs O(n²) for n ≤ 10⁴ and says the same here
        ks = stats.kstest(sample.cpu().numpy(), "uniform", args=(-0.5, 1.0), method="asymp")
        ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
        var_in = float(inside.var(unbiased=False))
    else:
        ks_stat = ks_p = var_in = math.nan
    var_nonexact = float(nonexact.var(unbiased=False)) if nonexact.numel() else math.nan
    predicted_var = float(s.square().mean()) / 12
    signal_ms = float(v64.square().mean())
    return NoiseStats(
        name=name, role=quantizer.role, bits=quantizer.bits,
        granularity="channel" if quantizer.per_channel else "tensor", n=n,
        step=float(s.square().mean().sqrt()), mean=mean, var=var,
        var_ratio=var / UNIFORM_VAR, var_ratio_se=math.sqrt(max(m4 - var * var, 0.0) / n)
        / UNIFORM_VAR, var_ratio_unclipped=var_in / UNIFORM_VAR, ks_stat=ks_stat,
        ks_pvalue=ks_p, ks_n=int(sample.numel()), clipped_fraction=float(clipped.double().mean()),
        exact_fraction=float((u == 0).double().mean()),
        saturated_fraction=float(((x < -quantizer.Qn) | (x > quantizer.Qp)).double().mean()),
        var_ratio_nonexact=var_nonexact / UNIFORM_VAR, delta_var=float(delta.var(unbiased=False)),
        predicted_var=predicted_var, signal_ms=signal_ms,
        nsr=float(delta.square().mean()) / signal_ms if signal_ms > 0 else math.nan,
        nsr_predicted=predicted_var / signal_ms if signal_ms > 0 else math.nan)


@contextmanager
def quantizers_enabled(quantizers: list[LSQQuantizer], enabled: bool) -> Iterator[None]:
    """Switch ``quantizers`` on or off for the block, then back to how each was."""
    before = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = enabled
    try:
        yield
    finally:
        for q, b in zip(quantizers, before, strict=True):
            q.enabled = b


@contextmanager
def activations_as(quantizers: list[LSQQuantizer], mode: str) -> Iterator[None]:
    """Make the activation ``quantizers`` act as ``mode`` for the block, then restore them.

    - ``quantized``: as trained (round and clip); the loss is then a staircase in the
      weights: a relative change of 1e-6 in one layer's weights moves the demo's 8-bit
      training loss by ~4e-5, the size of the whole 8-bit regularizer;
    - ``clipped``: clip to the quantizer's range [−Qn·s, Qp·s] without rounding: the
      network keeps the range its layers were trained with (a 2-bit NiN with float
      activations has a training loss of ~11 instead of ~0.07) and the loss is smooth
      between ReLU-like kinks;
    - ``float``: the identity (quantizers off).
    """
    if mode not in ACTIVATION_MODES:
        raise ValueError(f"activation mode {mode!r}: must be one of {ACTIVATION_MODES}")
    if mode == "quantized":
        yield
        return
    hooks = []
    if mode == "clipped":
        for q in quantizers:
            hooks.append(q.register_forward_hook(_clip_hook))
    try:
        with quantizers_enabled(quantizers, False):
            yield
    finally:
        for h in hooks:
            h.remove()


def _clip_hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """Forward hook: the quantizer's clip without its rounding (differentiable)."""
    q: LSQQuantizer = module  # type: ignore[assignment]
    v = args[0]
    s = q.effective_step().detach().to(v.dtype)
    if not q.per_channel:
        return v.clamp(-q.Qn * float(s), q.Qp * float(s))
    s = element_steps(q, v).detach()
    return torch.minimum(torch.maximum(v, -q.Qn * s), q.Qp * s)


def weight_quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every quantized Conv2d/Linear that has a weight quantizer."""
    return [(n, m) for n, m in quant_layers(model) if m.w_quant is not None]


@torch.no_grad()
def weight_noise(model: nn.Module, *, ks_max: int = 20000, seed: int = 0) -> list[NoiseStats]:
    """Per weight-quantized layer: the statistics of Q(w) − w (the layer's name, ``<n>``)."""
    out = []
    for i, (name, layer) in enumerate(weight_quantized_layers(model)):
        wq = layer.w_quant
        with quantizers_enabled([wq], True):
            q = wq(layer.weight)
        out.append(error_stats(name, wq, layer.weight, q, ks_max=ks_max, seed=seed + i))
    return out


@torch.no_grad()
def activation_noise(model: nn.Module, x: Tensor, *, ks_max: int = 20000,
                     seed: int = 0) -> list[NoiseStats]:
    """Per enabled activation quantizer: the statistics of Q(a) − a on the batch ``x``.

    One forward of ``x`` through ``model`` as it is (every quantizer as it is set, so each
    layer sees the inputs the quantized network gives it); a forward hook on each activation
    quantizer reads its input a and output Q(a). Named after the layer whose input it is.
    """
    found: list[NoiseStats] = []
    hooks = []
    layers = [(n, m) for n, m in quant_layers(model)
              if m.a_quant is not None and m.a_quant.enabled]
    for i, (name, layer) in enumerate(layers):
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor,
                 name: str = name, i: int = i) -> None:
            found.append(error_stats(name, module, args[0], output, ks_max=ks_max,
                                     seed=seed + i))

        hooks.append(layer.a_quant.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    order = {name: k for k, (name, _) in enumerate(layers)}
    return sorted(found, key=lambda s: order[s.name])
