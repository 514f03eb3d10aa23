"""The `dziugaite2020` preset against the reference code's construction (Dziugaite et al.
2020, public code: BatchNorm folded into the conv before it and kept as a γ = 1, β = 0 layer,
every parameter perturbed with std σ² or σ²|p|² + ε², bound terms over the weight tensors).

The reference construction is restated here from its description, independently of qgen's
code, on a small conv net with biases and non-trivial BatchNorm statistics."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from qgen.measures import MeasureSpec
from qgen.measures.params import prepare_model
from qgen.measures.perturb import gaussian_std, magnitude_std


def _net() -> nn.Sequential:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1, bias=True), nn.BatchNorm2d(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 3.0)
    return net.eval()


@torch.no_grad()
def _reference_reparam(net: nn.Sequential) -> nn.Sequential:
    """Fold each BatchNorm into the conv just before it, in module order, and leave the
    BatchNorm with γ = 1, β = 0, mean 0, variance 1 (what the reference's reparam does)."""
    net = copy.deepcopy(net)
    prev = None
    for m in net:
        if isinstance(m, nn.Conv2d):
            prev = m
        elif isinstance(m, nn.BatchNorm2d):
            scale = m.weight / (m.running_var + m.eps).sqrt()
            prev.bias.copy_(m.bias + scale * (prev.bias - m.running_mean))
            prev.weight.mul_(scale.view(-1, 1, 1, 1))
            m.weight.fill_(1)
            m.bias.fill_(0)
            m.running_mean.fill_(0)
            m.running_var.fill_(1)
    return net


def test_preset_perturbs_the_reference_parameter_set_with_its_noise_law():
    net = _net()
    ref = _reference_reparam(net)
    prep = prepare_model(net, MeasureSpec.preset("dziugaite2020"))
    ref_named = list(ref.named_parameters())
    # the same parameters, in the same order, with the same values (BN γ = 1, β = 0 kept)
    assert prep.params.names == [n for n, _ in ref_named]
    for got, (_, want) in zip(prep.params.values(), ref_named, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(prep.model(x), ref(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(prep.model(x), net(x), rtol=1e-4, atol=1e-4)

    # the noise law: plain std σ² for every parameter; magnitude-aware std σ²|p|² + ε², so a
    # kept BatchNorm's γ = 1 gets multiplicative channel noise of std σ² + ε²
    sigma, eps = 0.3, 1e-3
    spec = MeasureSpec.preset("dziugaite2020")
    assert gaussian_std(sigma, spec.gauss_std) == pytest.approx(sigma**2)
    for got_w, (name, p) in zip(prep.params.values(), ref_named, strict=True):
        std = magnitude_std(got_w, sigma, spec.mag_eps, spec.mag_noise)
        torch.testing.assert_close(std, sigma**2 * p.detach().abs() ** 2 + eps**2)
        if name.endswith("1.weight"):  # the first BatchNorm's γ
            assert torch.allclose(std, torch.full_like(std, sigma**2 + eps**2))


def test_preset_bound_set_and_size_adjustment_follow_the_reference():
    from qgen.measures import compute_measures

    net = _net()
    w0 = {k: v.clone() for k, v in _net().state_dict().items()}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 3, (40,))
    spec = MeasureSpec.preset("dziugaite2020", names=("norm.l2", "norm.l2_dist"))
    res = compute_measures(net, w0, x, y, spec)
    ref, ref0 = _reference_reparam(net), _reference_reparam(_net())
    # the reference's name filter: neither 'bias' nor 'bn' (its BN modules are named bn*;
    # here they are the BatchNorm2d layers): the conv and linear weights
    keep = [i for i, m in enumerate(ref) if isinstance(m, (nn.Conv2d, nn.Linear))]
    w = torch.cat([ref[i].weight.detach().reshape(-1) for i in keep])
    w0v = torch.cat([ref0[i].weight.detach().reshape(-1) for i in keep])
    m = 40
    assert res.values["norm.l2"] == pytest.approx(math.sqrt(w.norm().item() / m), rel=1e-5)
    assert res.values["norm.l2_dist"] == pytest.approx(
        math.sqrt((w - w0v).norm().item() / m), rel=1e-5)
