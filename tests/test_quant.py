"""The LSQ quantizer itself: values, gradients, gradient scale, start values, positivity."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgen.errors import QgenError
from qgen.quant import LSQQuantizer, lsq_fake_quant, lsq_init_step, qrange, step_eps

SETTINGS = settings(max_examples=60, deadline=None)




@st.composite
def cases(draw):
    """A random tensor (with values inside, outside and on the clip bounds and on rounding
    ties), bits, signedness, granularity and positive steps."""
    bits = draw(st.integers(2, 8))
    signed = draw(st.booleans())
    per_channel = draw(st.booleans())
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    qn, qp = qrange(bits, signed)
    channels = shape[0] if per_channel else 1
    step = torch.exp(torch.randn(channels, generator=gen))  # spread over ~e^±3
    s = step.view((channels,) + (1,) * (ndim - 1)) if per_channel else step[0]
    # v/s spread over 1.5x the code range, so a good part of it is clipped
    v = (torch.rand(shape, generator=gen) * 1.5 * (qn + qp + 2) - 1.5 * (qn + 1)) * s
    flat = v.view(-1)
    k = flat.numel()
    picks = torch.randint(0, k, (min(k, 4),), generator=gen)
    special = torch.tensor([-qn, qp, 0.5, -2.5])[: picks.numel()]  # bounds and ties
    s_flat = s.expand(shape).reshape(-1) if per_channel else s
    flat[picks] = special * (s_flat[picks] if per_channel else s_flat)
    return v, (step if per_channel else step[0]).clone(), bits, signed, per_channel


def reference(v, s_b, qn, qp):
    """The LSQ formulas, written plainly (s_b broadcastable to v)."""
    x = v / s_b
    out = torch.round(torch.clamp(x, -qn, qp)) * s_b
    inside = (x >= -qn) & (x <= qp)
    dstep = torch.where(inside, torch.round(x) - x,
                        torch.where(x < -qn, torch.full_like(x, -qn), torch.full_like(x, qp)))
    return out, inside, dstep


def broadcast(step, v, per_channel):
    return step.view((-1,) + (1,) * (v.dim() - 1)) if per_channel else step


def test_qrange():
    assert qrange(2, True) == (2, 1) and qrange(2, False) == (0, 3)
    assert qrange(8, True) == (128, 127) and qrange(8, False) == (0, 255)
    for bad in (1, 9, 4.0, True, "4"):
        with pytest.raises(QgenError, match="2..8"):
            qrange(bad, True)


@SETTINGS
@given(cases())
def test_forward_matches_formula_bit_exactly(case):
    v, step, bits, signed, per_channel = case
    qn, qp = qrange(bits, signed)
    s_b = broadcast(step, v, per_channel)
    ch = 0 if per_channel else None
    ref, _, _ = reference(v, s_b, qn, qp)
    # the autograd path (both backward modes) and the no-grad path
    for recompute in (False, True):
        out_grad = lsq_fake_quant(v.clone().requires_grad_(), step.clone().requires_grad_(),
                                  qn, qp, 0.5, ch, recompute)
        assert torch.equal(out_grad.detach(), ref)
    out_plain = lsq_fake_quant(v, step, qn, qp, 0.5, ch)
    assert torch.equal(out_plain, ref)
    # every output is an integer code in [-Qn, Qp] times s, exactly
    codes = torch.round(ref / s_b)
    assert torch.equal(codes * s_b, ref)
    assert codes.min() >= -qn and codes.max() <= qp
    # ... and the module's integer() gives those codes in a small integer dtype
    quant = LSQQuantizer(bits, signed=signed, per_channel=per_channel,
                         num_channels=step.numel())
    quant.step.data.copy_(step)
    quant.initialized = True
    ints = quant.integer(v)
    assert ints.dtype == (torch.int8 if signed else torch.uint8)
    assert torch.equal(ints.to(torch.float32), codes)


@SETTINGS
@given(cases(), st.integers(0, 2**31 - 1), st.booleans())
def test_gradients_match_formulas(case, seed, recompute):
    """Both backward modes (keep mask and factor, or recompute them) give the formulas."""
    v, step, bits, signed, per_channel = case
    qn, qp = qrange(bits, signed)
    s_b = broadcast(step, v, per_channel)
    ch = 0 if per_channel else None
    _, inside, dstep = reference(v, s_b, qn, qp)
    g = 1.0 / math.sqrt(7 * qp)
    gen = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(v.shape, generator=gen)

    vv, ss = v.clone().requires_grad_(), step.clone().requires_grad_()
    lsq_fake_quant(vv, ss, qn, qp, g, ch, recompute).backward(grad_out)
    # input gradient: the straight-through mask, exactly (zero outside the clip range)
    assert torch.equal(vv.grad, torch.where(inside, grad_out, torch.zeros_like(grad_out)))
    # step gradient: g * sum(grad * dstep), per channel or whole; a sum's rounding depends on
    # its order, so compare with a float64 sum within float32 accumulation error
    dims = tuple(range(1, v.dim())) if per_channel else tuple(range(v.dim()))
    terms = grad_out.double() * dstep.double()
    want = (terms.sum(dim=dims) if dims else terms) * g
    bound = (terms.abs().sum(dim=dims) if dims else terms.abs()) * g * 1e-5 + 1e-12
    assert ss.grad.shape == step.shape
    assert ((ss.grad.double() - want).abs() <= bound).all()

    # one element at a time the step gradient is exact: g * dstep[i] for its channel only
    i = int(torch.randint(0, v.numel(), (1,), generator=gen))
    one_hot = torch.zeros(v.numel())
    one_hot[i] = 1.0
    one_hot = one_hot.view(v.shape)
    ss = step.clone().requires_grad_()
    lsq_fake_quant(v, ss, qn, qp, g, ch, recompute).backward(one_hot)
    expect = torch.zeros_like(step)
    if per_channel:
        c = i // (v.numel() // v.shape[0])
        expect[c] = dstep.reshape(-1)[i] * g
    else:
        expect = dstep.reshape(-1)[i] * g
    assert torch.equal(ss.grad, expect)


def test_gradient_scale_changes_only_the_step_gradient():
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(4, 5, generator=gen) * 3
    grad_out = torch.randn(4, 5, generator=gen)
    results = []
    for g in (1.0, 0.125):
        vv, ss = v.clone().requires_grad_(), torch.tensor(0.4, requires_grad=True)
        out = lsq_fake_quant(vv, ss, 8, 7, g)
        out.backward(grad_out)
        results.append((out.detach(), vv.grad, ss.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert torch.equal(results[0][2] * 0.125, results[1][2])  # power of two: exact


@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_gradient_scale_uses_elements_per_step(per_channel):
    """N = all weights for one step, but weights *per channel* for per-channel steps."""
    w = torch.randn(6, 3, 3, 3)
    quant = LSQQuantizer(4, signed=True, per_channel=per_channel, num_channels=6, role="weight")
    quant.init_from(w)
    n = 27 if per_channel else 162
    assert quant.grad_scale(w) == 1.0 / math.sqrt(n * 7)
    # and that is the factor the step gradient carries: compare against g = 1
    ss = quant.step.detach().clone().requires_grad_()
    lsq_fake_quant(w, ss, 8, 7, 1.0, 0 if per_channel else None).backward(torch.ones_like(w))
    quant(w).backward(torch.ones_like(w))
    torch.testing.assert_close(quant.step.grad, ss.grad / math.sqrt(n * 7), rtol=1e-6, atol=0)


def test_activation_gradient_scale_uses_features_per_example():
    quant = LSQQuantizer(3, role="activation")
    x = torch.randn(8, 4, 5, 5)
    quant(x)  # first batch: signed (it holds negatives), Qp = 3
    assert quant.signed is True and quant.Qp == 3
    assert quant.grad_scale(x) == 1.0 / math.sqrt(100 * 3)
    assert quant.grad_scale(x[:2]) == quant.grad_scale(x)  # batch size does not enter
    assert quant.grad_scale(torch.randn(8, 10)) == 1.0 / math.sqrt(10 * 3)


@pytest.mark.parametrize("per_channel", [False, True])
def test_weight_start_value(per_channel):
    w = torch.randn(5, 4, 3, 3) * torch.arange(1, 6).view(5, 1, 1, 1)
    quant = LSQQuantizer(3, signed=True, per_channel=per_channel, num_channels=5, role="weight")
    quant.init_from(w)
    if per_channel:
        want = 2 * w.abs().mean(dim=(1, 2, 3)) / math.sqrt(3)
    else:
        want = 2 * w.abs().mean() / math.sqrt(3)
    torch.testing.assert_close(quant.step.detach(), want, rtol=1e-6, atol=0)
    assert quant.step.shape == ((5,) if per_channel else ())


def test_activation_start_value_and_sign_from_first_batch():
    quant = LSQQuantizer(4)
    param = quant.step
    opt = torch.optim.SGD(quant.parameters(), lr=0.1)  # built before the first batch
    x1 = torch.randn(16, 3, 4, 4).relu()
    quant(x1)
    assert quant.initialized and quant.signed is False
    assert (quant.Qn, quant.Qp) == (0, 15)
    assert quant.step is param  # filled in place: the optimizer holds the live Parameter
    assert opt.param_groups[0]["params"][0] is param
    torch.testing.assert_close(param.detach(), 2 * x1.abs().mean() / math.sqrt(15))
    before = param.detach().clone()
    quant(torch.randn(16, 3, 4, 4) * 100)  # later batches do not restart it
    assert torch.equal(param.detach(), before)

    signed = LSQQuantizer(4)
    signed(torch.randn(4, 3))
    assert signed.signed is True and (signed.Qn, signed.Qp) == (8, 7)


def test_forced_sign_wins_and_start_value_uses_its_range():
    forced = LSQQuantizer(4, signed=True)
    x = torch.rand(4, 3)  # non-negative: auto would pick unsigned
    forced(x)
    assert forced.signed is True
    torch.testing.assert_close(forced.step.detach(), 2 * x.mean() / math.sqrt(7))
    with pytest.raises(RuntimeError, match="first batch"):
        _ = LSQQuantizer(4).Qp


def test_zero_tensor_gets_a_positive_step():
    assert lsq_init_step(torch.zeros(3, 3), 7) == torch.tensor(step_eps(torch.float32))
    quant = LSQQuantizer(2)
    out = quant(torch.zeros(2, 5))
    assert quant.step.item() > 0 and torch.equal(out, torch.zeros(2, 5))


def test_step_driven_negative_quantizes_with_its_magnitude():
    """Adversarial gradients drive the step parameter below zero: the quantizer keeps using
    |s| (finite outputs, the same codes as the positive step), never rewrites the parameter,
    and the step gradient flips sign with it, so the optimizer can bring it back."""
    torch.manual_seed(0)
    quant = LSQQuantizer(2, role="activation")
    x = torch.randn(32, 10)
    quant(x)  # start from x ...
    big = x * 100  # ... then feed values far outside the clip range
    opt = torch.optim.SGD(quant.parameters(), lr=1e4)
    for _ in range(3):
        out = quant(big)
        assert torch.isfinite(out).all()
        # every element is clipped, so d loss / d |s| = g * sum(Qp or Qn) > 0
        loss = (out * big.sign()).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert quant.step.item() < 0  # the optimizer drove it negative; nothing projected it
    raw = quant.step.detach().clone()
    for train in (True, False):
        quant.train(train)
        out = quant(big)
        assert torch.equal(quant.step.detach(), raw)  # the parameter is left alone
        s = raw.abs()
        assert torch.equal(out, (big / s).clamp(-2, 1).round() * s)
    # gradient at -s is minus the gradient at +s
    v = torch.randn(50)
    grads = []
    for sign in (1.0, -1.0):
        step = torch.tensor(sign * 0.3, requires_grad=True)
        lsq_fake_quant(v, step, 2, 1, 1.0).square().sum().backward()
        grads.append(step.grad.item())
    assert grads[1] == -grads[0] != 0
    zero = torch.tensor(0.0, requires_grad=True)  # a step of exactly 0 still gets a gradient
    lsq_fake_quant(v, zero, 2, 1, 1.0).sum().backward()
    assert torch.isfinite(zero.grad) and zero.grad != 0


def test_huge_and_infinite_inputs_keep_gradients_finite():
    # v / s overflows to +-inf for the first two; the step gradient must still be finite
    for recompute in (False, True):
        v = torch.tensor([1e38, -1e38, float("inf"), 0.0023, -float("inf")], requires_grad=True)
        s = torch.tensor(1e-3, requires_grad=True)
        out = lsq_fake_quant(v, s, 8, 7, 1.0, recompute=recompute)
        out.sum().backward()
        assert torch.equal(out, torch.tensor([7.0, -8.0, 7.0, 2.0, -8.0]) * s.detach())
        assert torch.equal(v.grad, torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))
        assert s.grad.item() == pytest.approx(7 - 8 + 7 + (2 - 2.3) - 8, abs=1e-4)


def test_disabled_is_exact_identity():
    quant = LSQQuantizer(2)
    quant.enabled = False
    x = torch.randn(3, 4)
    assert quant(x) is x
    assert not quant.initialized  # a disabled quantizer does not start its step


@pytest.mark.parametrize("recompute", [False, True])
def test_float64_input_with_float32_step(recompute):
    v = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    out = lsq_fake_quant(v, s, 2, 1, 1.0, recompute=recompute)
    out.sum().backward()
    assert out.dtype == torch.float64
    assert v.grad.dtype == torch.float64 and s.grad.dtype == torch.float32
    inside = ((v / 0.5 >= -2) & (v / 0.5 <= 1)).double()
    assert torch.equal(v.grad, inside)


@pytest.mark.parametrize("recompute", [False, True])
def test_double_backward_is_linear_in_the_incoming_gradient(recompute):
    """Hessian-vector products through a quantizer: the STE backward is grad * mask, so the
    second derivative w.r.t. the input is zero and the first is the mask."""
    v = torch.randn(20, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.3, dtype=torch.float64)
    w = torch.randn(20, dtype=torch.float64, requires_grad=True)
    out = lsq_fake_quant(v * w, s, 2, 1, 1.0, recompute=recompute)
    (gw,) = torch.autograd.grad((out**2).sum(), w, create_graph=True)
    (hv,) = torch.autograd.grad(gw.sum(), w)
    x = (v * w / s).detach()
    mask = ((x >= -2) & (x <= 1)).double()
    # d/dw [2 * out * mask * v] = 2 * mask * v * d out/dw = 2 * mask * v * mask * v
    torch.testing.assert_close(hv, 2 * mask * v.detach() ** 2)


def test_step_projection_does_not_break_a_pending_backward():
    """Two training forwards before one backward: the in-place projection of the step must
    not invalidate what the first forward's backward holds."""
    quant = LSQQuantizer(4)
    x = torch.randn(8, 5, requires_grad=True)
    first = quant(x)
    second = quant(x * 2)
    (first.sum() + second.sum()).backward()
    assert x.grad is not None and quant.step.grad is not None


