"""The LSQ quantizer: one autograd Function and the module that holds the learned step size.

LSQ (Esser et al., ICLR 2020) fake-quantizes a tensor ``v`` with a learned step ``s > 0``::

    v_bar = round(clip(v / s, -Qn, Qp))      v_hat = v_bar * s
    signed:   Qn = 2^(b-1), Qp = 2^(b-1) - 1          unsigned: Qn = 0, Qp = 2^b - 1

with the straight-through gradients

    d v_hat / d v = 1 inside [-Qn*s, Qp*s], 0 outside
    d v_hat / d s = round(v/s) - v/s inside, -Qn below, Qp above

and the step gradient multiplied by ``g = 1 / sqrt(N * Qp)``, which changes no forward value.
Conventions for N (tested in ``tests/test_quant.py``):

- weights, per-tensor step: N = number of elements of the weight;
- weights, per-channel steps: N = elements per output channel (``numel / C``), *not* the whole
  tensor, which would under-scale every channel's gradient by sqrt(C);
- activations: N = features per example = ``numel / batch``, read from each input's shape.

Mixed precision: under ``torch.autocast`` a quantizer still computes in float32 (its input
cast up, autocast off inside; :meth:`LSQQuantizer.forward`), so a bf16 activation gets the
codes the float32 quantizer gives the same values, and the step gradient is summed in float32.

Positivity: the quantizer uses ``s_eff = max(|s|, eps)`` and the step gradient is multiplied
by sign(s) (+1 at 0), so the learned parameter may cross zero without harm: an optimizer step
that overshoots to -0.003 quantizes with 0.003, and the optimizer state (momentum) stays
that of the parameter it updates. Projecting the parameter onto a tiny floor instead kills
the layer: with SGD momentum a step overshoots below zero within a few updates, lands on the
floor, every code clips, the layer's output falls under BatchNorm's eps and the step gradient
explodes (docs/quantization.md has the measurement). eps (1e-8) only keeps an exactly-zero
step finite.

:func:`lsq_fake_quant` is one autograd Function with a hand-written forward and backward:
six elementwise ops give the output, the STE mask and the per-element step-gradient factor;
the backward is one multiply (input gradient) and one dot product (step gradient). Activations
(``recompute``) keep only their input and redo the mask and factor in the backward. All ops
are in place where they can be: on the CPU each elementwise op over an activation is a trip
through memory, and each megabyte held from forward to backward is a megabyte of fresh pages
(page faults) in the next step; both cost more than a few Python-level calls.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from qgen.errors import QgenError

#: smallest step size used by the forward (float32/64); half types use their smallest normal
STEP_EPS = 1e-8


#: how a step is kept positive (see LSQQuantizer): 'abs' (default) or 'clamp' (spec version 1)
POSITIVITY_RULES = ("abs", "clamp")


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """``(Qn, Qp)`` of a ``bits``-bit quantizer: the codes are the integers in [-Qn, Qp]."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise QgenError(f"quantizer bits: must be an integer 2..8, got {bits!r}")
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@functools.cache
def step_eps(dtype: torch.dtype) -> float:
    """The positivity floor of a step of ``dtype`` (never below the type's smallest normal)."""
    return max(STEP_EPS, torch.finfo(dtype).tiny)


def effective_step(step: Tensor) -> Tensor:
    """The step the quantizer uses: ``max(|s|, eps)`` (see "Positivity" in the module docstring)."""
    return step.abs().clamp_min(step_eps(step.dtype))


def lsq_init_step(v: Tensor, qp: int, ch_axis: int | None = None) -> Tensor:
    """LSQ start value ``2 * mean(|v|) / sqrt(Qp)``: per tensor, or per slice along ``ch_axis``.

    The result is floored at :func:`step_eps` so that an all-zero tensor still gives a usable
    (positive) step.
    """
    with torch.no_grad():
        a = v.detach().abs()
        if ch_axis is None:
            mean = a.mean()
        else:
            mean = a.transpose(0, ch_axis).reshape(a.shape[ch_axis], -1).mean(dim=1)
        return (2.0 * mean / math.sqrt(qp)).clamp_min(step_eps(v.dtype))


