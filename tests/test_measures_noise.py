"""Noise laws and in-place perturbation: requested variances, the ε floor, exact restore."""

import math

import pytest
import torch
from torch import nn

from qgen.measures import MeasureSpec
from qgen.measures.context import MeasureContext
from qgen.measures.pacbayes import pacbayes_deviation
from qgen.measures.params import select_parameters
from qgen.measures.perturb import (
    Perturbation,
    gaussian_std,
    magnitude_std,
    make_generator,
    standard_normals,
)

# Four groups of 50,000 weights with one magnitude each (zero included).
GROUP = 50_000
MAGNITUDES = (0.0, 0.1, 1.0, -3.0)
# The sample variance of n normal draws has relative standard deviation sqrt(2/(n-1))
# (0.63% for n = 50,000); 5 of those (3.2%) keeps a false failure below 1e-6 per group.
REL_TOL = 5 * math.sqrt(2 / (GROUP - 1))




def grouped_weights() -> torch.Tensor:
    return torch.cat([torch.full((GROUP,), m, dtype=torch.float64) for m in MAGNITUDES])


def sample_noise(w: torch.Tensor, sigma: float, eps: float, mode: str, seed: int = 0):
    std = magnitude_std(w, sigma, eps, mode)
    (z,) = standard_normals([w], make_generator(seed, "cpu"))
    return z * std


@pytest.mark.parametrize("sigma", [0.05, 0.5])
def test_magnitude_noise_has_requested_variance(sigma):
    eps = 1e-3
    w = grouped_weights()
    u = sample_noise(w, sigma, eps, "variance")
    for g, m in enumerate(MAGNITUDES):
        ug = u[g * GROUP:(g + 1) * GROUP]
        want = sigma**2 * m**2 + eps**2
        assert abs(ug.var().item() / want - 1) < REL_TOL, (m, ug.var().item(), want)
        assert abs(ug.mean().item()) < 5 * math.sqrt(want / GROUP)


def test_magnitude_noise_std_mode_is_the_public_codes_law():
    # 'std': sigma^2 w^2 + eps^2 is the standard deviation, so the variance is its square.
    sigma, eps = 0.5, 1e-3
    w = grouped_weights()
    u = sample_noise(w, sigma, eps, "std")
    for g, m in enumerate(MAGNITUDES):
        want = (sigma**2 * m**2 + eps**2) ** 2
        assert abs(u[g * GROUP:(g + 1) * GROUP].var().item() / want - 1) < REL_TOL


def test_zero_weights_move_only_with_eps_floor():
    w = torch.zeros(1000)
    assert (sample_noise(w, 0.5, 1e-3, "variance") != 0).all()
    assert (sample_noise(w, 0.5, 0.0, "variance") == 0).all()


def test_gaussian_parameterization():
    assert gaussian_std(0.3, "sigma") == 0.3
    assert gaussian_std(0.3, "sigma_squared") == pytest.approx(0.09)


def test_perturbation_restores_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = select_parameters(net, "all")
    with Perturbation(params) as pert:
        pert.apply([torch.randn_like(t) * 1e3 for t in params.tensors])
        assert not torch.equal(net[0].weight, before["0.weight"])
        pert.apply([torch.zeros_like(t) for t in params.tensors])
        assert torch.equal(net[0].weight, before["0.weight"])
        pert.apply([torch.randn_like(t) for t in params.tensors])
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # bitwise: restored by copy, not subtraction


def test_magnitude_search_moves_zero_weights():
    """Through the real PAC-Bayes draw: with the ε floor, a weight that is exactly zero is
    perturbed (by ~ε), and by nothing when ε = 0."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[1].weight[0].zero_()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    w0 = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    seen = []

    for eps in (1e-3, 0.0):
        spec = MeasureSpec(mag_eps=eps, mc_draws=2)
        ctx = MeasureContext(net, w0, x, y, spec)
        layer = ctx.model[1]
        hook = layer.register_forward_pre_hook(
            lambda mod, args: seen.append(mod.weight.detach()[0].clone()))
        pacbayes_deviation(ctx, 0.5, magnitude=True, key="test")
        hook.remove()
        perturbed = seen[-1]  # the zero row during the last perturbed draw
        if eps > 0:
            assert (perturbed != 0).all() and perturbed.abs().max() < 10 * eps
        else:
            assert (perturbed == 0).all()
        assert (ctx.model[1].weight[0] == 0).all()  # restored afterwards
