"""Norm and margin ingredients: margins, layerwise Frobenius and spectral norms, path norm.

Spectral norms of convolutions come two ways, named as such in the measure names:

- ``spectral`` (reshaped kernel): the largest singular value of the (out, in·kh·kw) matrix,
  the usual cheap proxy (Yoshida & Miyato 2017), not the operator norm of the convolution;
- ``spectral_fft`` (exact): the operator norm of the convolution as a linear map on the
  layer's actual input size, with circular (periodic) boundary, computed as in Sedghi, Gupta
  & Long 2019: the 2-D DFT of the zero-padded kernel gives, per frequency, a (out, in) matrix
  whose singular values are the operator's. Strided convolutions are first rewritten as a
  stride-1 convolution over the s_h·s_w polyphase components of the input (exact when the
  input size is divisible by the stride; otherwise the stride-1 norm, an upper bound, is used
  and flagged). Zero padding gives a slightly different operator; circular is the convention.

Path norm (Neyshabur et al. 2015; Jiang eq. 44): Σ over input-output paths of the product of
squared weights, computed as the sum of the outputs of a copy of the network whose parameters
are squared, on an all-ones input, with BatchNorm folded and quantizers bypassed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qgen.measures.bnfold import FoldReport, fold_batchnorm
from qgen.quant import set_quantizers_enabled


def margins(logits: Tensor, y: Tensor) -> Tensor:
    """True-class logit minus the largest other logit, per example."""
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return true - others.max(dim=1).values


def margin_gamma(logits: Tensor, y: Tensor, q: float = 0.1) -> float:
    """γ: the q-quantile (default 10th percentile) of the margins."""
    return float(torch.quantile(margins(logits, y).double(), q))


def _dilate(kernel: Tensor, dilation: tuple[int, int]) -> Tensor:
    dh, dw = dilation
    if dh == 1 and dw == 1:
        return kernel
    o, i, kh, kw = kernel.shape
    out = kernel.new_zeros(o, i, (kh - 1) * dh + 1, (kw - 1) * dw + 1)
    out[:, :, ::dh, ::dw] = kernel
    return out


def _polyphase(kernel: Tensor, stride: tuple[int, int]) -> Tensor:
    """Rewrite a stride-(sh, sw) kernel as a stride-1 kernel over sh·sw input phases:
    tap (a, b) of input channel c goes to phase channel (c, a mod sh, b mod sw) at
    position (a // sh, b // sw)."""
    sh, sw = stride
    o, i, kh, kw = kernel.shape
    ph, pw = -(-kh // sh), -(-kw // sw)
    padded = kernel.new_zeros(o, i, ph * sh, pw * sw)
    padded[:, :, :kh, :kw] = kernel
    # (o, i, ph, sh, pw, sw) -> (o, i, sh, sw, ph, pw) -> (o, i*sh*sw, ph, pw)
    return (padded.view(o, i, ph, sh, pw, sw).permute(0, 1, 3, 5, 2, 4)
            .reshape(o, i * sh * sw, ph, pw))


def _wrap(kernel: Tensor, n_h: int, n_w: int) -> Tensor:
    """Sum taps that alias onto the same position of an n_h x n_w torus (kernel > input)."""
    o, i, kh, kw = kernel.shape
    if kh <= n_h and kw <= n_w:
        return kernel
    th, tw = -(-kh // n_h) * n_h, -(-kw // n_w) * n_w
    padded = kernel.new_zeros(o, i, th, tw)
    padded[:, :, :kh, :kw] = kernel
    return padded.view(o, i, th // n_h, n_h, tw // n_w, n_w).sum(dim=(2, 4))


def conv_spectral_norm_fft(kernel: Tensor, input_hw: tuple[int, int],
                           stride: tuple[int, int] = (1, 1), dilation: tuple[int, int] = (1, 1),
                           groups: int = 1) -> tuple[float, bool]:
    """Exact operator norm of a circular 2-D convolution on an ``input_hw`` input.

    ``kernel`` is (out, in/groups, kh, kw). Returns (norm, exact): ``exact`` is False when a
    stride does not divide the input size and the stride-1 norm (an upper bound) is returned.
    """
    k = _dilate(kernel.detach().double(), dilation)
    n_h, n_w = input_hw
    sh, sw = stride
    exact = True
    if (sh, sw) != (1, 1):
        if n_h % sh == 0 and n_w % sw == 0:
            k = _polyphase(k, (sh, sw))
            n_h, n_w = n_h // sh, n_w // sw
        else:
            exact = False
    out_per_group = kernel.shape[0] // groups
    best = 0.0
    for g in range(groups):
        kg = _wrap(k[g * out_per_group:(g + 1) * out_per_group], n_h, n_w)
        spectrum = torch.fft.fft2(kg, s=(n_h, n_w))  # (out, in, n_h, n_w), complex
        mats = spectrum.permute(2, 3, 0, 1)  # one (out, in) matrix per frequency
        best = max(best, float(torch.linalg.svdvals(mats).max()))
    return best, exact


def matrix_spectral_norm(weight: Tensor) -> float:
    """Largest singular value of the weight reshaped to (out, -1)."""
    return float(torch.linalg.matrix_norm(weight.detach().double().reshape(weight.shape[0], -1),
                                          ord=2))


@dataclass
class LayerNorms:
    """Per-layer squared norms of the conv/linear weights W_j and of W_j − W0_j."""

    names: list[str]
    fro_sq: list[float]
    spec_sq: list[float]
    spec_fft_sq: list[float]
    dist_fro_sq: list[float]
    dist_spec_sq: list[float]
    dist_spec_fft_sq: list[float]
    fft_inexact: list[str]

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return dict(self.__dict__)


def conv_input_sizes(model: nn.Module, example: Tensor) -> dict[int, tuple[int, int]]:
    """Spatial input size of every Conv2d (keyed by module id), from one forward pass of
    ``example`` (a real input, so lazily initialized quantizers see real data)."""
    sizes: dict[int, tuple[int, int]] = {}
    hooks = []

    def record(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
        sizes[id(mod)] = (int(args[0].shape[-2]), int(args[0].shape[-1]))

    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def layer_norms(names: list[str], owners: list[nn.Module], w: list[Tensor], w0: list[Tensor],
                sizes: dict[int, tuple[int, int]]) -> LayerNorms:
    """Frobenius, reshaped-spectral and FFT-spectral squared norms of each matrix weight."""
    out = LayerNorms([], [], [], [], [], [], [], [])
    for name, mod, wi, w0i in zip(names, owners, w, w0, strict=True):
        d = wi - w0i
        out.names.append(name)
        out.fro_sq.append(float(wi.double().square().sum()))
        out.dist_fro_sq.append(float(d.double().square().sum()))
        out.spec_sq.append(matrix_spectral_norm(wi) ** 2)
        out.dist_spec_sq.append(matrix_spectral_norm(d) ** 2)
        if isinstance(mod, nn.Conv2d) and id(mod) in sizes:
            args = (sizes[id(mod)], tuple(mod.stride), tuple(mod.dilation), mod.groups)
            s, exact = conv_spectral_norm_fft(wi, *args)
            s_d, _ = conv_spectral_norm_fft(d, *args)
            if not exact:
                out.fft_inexact.append(name)
        else:
            # A linear layer (or a 1x1 map) is its own matrix: the exact norm is the matrix one.
            s, s_d = math.sqrt(out.spec_sq[-1]), math.sqrt(out.dist_spec_sq[-1])
        out.spec_fft_sq.append(s**2)
        out.dist_spec_fft_sq.append(s_d**2)
    return out


@torch.no_grad()
def path_norm(model: nn.Module, input_shape: tuple[int, ...],
              device: torch.device) -> tuple[float, FoldReport]:
    """Σ_paths Π w² as f_{w²}(1): a copy with BN folded, quantizers off, parameters squared,
    evaluated on one all-ones input; the outputs are summed."""
    work = copy.deepcopy(model).eval()
    set_quantizers_enabled(work, False)
    report = fold_batchnorm(work)
    for p in work.parameters():
        p.data.square_()
    dtype = next(work.parameters()).dtype
    out = work(torch.ones((1, *input_shape), device=device, dtype=dtype))
    return float(out.double().sum()), report

