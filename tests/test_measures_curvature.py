"""Hutchinson trace and power iteration against the exact Hessian of a tiny model."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from qgen.measures.curvature import hutchinson_trace, make_hvp, power_iteration


def tiny_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    params = list(net.parameters())
    return net, x, y, params


def exact_hessian(net, x, y, params):
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def loss_of(flat):
        chunks = torch.split(flat, sizes)
        state = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return F.cross_entropy(functional_call(net, state, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return torch.autograd.functional.hessian(loss_of, flat)


def test_hvp_matches_exact_hessian():
    net, x, y, params = tiny_problem()
    h = exact_hessian(net, x, y, params)
    hvp = make_hvp(net, params, x, y)
    v = [torch.randn_like(p) for p in params]
    got = torch.cat([t.reshape(-1) for t in hvp(v)])
    want = h @ torch.cat([t.reshape(-1) for t in v])
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-10)


def test_hutchinson_matches_exact_trace_within_its_error():
    net, x, y, params = tiny_problem()
    h = exact_hessian(net, x, y, params)
    n = 400
    est = hutchinson_trace(make_hvp(net, params, x, y), params, samples=n, seed=3)
    # Rademacher probes: Var[vᵀHv] = 2 Σ_{i≠j} H_ij², so the standard error is known exactly.
    off = h - torch.diag(torch.diag(h))
    sd_theory = math.sqrt(2 * off.square().sum().item() / n)
    assert abs(est.value - torch.trace(h).item()) < 4 * sd_theory
    assert 0.75 < est.stderr / sd_theory < 1.25  # the reported error is the right size
    assert len(est.samples) == n


def test_power_iteration_finds_top_eigenvalue():
    net, x, y, params = tiny_problem()
    eig = torch.linalg.eigvalsh(exact_hessian(net, x, y, params))
    top = eig[eig.abs().argmax()].item()
    est = power_iteration(make_hvp(net, params, x, y), params, iters=100, seed=0)
    assert abs(est.value - top) < 1e-3 * abs(top)


def test_curvature_is_seeded():
    net, x, y, params = tiny_problem()
    hvp = make_hvp(net, params, x, y)
    a = hutchinson_trace(hvp, params, samples=5, seed=7)
    b = hutchinson_trace(hvp, params, samples=5, seed=7)
    c = hutchinson_trace(hvp, params, samples=5, seed=8)
    assert a.samples == b.samples and a.samples != c.samples