def broadcast_shape(ndim: int, ch_axis: int, channels: int) -> tuple[int, ...]:
    shape = [1] * ndim
    shape[ch_axis] = channels
    return tuple(shape)


def _fake_quant_nograd(v: Tensor, s: Tensor, qn: int, qp: int) -> Tensor:
    # Same op sequence as the autograd forward (so the values are bit-identical), in place.
    return (v / s).clamp_(-qn, qp).round_().mul_(s)


def _channel_dot(a: Tensor, b: Tensor, ch_axis: int | None) -> Tensor:
    """sum(a * b) over everything (per-tensor) or over all dims but ``ch_axis``."""
    if ch_axis is None:
        if a.is_contiguous() and b.is_contiguous():
            return torch.dot(a.view(-1), b.view(-1))  # one fused pass, no temporary
        return (a * b).sum()
    dims = [d for d in range(a.dim()) if d != ch_axis]
    # (sum over an empty dim list would reduce everything)
    return (a * b).sum(dim=dims) if dims else a * b


def _mask_and_dstep(v: Tensor, s: Tensor, qn: int, qp: int, need_s: bool,
                    need_q: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(STE mask, d v_hat/d s if ``need_s``, round(clip(v/s)) if ``need_q`` or ``need_s``).

    The mask is a *float* tensor (1.0 inside the clip range; 0.0 outside or NaN), made in place
    in the buffer of v/s: bool masks are several times slower to make and to multiply by on the
    CPU. d v_hat/d s = round(x) - x inside and the clip bound (-Qn or Qp) outside; it is built
    from the clipped x so that it stays finite when |v/s| overflows to inf.
    """
    x = v / s
    xc = x.clamp(-qn, qp)
    q = torch.round(xc) if need_s or need_q else None
    mask = x.eq_(xc)
    d = torch.addcmul(q, xc, mask, value=-1, out=xc) if need_s else None
    return mask, d, q


class _LSQFunction(torch.autograd.Function):
    """Fake quantization with LSQ's straight-through and step gradients (see module docstring).

    Inputs: ``v``; ``step`` (shape () or (C,)); ``qn``, ``qp``; ``grad_scale`` g;
    ``ch_axis`` (None for a per-tensor step); ``recompute``. The forward uses
    ``max(|step|, eps)``; the step's gradient is multiplied by sign(step) (+1 at zero) and
    passes the eps floor straight through.

    ``recompute=False`` keeps the mask and d v_hat/d s from the forward (two tensors the size
    of ``v``); ``recompute=True`` keeps only ``v`` (which autograd usually holds anyway, e.g. as
    the ReLU output) and rebuilds them in the backward. On the CPU the second is faster for
    activations: every extra megabyte held from forward to backward is a megabyte of fresh
    pages (page faults) in the next step, which costs more than the three extra passes.
    """

    @staticmethod
    def forward(ctx, v: Tensor, step: Tensor, qn: int, qp: int,  # type: ignore[override]
                grad_scale: float, ch_axis: int | None, recompute: bool) -> Tensor:
        s = effective_step(step)
        ctx.negative = (step < 0) if ctx.needs_input_grad[1] else None
        if ch_axis is not None:
            s = s.view(broadcast_shape(v.dim(), ch_axis, s.numel()))
        need_v, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.grad_scale, ctx.ch_axis, ctx.qn, ctx.qp = grad_scale, ch_axis, qn, qp
        ctx.step_dtype, ctx.step_shape, ctx.recompute = step.dtype, step.shape, recompute
        if recompute:
            ctx.save_for_backward(v, s)
            return _fake_quant_nograd(v, s, qn, qp)
        mask, d, q = _mask_and_dstep(v, s, qn, qp, need_s, need_q=True)
        ctx.save_for_backward(mask if need_v else None, d)
        return q.mul_(s)  # type: ignore[union-attr]

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        need_v, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if ctx.recompute:
            v, s = ctx.saved_tensors
            # no_grad: under create_graph the mask and factor stay constants, as when kept
            with torch.no_grad():
                mask, d, _ = _mask_and_dstep(v, s, ctx.qn, ctx.qp, need_s, need_q=False)
        else:
            mask, d = ctx.saved_tensors
        grad_s = None
        if need_s:
            grad_s = _channel_dot(grad, d, ctx.ch_axis) * ctx.grad_scale
            if grad_s.dtype != ctx.step_dtype:  # e.g. a float64 input with a float32 step
                grad_s = grad_s.to(ctx.step_dtype)
            grad_s = grad_s.reshape(ctx.step_shape)
            # d|s|/ds = sign(s): a negative parameter moves the other way (module docstring)
            grad_s = torch.where(ctx.negative, -grad_s, grad_s)
        grad_v = None
        if need_v:
            if ctx.recompute and not torch.is_grad_enabled():
                grad_v = mask.mul_(grad)  # the mask is ours alone here: reuse its buffer
            else:  # (create_graph: keep the product differentiable in grad)
                grad_v = grad * mask
        return grad_v, grad_s, None, None, None, None, None


def lsq_fake_quant_ops(v: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float,
                       ch_axis: int | None = None) -> Tensor:
    """LSQ fake quantization written as plain differentiable torch ops: the same values and
    gradients as :func:`lsq_fake_quant`'s autograd Function, in a form ``torch.compile``
    (inductor) traces and fuses into the neighbouring convolution's prologue and epilogue.

    Every identity is exact in floating point, so the forward computes the very ops of the
    Function's forward (``round(clamp(v / s)) * s`` with ``s = max(|step|, eps)``):

    - ``|step|`` as ``step * sign`` with sign = -1 below zero, else +1: the gradient is
      multiplied by sign(step), +1 at zero (the positivity rule);
    - the eps floor as ``a + (max(a, eps) - a).detach()``: the gradient passes it straight
      through, as in the Function;
    - the step-gradient scale g as ``s.detach() + (s - s.detach()) * g``: the value is ``s``
      exactly (the second term is an exact zero) and the gradient is g;
    - the clip as ``where(inside, v / s, clamp(v / s).detach())`` with ``inside`` the range
      ends included, as the Function's mask (not torch's clamp gradient, whose behaviour at
      the ends changed between releases);
    - the straight-through round as ``round(x).detach() + (x - x.detach())``: the value is
      ``round(x)`` exactly, the gradient that of the clipped ``x`` (1 inside the range for
      ``v``; for ``s``, ``-v/s`` inside, which with the product rule gives LSQ's
      ``round(v/s) - v/s`` inside and the clip bound outside).
    """
    sign = torch.where(step < 0, -1.0, 1.0).to(step.dtype)
    a = step * sign
    a = a + (a.clamp_min(step_eps.__wrapped__(step.dtype)) - a).detach()
    s = a.detach() + (a - a.detach()) * grad_scale
    if ch_axis is not None:
        s = s.view(broadcast_shape(v.dim(), ch_axis, s.numel()))
    x = v / s
    # the clip with LSQ's mask written out (inside the range, ends included): torch's own
    # clamp gradient at the ends has changed between releases
    x = torch.where((x >= -qn) & (x <= qp), x, x.clamp(-qn, qp).detach())
    return (x.detach().round() + (x - x.detach())) * s


def lsq_fake_quant(v: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float,
                   ch_axis: int | None = None, recompute: bool = False) -> Tensor:
    """LSQ fake quantization ``round(clip(v/s, -qn, qp)) * s`` with LSQ gradients.

    ``step`` has shape () (per-tensor) or (C,) with C = ``v.shape[ch_axis]``; ``grad_scale`` is
    the factor g applied to the step gradient only. ``recompute`` trades three elementwise
    passes in the backward for not holding two ``v``-sized tensors until then (see
    ``_LSQFunction``); values and gradients are the same either way. Without autograd
    (no_grad, or nothing requires grad) this takes a cheaper path that computes the same values.
    Inside ``torch.compile`` it is :func:`lsq_fake_quant_ops`, the same math as plain ops,
    which inductor fuses (it compiles the hand-written Function into slower code).
    """
    if torch.compiler.is_compiling():
        return lsq_fake_quant_ops(v, step, qn, qp, grad_scale, ch_axis)
    if torch.is_grad_enabled() and (v.requires_grad or step.requires_grad):
        return _LSQFunction.apply(v, step, qn, qp, grad_scale, ch_axis, recompute)
    s = effective_step(step)
    if ch_axis is not None:
        s = s.view(broadcast_shape(v.dim(), ch_axis, s.numel()))
    return _fake_quant_nograd(v, s, qn, qp)


class LSQQuantizer(nn.Module):
    """A fake quantizer with a learned step size (LSQ), for a weight or an activation.

    - ``bits``: 2..8. ``signed``: True/False, or None to decide on the first batch (activations):
      signed if that batch holds any negative value, else unsigned. Post-ReLU inputs come out
      unsigned; the network input, residual sums, attention and LayerNorm outputs signed. Pass
      ``signed`` (or set it before the first batch) to force it.
    - ``per_channel``: one step per slice along ``ch_axis`` (``num_channels`` of them).
    - ``role``: 'weight' or 'activation'; sets N of the gradient scale (module docstring).
    - ``step``: the learned step (an ``nn.Parameter``, shape () or (C,)). Weight quantizers are
      started with :meth:`init_from` (``quantize_model`` does it); activation quantizers start
      lazily on their first enabled forward, in place into the registered Parameter so an
      optimizer built before still holds it.
    - ``positivity``: 'abs' (default): the quantization uses ``max(|step|, eps)``
      (:func:`effective_step`; module docstring) and the parameter is never projected, so
      optimizer state stays valid. 'clamp': each training forward first projects the parameter
      onto [eps, inf) in place, the rule of spec version 1, kept to reproduce runs made with
      it (an overshoot lands on eps and can kill the layer). :meth:`effective_step` is the
      step in use; exports and reports give that value.
    - ``enabled``: False makes the forward the identity (exactly: the input is returned).
    - ``recompute``: rebuild the STE mask and step-gradient factor in the backward instead of
      keeping them from the forward. None (default) chooses: recompute for activations on the
      CPU, where holding two more activation-sized tensors costs page faults every step; keep
      them for weights (few elements) and on GPUs (a caching allocator, and kernel launches
      are what costs there). Results are identical either way.

    ``signed`` and ``initialized`` travel in ``state_dict`` as one small int tensor (extra
    state), so a saved run can be reloaded with its activation quantizers' decisions.
    """

    def __init__(self, bits: int, signed: bool | None = None, per_channel: bool = False,
                 ch_axis: int = 0, num_channels: int | None = None,
                 role: str = "activation", positivity: str = "abs") -> None:
        super().__init__()
        qrange(bits, True)  # validates bits
        if role not in ("weight", "activation"):
            raise QgenError(f"quantizer role: must be 'weight' or 'activation', got {role!r}")
        if positivity not in POSITIVITY_RULES:
            raise QgenError(f"quantizer positivity: must be one of "
                            f"{', '.join(POSITIVITY_RULES)}, got {positivity!r}")
        self.positivity = positivity
        if per_channel and (num_channels is None or num_channels < 1):
            raise QgenError("quantizer: per_channel needs num_channels >= 1")
        self.bits = bits
        self.signed: bool | None = signed
        self.per_channel = per_channel
        self.ch_axis = ch_axis
        self.role = role
        self.enabled = True
        self.initialized = False
        self.recompute: bool | None = None
        self.step = nn.Parameter(torch.ones(num_channels if per_channel else ()))

    @property
    def Qn(self) -> int:  # noqa: N802  (the paper's name)
        """Number of negative codes (0 when unsigned)."""
        return qrange(self.bits, self._require_signed())[0]

    @property
    def Qp(self) -> int:  # noqa: N802
        """Largest positive code."""
        return qrange(self.bits, self._require_signed())[1]

    def _require_signed(self) -> bool:
        if self.signed is None:
            raise RuntimeError("LSQQuantizer: signedness is decided on the first batch; "
                               "run one forward first or pass signed=")
        return self.signed

    def grad_scale(self, v: Tensor) -> float:
        """g = 1 / sqrt(N * Qp) for input ``v`` (N as in the module docstring)."""
        if self.role == "activation":
            n = v.numel() // v.shape[0] if v.dim() > 1 else v.numel()
        else:
            n = v.numel() // (self.step.numel() if self.per_channel else 1)
        return 1.0 / math.sqrt(max(n, 1) * self.Qp)

    @torch.no_grad()
    def init_from(self, v: Tensor) -> None:
        """Set the LSQ start step from ``v`` (deciding the sign first if undecided)."""
        if self.signed is None:
            self.signed = bool((v < 0).any())
        s0 = lsq_init_step(v, self.Qp, self.ch_axis if self.per_channel else None)
        self.step.copy_(s0.to(self.step.dtype).reshape(self.step.shape))
        self.initialized = True

    def effective_step(self) -> Tensor:
        """The step in use, ``max(|step|, eps)`` (detached)."""
        return effective_step(self.step.detach())

    def forward(self, v: Tensor) -> Tensor:
        """Fake-quantize ``v`` (identity when disabled).

        Under ``torch.autocast`` (mixed-precision training) the quantizer computes in float32
        all the same, on ``v`` cast to float32 (exact for half types) with autocast off, and
        returns ``v``'s dtype, as an elementwise op does under autocast: the codes are those
        of the float32 quantizer, and the layer it feeds casts to the autocast dtype anyway.
        """
        if not self.enabled:
            return v
        if torch.is_autocast_enabled(v.device.type):
            with torch.autocast(v.device.type, enabled=False):
                return self._fake_quant(v.float()).to(v.dtype)
        return self._fake_quant(v)

    def _fake_quant(self, v: Tensor) -> Tensor:
        if not self.initialized:
            self.init_from(v)
        step = self.step
        if self.positivity == "clamp" and self.training:
            with torch.no_grad():
                step.clamp_min_(step_eps(step.dtype))
        qn, qp = qrange(self.bits, self.signed)  # type: ignore[arg-type]
        recompute = self.recompute
        if recompute is None:
            recompute = self.role == "activation" and v.device.type == "cpu"
        return lsq_fake_quant(v, step, qn, qp, self.grad_scale(v),
                              self.ch_axis if self.per_channel else None, recompute)

    @torch.no_grad()
    def integer(self, v: Tensor) -> Tensor:
        """The integer codes ``round(clip(v/s, -Qn, Qp))``: int8 when signed, uint8 when not."""
        if not self.initialized:
            raise RuntimeError("LSQQuantizer.integer: the step is not initialized yet")
        s = self.effective_step()
        if self.per_channel:
            s = s.view(broadcast_shape(v.dim(), self.ch_axis, s.numel()))
        codes = (v / s).clamp_(-self.Qn, self.Qp).round_()
        return codes.to(torch.int8 if self.signed else torch.uint8)

    def get_extra_state(self) -> Tensor:
        """[signed (-1 undecided, 0, 1), initialized (0/1)] as a tensor (safetensors-friendly)."""
        code = -1 if self.signed is None else int(self.signed)
        return torch.tensor([code, int(self.initialized)], dtype=torch.int8)

    def set_extra_state(self, state: Tensor) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        code, init = (int(x) for x in torch.as_tensor(state).tolist())
        self.signed = None if code < 0 else bool(code)
        self.initialized = bool(init)

    def extra_repr(self) -> str:
        """Bits, sign, granularity, role and whether it is on (shown by ``print(model)``)."""
        sign = "auto" if self.signed is None else ("signed" if self.signed else "unsigned")
        gran = f"channel(axis={self.ch_axis})" if self.per_channel else "tensor"
        pos = "" if self.positivity == "abs" else f", positivity={self.positivity}"
        return (f"bits={self.bits}, {sign}, {gran}, role={self.role}, "
                f"enabled={self.enabled}{pos}")
