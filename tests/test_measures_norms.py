"""Norm ingredients: exact FFT conv spectral norm, path norm, BN folding, margins."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qgen.config import ModelSpec
from qgen.measures.bnfold import fold_batchnorm
from qgen.measures.norms import (
    conv_spectral_norm_fft,
    margin_gamma,
    margins,
    matrix_spectral_norm,
    path_norm,
)
from qgen.models import build_model


def circular_conv_matrix(kernel, n, stride, dilation=1, groups=1):
    """The explicit matrix of a circularly padded conv2d on a (c_in, n, n) input, built by
    applying the conv to each basis vector. Padding: circular, (k_eff - 1) // 2 on each side
    (any circular padding is a shift of the input, which leaves the norm unchanged)."""
    c_in = kernel.shape[1] * groups
    k_eff = (kernel.shape[-1] - 1) * dilation + 1
    pad = (k_eff - 1) // 2
    basis = torch.eye(c_in * n * n, dtype=torch.float64).view(-1, c_in, n, n)
    padded = F.pad(basis, (pad, pad, pad, pad), mode="circular")
    out = F.conv2d(padded, kernel.double(), stride=stride, dilation=dilation, groups=groups)
    return out.reshape(out.shape[0], -1).T  # column j = image of basis vector j


@pytest.mark.parametrize("c_out,c_in,k,n,stride,dilation,groups", [
    (3, 2, 3, 6, 1, 1, 1),
    (4, 3, 3, 6, 2, 1, 1),   # strided: polyphase path
    (2, 2, 3, 8, 1, 2, 1),   # dilated
    (4, 4, 3, 6, 1, 1, 2),   # grouped (block diagonal)
    (3, 2, 5, 4, 1, 1, 1),   # kernel wider than the 4x4 torus: taps alias
    (3, 5, 1, 5, 1, 1, 1),   # 1x1 conv == its channel matrix
])
def test_fft_spectral_norm_equals_explicit_matrix(c_out, c_in, k, n, stride, dilation, groups):
    torch.manual_seed(c_out * 100 + k * 10 + n)
    kernel = torch.randn(c_out, c_in // groups, k, k, dtype=torch.float64)
    mat = circular_conv_matrix(kernel, n, stride, dilation, groups)
    want = torch.linalg.matrix_norm(mat, ord=2).item()
    got, exact = conv_spectral_norm_fft(kernel, (n, n), (stride, stride), (dilation, dilation),
                                        groups)
    assert exact
    assert got == pytest.approx(want, rel=1e-9)


def test_fft_norm_differs_from_reshaped_approximation():
    torch.manual_seed(1)
    kernel = torch.randn(4, 3, 3, 3)
    exact, _ = conv_spectral_norm_fft(kernel, (8, 8))
    assert abs(exact - matrix_spectral_norm(kernel)) > 1e-3  # they are different quantities


def test_fft_strided_indivisible_falls_back_to_upper_bound():
    torch.manual_seed(2)
    kernel = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    got, exact = conv_spectral_norm_fft(kernel, (5, 5), (2, 2))
    stride1, _ = conv_spectral_norm_fft(kernel, (5, 5))
    assert not exact and got == stride1


def brute_force_path_norm(weights):
    """Σ over every input→output path of Π w² (bias-free ReLU MLP)."""
    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    total = 0.0
    for path in itertools.product(*[range(s) for s in sizes]):
        prod = 1.0
        for layer, w in enumerate(weights):
            prod *= w[path[layer + 1], path[layer]].item() ** 2
        total += prod
    return total


def test_path_norm_matches_brute_force():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 5, bias=False),
                        nn.ReLU(), nn.Linear(5, 2, bias=False)).double()
    value, _ = path_norm(net, (3,), torch.device("cpu"))
    want = brute_force_path_norm([net[0].weight, net[2].weight, net[4].weight])
    assert value == pytest.approx(want, rel=1e-12)
    assert net[0].weight.min() < 0  # the caller's network is untouched (not squared)


def randomize_bn(model):
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


@pytest.mark.parametrize("name,depth", [("nin", 2), ("resnet", 20)])
def test_bn_fold_preserves_logits(name, depth):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=name, depth=depth, width=1), 1, 10, 16).eval()
    randomize_bn(model)
    x = torch.randn(8, 1, 16, 16)
    folded = copy.deepcopy(model)
    report = fold_batchnorm(folded)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(report.folded) == n_bn and not report.unfolded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        ref, got = model(x), folded(x)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_bn_fold_skips_a_conv_whose_output_is_shared():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x):
            h = self.conv(x)
            return self.bn(h) + h  # the conv output feeds the BN *and* the sum

    model = Shared().eval()
    randomize_bn(model)
    report = fold_batchnorm(model)
    assert report.folded == () and report.unfolded == ("bn",)


def test_margin_and_gamma():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.5, -1.0]])
    y = torch.tensor([0, 1, 1])
    assert margins(logits, y).tolist() == [2.0, -3.0, 0.5]
    assert margin_gamma(logits, y, 0.5) == pytest.approx(0.5)
