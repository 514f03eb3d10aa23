"""Measures on LSQ-quantized networks: 'latent' perturbs through active quantizers,
'dequantized' perturbs the dequantized weights with weight quantizers bypassed."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qgen import quant
from qgen.config import QuantSpec
from qgen.errors import QgenError
from qgen.measures import MeasureSpec, compute_measures
from qgen.measures.context import MeasureContext
from qgen.measures.params import prepare_model
from qgen.measures.sharpness import sharpness_deviation

FAST = dict(mc_draws=2, ascent_steps=3, ascent_restarts=2, bisect_steps=4, eval_subset=100,
            ascent_batch=50, eval_batch=100, hessian_samples=2, power_iters=2, hessian_batch=50)




@pytest.fixture(scope="module")
def qnet():
    """A 2-bit-weight, 8-bit-activation conv net whose latent weights sit exactly on their
    quantization grid (latent == dequantized), trained a few steps first."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (200,), generator=gen)
    x = torch.randn(3, 1, 8, 8, generator=gen)[y] + 0.7 * torch.randn(200, 1, 8, 8, generator=gen)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net = quant.quantize_model(net, QuantSpec(w_bits=2, a_bits=8, first_last="same"))
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        for _, layer in quant.quant_layers(net):
            layer.weight.copy_(layer.quantized_weight())
    return net, w0, x, y


def min_step(net):
    return min(float(layer.w_quant.step.detach().min()) for _, layer in quant.quant_layers(net))


def test_prepared_models_compute_the_quantized_network(qnet):
    net, _, x, _ = qnet
    with torch.no_grad():
        ref = net(x)
        for mode in ("latent", "dequantized"):
            prep = prepare_model(net, MeasureSpec(quant_mode=mode))
            assert torch.equal(prep.model(x), ref), mode
            layers = dict(quant.quant_layers(prep.model))
            assert all(m.a_quant.enabled for m in layers.values())  # activations stay quantized
            assert all(m.w_quant.enabled == (mode == "latent") for m in layers.values())


def test_small_box_perturbation_moves_only_dequantized_weights(qnet):
    """|u| < s/2 around on-grid latent weights rounds back to the same quantized weights:
    in 'latent' mode the loss cannot change at all (it would, if the quantizers were
    bypassed); in 'dequantized' mode the same box changes it."""
    net, w0, x, y = qnet
    alpha = 0.45 * min_step(net)
    devs = {}
    for mode in ("latent", "dequantized"):
        ctx = MeasureContext(net, w0, x, y, MeasureSpec(**FAST, target="loss", quant_mode=mode))
        dev, details = sharpness_deviation(ctx, alpha, magnitude=False, key="t")
        devs[mode] = dev
        assert len(details["samples"]) == 2
    assert devs["latent"] == 0.0
    assert devs["dequantized"] > 1e-4


def test_step_sizes_are_never_perturbed_or_counted(qnet):
    net, w0, x, y = qnet
    for mode in ("latent", "dequantized"):
        ctx = MeasureContext(net, w0, x, y, MeasureSpec(**FAST, params="all", quant_mode=mode))
        assert not any(n.endswith("step") for n in ctx.prep.params.names)
        steps = [q.step for _, q in quant.quantizers(ctx.model)]
        assert steps and not any(s.requires_grad for s in steps)
        assert "1.weight" in ctx.prep.params.names  # BN is in 'all'


def test_w0_goes_through_the_same_preparation(qnet):
    net, w0, x, y = qnet
    ctx = MeasureContext(net, w0, x, y, MeasureSpec(**FAST, quant_mode="dequantized"))
    init = copy.deepcopy(net)
    init.load_state_dict(w0)
    want = dict(quant.quant_layers(init))["0"].quantized_weight()
    got = ctx.w0[ctx.prep.params.names.index("0.weight")]
    assert torch.equal(got, want)  # dequantized with the initial step size
    lat = MeasureContext(net, w0, x, y, MeasureSpec(**FAST))
    assert torch.equal(lat.w0[lat.prep.params.names.index("0.weight")], w0["0.weight"])


def test_fold_needs_dequantized_mode(qnet):
    net, w0, x, y = qnet
    with pytest.raises(QgenError, match="quant_mode='dequantized'"):
        compute_measures(net, w0, x, y, MeasureSpec(**FAST, bn="fold"), names=["norm.l2"])
    prep = prepare_model(net, MeasureSpec(bn="fold", quant_mode="dequantized"))
    assert len(prep.fold.folded) == 1
    with torch.no_grad():
        assert torch.allclose(prep.model(x), net(x), atol=1e-5)


def test_all_measures_on_a_quantized_model(qnet):
    net, w0, x, y = qnet
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = compute_measures(net, w0, x, y, MeasureSpec(**FAST))
    assert res.settings["quantized_model"] and res.settings["quant_mode"] == "latent"
    assert res.values["norm.path"] > 0 and res.values["hessian.trace"] == res.values[
        "hessian.trace"]  # not NaN: double backward through LSQ works
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(layer.w_quant.enabled for _, layer in quant.quant_layers(net))


def test_each_mode_switches_exactly_the_quantizers_it_says(qnet):
    """Through qgen.quant's public API: 'latent' leaves every quantizer on; 'dequantized'
    turns off exactly the weight quantizers; both freeze every step size; a renamed or
    missing quantizer attribute would fail here instead of silently measuring a float net."""
    net, *_ = qnet
    names = {n: q.role for n, q in quant.quantizers(net)}
    assert sorted(set(names.values())) == ["activation", "weight"]
    latent = prepare_model(net, MeasureSpec(quant_mode="latent"))
    assert {n: q.enabled for n, q in quant.quantizers(latent.model)} == dict.fromkeys(names, True)
    deq = prepare_model(net, MeasureSpec(quant_mode="dequantized"))
    assert {n: q.enabled for n, q in quant.quantizers(deq.model)} == {
        n: role == "activation" for n, role in names.items()}
    assert deq.notes["dequantized_layers"] == sum(r == "weight" for r in names.values())
    for prep in (latent, deq):
        assert not any(q.step.requires_grad for _, q in quant.quantizers(prep.model))
    assert all(q.enabled for _, q in quant.quantizers(net))  # the caller's model untouched
