"""An approximate PAC-Bayes bound whose perturbation scale is the quantization noise.

Posterior Q = N(w, diag σ²) around the trained latent weights, prior P = N(w0, diag σ²)
around the weights at initialization, with the *same* per-element variance
σ_i² = s_i²/12: the variance of the quantization noise of the element's layer (or channel).
Only weight-quantized tensors are random; every other parameter is held at its trained value.
Then

    KL(Q‖P) = Σ_i (w_i − w0_i)² / (2σ_i²) = Σ_l 6·‖w_l − w0_l‖² / s_l²     (per-tensor steps)

and, with probability ≥ 1 − δ over the m training examples (McAllester 1999, in the form of
Jiang et al. 2020's measures),

    L_test(Q) ≤ L̂_train(Q) + sqrt((KL + ln(m/δ)) / (2(m − 1)))

where L(Q) = E_{u~N(0,σ²)} err(w + u) is the 0-1 error of the noisy (Gibbs) network and
L̂_train(Q) is estimated by Monte-Carlo over posterior draws on the training data. The tighter
Langford–Seeger/Maurer form kl(L̂‖L) ≤ (KL + ln(2√m/δ))/m is reported beside it
(``value_kl``). The bound is *approximate*: σ comes from learned steps, so the prior depends
on the data (no union bound over σ is paid), and L̂ is a Monte-Carlo estimate (docs/theory.md
lists every assumption and where it fails).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from qgen.measures.perturb import make_generator, upcast


def gaussian_kl(w: list[Tensor], w0: list[Tensor], variances: list[Tensor]) -> float:
    """KL(N(w, diag v) ‖ N(w0, diag v)) = Σ_i (w_i − w0_i)² / (2 v_i), in float64."""
    total = 0.0
    for a, b, v in zip(w, w0, variances, strict=True):
        d = a.detach().double() - b.detach().double()
        total += float((d.square() / (2 * v.double().expand_as(d))).sum())
    return total


def mcallester_complexity(kl: float, m: int, delta: float) -> float:
    """sqrt((KL + ln(m/δ)) / (2(m − 1)))."""
    if m < 2:
        return math.inf
    return math.sqrt((kl + math.log(m / delta)) / (2 * (m - 1)))


def binary_kl(q: float, p: float) -> float:
    """kl(q‖p) = q ln(q/p) + (1−q) ln((1−q)/(1−p)) between Bernoulli laws (0 ln 0 = 0)."""
    out = 0.0
    if q > 0:
        out += q * math.log(q / p) if p > 0 else math.inf
    if q < 1:
        out += (1 - q) * math.log((1 - q) / (1 - p)) if p < 1 else math.inf
    return out


def kl_inverse_upper(q: float, c: float, tol: float = 1e-12) -> float:
    """The largest p in [q, 1] with kl(q‖p) ≤ c (bisection; kl grows with p above q)."""
    q = min(max(q, 0.0), 1.0)
    if c <= 0:
        return q
    lo, hi = q, 1.0
    if binary_kl(q, hi) <= c:
        return 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if binary_kl(q, mid) <= c:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass
class BoundTerms:
    """The bound and its terms (the module docstring gives the formulas).

    ``empirical_risk`` is L̂_train(Q) with ``empirical_risk_se``; ``kl``; ``complexity``
    = sqrt((KL + ln(m/δ))/(2(m−1))); ``value`` = empirical_risk + complexity (McAllester);
    ``value_kl`` the kl-inverse form; ``m``, ``delta``.
    """

    m: int
    delta: float
    kl: float
    empirical_risk: float
    empirical_risk_se: float
    complexity: float
    value: float
    value_kl: float

    def to_dict(self) -> dict[str, float | int]:
        """JSON-able form."""
        return asdict(self)


def pacbayes_terms(empirical_risk: float, empirical_risk_se: float, kl: float, m: int,
                   delta: float) -> BoundTerms:
    """The McAllester bound (and the kl-inverse one) from its ingredients."""
    complexity = mcallester_complexity(kl, m, delta)
    kl_rhs = (kl + math.log(2 * math.sqrt(m) / delta)) / m
    return BoundTerms(m=m, delta=delta, kl=kl, empirical_risk=empirical_risk,
                      empirical_risk_se=empirical_risk_se, complexity=complexity,
                      value=empirical_risk + complexity,
                      value_kl=kl_inverse_upper(empirical_risk, kl_rhs))


@torch.no_grad()
def zero_one_error(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    """The 0-1 error of ``model`` on (x, y), in no-grad batches of ``batch``."""
    wrong = 0
    for i in range(0, len(x), batch):
        logits = upcast(model(x[i:i + batch]))
        wrong += int((logits.argmax(1) != y[i:i + batch]).sum())
    return wrong / len(x)


@dataclass
class GibbsErrors:
    """0-1 errors of posterior draws w + u, u ~ N(0, diag σ²), on each data set."""

    errors: dict[str, list[float]]
    base: dict[str, float]

    def mean(self, which: str) -> float:
        """Mean over draws on data set ``which``."""
        e = self.errors[which]
        return sum(e) / len(e)

    def stderr(self, which: str) -> float:
        """Standard error of that mean over draws."""
        e = self.errors[which]
        n = len(e)
        mu = sum(e) / n
        return math.sqrt(sum((v - mu) ** 2 for v in e) / (n - 1) / n) if n > 1 else math.nan


@torch.no_grad()
def gibbs_errors(model: nn.Module, params: list[Tensor], stds: list[Tensor],
                 data: dict[str, tuple[Tensor, Tensor]], draws: int, seed: int,
                 batch: int = 500) -> GibbsErrors:
    """0-1 error of ``model`` with ``params`` replaced by w + u, u_i ~ N(0, std_i²), on each
    named (x, y) of ``data``, for ``draws`` seeded draws (draw k sees the same u on every
    data set). The parameters are restored exactly afterwards."""
    original = [p.detach().clone() for p in params]
    base = {k: zero_one_error(model, x, y, batch) for k, (x, y) in data.items()}
    errors: dict[str, list[float]] = {k: [] for k in data}
    gen = make_generator(seed, params[0].device)
    try:
        for _ in range(draws):
            for p, o, s in zip(params, original, stds, strict=True):
                z = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
                torch.addcmul(o, z, s.to(p.dtype).expand_as(p), out=p.data)
            for k, (x, y) in data.items():
                errors[k].append(zero_one_error(model, x, y, batch))
    finally:
        for p, o in zip(params, original, strict=True):
            p.data.copy_(o)
    return GibbsErrors(errors, base)