def test_frozen_step_still_passes_input_gradient():
    quant = LSQQuantizer(4, signed=True)
    x = torch.randn(4, 6)
    quant(x)
    quant.step.requires_grad_(False)
    xx = x.clone().requires_grad_()
    quant(xx).sum().backward()
    s = quant.step.detach()
    assert torch.equal(xx.grad, ((x / s >= -8) & (x / s <= 7)).float())
    assert quant.step.grad is None


def test_sign_and_init_travel_in_state_dict():
    quant = LSQQuantizer(3)
    quant(torch.rand(5, 2))
    state = quant.state_dict()
    assert set(state) == {"step", "_extra_state"}
    assert all(isinstance(t, torch.Tensor) for t in state.values())  # safetensors can hold it
    fresh = LSQQuantizer(3)
    fresh.load_state_dict(state)
    assert fresh.signed is False and fresh.initialized
    assert torch.equal(fresh.step, quant.step)


def test_bad_construction_is_a_user_error():
    with pytest.raises(QgenError):
        LSQQuantizer(9)
    with pytest.raises(QgenError, match="role"):
        LSQQuantizer(4, role="bias")
    with pytest.raises(QgenError, match="num_channels"):
        LSQQuantizer(4, per_channel=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits,signed", [(2, True), (4, False), (8, True)])
def test_cuda_matches_formula_and_cpu(bits, signed, per_channel):
    gen = torch.Generator().manual_seed(bits)
    qn, qp = qrange(bits, signed)
    v = torch.randn(16, 8, 3, 3, generator=gen) * 3
    step = torch.rand(16 if per_channel else (), generator=gen) + 0.1
    s_b = broadcast(step, v, per_channel)
    grad_out = torch.randn(v.shape, generator=gen)
    results = []
    for device in ("cpu", "cuda"):
        vv = v.to(device, copy=True).requires_grad_()
        ss = step.to(device, copy=True).requires_grad_()
        out = lsq_fake_quant(vv, ss, qn, qp, 0.1, 0 if per_channel else None)
        out.backward(grad_out.to(device))
        results.append((out.detach().cpu(), vv.grad.cpu(), ss.grad.cpu()))
    ref_cuda = torch.round(torch.clamp(v.cuda() / s_b.cuda(), -qn, qp)) * s_b.cuda()
    assert torch.equal(results[1][0], ref_cuda.cpu())
    assert torch.equal(results[0][0], results[1][0])  # IEEE division on both
    assert torch.equal(results[0][1], results[1][1])
    torch.testing.assert_close(results[0][2], results[1][2], rtol=1e-5, atol=1e-6)
