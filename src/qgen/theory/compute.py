"""The theory of one trained model in one call: noise statistics, curvature, regularizer and
the noise-conditioned bound, as flat values plus per-layer tables.

:func:`compute_theory` works on a private copy of the model (eval mode, BatchNorm running
statistics). What is computed on which data (docs/theory.md, "What runs on which data"):

- weight noise: the weights themselves (no data);
- activation noise: a seeded batch of ``act_batch`` training examples, all quantizers on;
- curvature, predicted regularizer, rounding and uniform loss gaps: one seeded batch of
  ``hessian_batch`` training examples, mean cross-entropy, weight quantizers off (L(w) is the
  loss of the latent float weights) and the activation quantizers acting as
  ``spec.activations`` says (default: clipped to their range, not rounded) in every term;
  the rounding gap with the activation quantizers as trained is reported beside
  (``reg.trained.*``);
- bound: the network as trained (activation quantizers on) with Gaussian noise on the latent
  weights (weight quantizers off); the noisy training error on ``eval_subset`` seeded training
  examples, the noisy test error on ``test_subset`` test examples; m is the size of the whole
  training set; the observed errors are the run's own (result.json, full splits) when given.

A model without weight quantizers (full precision) has no weight noise: its curvature is
computed (``curv.*``) and the rest is left out of ``values``, with the reason under
``undefined``. Activation statistics need activation quantizers, likewise.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qgen.data.source import ExampleSource, as_source, example_shape
from qgen.errors import QgenError
from qgen.measures.context import derive_seed
from qgen.measures.params import select_parameters
from qgen.measures.perturb import upcast
from qgen.quant import LSQQuantizer, QuantConv2d, QuantLinear, quantizers
from qgen.theory.bound import gaussian_kl, gibbs_errors, pacbayes_terms, zero_one_error
from qgen.theory.noise import (
    NoiseStats,
    activation_noise,
    activations_as,
    element_steps,
    quantizers_enabled,
    weight_noise,
)
from qgen.theory.regularizer import (
    LayerCurvature,
    LossHvp,
    layer_curvature,
    loss_hvp,
    quadratic_terms,
    uniform_loss_gap,
)
from qgen.theory.settings import TheorySpec

NO_WEIGHT_NOISE = "no weight quantizer (full-precision weights): no weight quantization noise"
NO_ACT_NOISE = "no activation quantizer: no activation quantization noise"


@dataclass
class TheoryResult:
    """Flat ``values`` (the table columns, without prefix), the per-layer tables, the bound's
    terms, what is undefined and why, and the time of each part."""

    values: dict[str, float]
    weights: list[dict[str, Any]] = field(default_factory=list)
    activations: list[dict[str, Any]] = field(default_factory=list)
    curvature: list[dict[str, Any]] = field(default_factory=list)
    regularizer: dict[str, Any] = field(default_factory=dict)
    bound: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the post-pass record's content)."""
        return {"values": self.values, "weights": self.weights,
                "activations": self.activations, "curvature": self.curvature,
                "regularizer": self.regularizer, "bound": self.bound, "data": self.data,
                "undefined": self.undefined, "timings": self.timings}


def _subset(source: ExampleSource, n: int | None, seed: int, key: str,
            device: torch.device) -> tuple[Tensor, Tensor]:
    """``n`` seeded examples of ``source`` (all when None or larger), images channels-last."""
    total = len(source)
    if n is not None and n < total:
        gen = torch.Generator().manual_seed(derive_seed(seed, key))
        idx = torch.randperm(total, generator=gen)[:n]
    else:
        idx = torch.arange(total)
    x, y = source.take(idx)
    x = x.to(device)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device).long()


def _summary(values: dict[str, float], prefix: str, stats: list[NoiseStats]) -> None:
    """Per-run summaries of the per-quantizer statistics (medians over quantizers), over all
    of them and per bit width (``<prefix>.b<bits>.*``: a run's first and last layers may have
    other bits than the rest), and each quantizer's variance ratio."""
    if not stats:
        return
    ratios = [s.var_ratio for s in stats]
    values[f"{prefix}.var_ratio.median"] = statistics.median(ratios)
    values[f"{prefix}.var_ratio.min"] = min(ratios)
    values[f"{prefix}.var_ratio.max"] = max(ratios)
    ks = [s.ks_stat for s in stats if not math.isnan(s.ks_stat)]
    if ks:
        values[f"{prefix}.ks_stat.median"] = statistics.median(ks)
        values[f"{prefix}.ks_stat.max"] = max(ks)
        values[f"{prefix}.ks_pvalue.min"] = min(s.ks_pvalue for s in stats
                                                if not math.isnan(s.ks_pvalue))
    clipped = [s.clipped_fraction for s in stats]
    values[f"{prefix}.clipped_fraction.mean"] = sum(clipped) / len(clipped)
    values[f"{prefix}.clipped_fraction.max"] = max(clipped)
    values[f"{prefix}.saturated_fraction.mean"] = (sum(s.saturated_fraction for s in stats)
                                                   / len(stats))
    values[f"{prefix}.exact_fraction.mean"] = sum(s.exact_fraction for s in stats) / len(stats)
    values[f"{prefix}.mean.max_abs"] = max(abs(s.mean) for s in stats)
    for bits in sorted({s.bits for s in stats}, reverse=True):
        group = [s for s in stats if s.bits == bits]
        b = f"{prefix}.b{bits}"
        values[f"{b}.layers"] = float(len(group))
        for key in ("var_ratio", "nsr", "nsr_predicted", "ks_stat", "clipped_fraction"):
            finite = [getattr(s, key) for s in group if math.isfinite(getattr(s, key))]
            if finite:
                values[f"{b}.{key}"] = statistics.median(finite)
    for s in stats:
        values[f"{prefix}.var_ratio.{s.name}"] = s.var_ratio


def _layer_name(param_name: str) -> str:
    return param_name.removesuffix(".weight")


@dataclass
class _Subject:
    """The private working copy of the model and the weight tensors the theory is about.

    ``tensors``: every conv/linear weight (``names`` are their layers); ``quantizer`` and
    ``steps``: its weight quantizer and per-element steps, None for a full-precision tensor;
    ``noisy``: the indices of the weight-quantized tensors.
    """

    model: nn.Module
    names: list[str]
    param_names: list[str]
    tensors: list[Tensor]
    quantizer: list[LSQQuantizer | None]
    steps: list[Tensor | None]
    w_quant: list[LSQQuantizer]
    a_quant: list[LSQQuantizer]

    @property
    def noisy(self) -> list[int]:
        return [i for i, s in enumerate(self.steps) if s is not None]


def _subject(model: nn.Module, image_input: bool, dev: torch.device) -> _Subject:
    work = copy.deepcopy(model).to(dev).eval()
    if image_input:
        # image batches run 1.5-2x faster channels-last on the CPU (measured on the demo's
        # NiN, as in qgen.measures.context); only the memory layout changes
        work.to(memory_format=torch.channels_last)
    for p in work.parameters():
        p.requires_grad_(False)
    params = select_parameters(work, "weights")
    wqs = [o.w_quant if isinstance(o, (QuantConv2d, QuantLinear)) else None
           for o in params.owners]
    steps = [None if q is None else element_steps(q, p.detach()).clone()
             for q, p in zip(wqs, params.tensors, strict=True)]
    acts = [q for _, q in quantizers(work) if q.role == "activation" and q.enabled]
    return _Subject(work, [_layer_name(n) for n in params.names], list(params.names),
                    list(params.tensors), wqs, steps, [q for q in wqs if q is not None], acts)


def compute_theory(model: nn.Module, w0: Mapping[str, Tensor], train: ExampleSource,
                   test: ExampleSource | None, spec: TheorySpec | None = None, *,
                   observed: Mapping[str, Any] | None = None,
                   device: str | torch.device = "cpu") -> TheoryResult:
    """Noise statistics, curvature, regularizer and bound of one trained model.

    ``w0``: the state dict at initialization (the prior's centre). ``train``/``test``: the
    run's splits (sources, as :func:`~qgen.data.source.as_source` takes them); ``test``
    may be None (no noisy test error). ``observed``: the run's metrics (``train_accuracy``,
    ``test_accuracy``); when None the quantized network's errors on the evaluation subsets
    are used. The caller's model is not changed.
    """
    spec = spec or TheorySpec()
    dev = torch.device(device)
    train = as_source(train)
    m = len(train)
    if m < 2:
        raise QgenError(f"the training data has {m} example(s): the bound needs at least 2")
    subj = _subject(model, len(example_shape(train)) == 3, dev)
    res = TheoryResult(values={}, data={"m": m})

    t0 = time.perf_counter()
    if subj.w_quant:
        stats = weight_noise(subj.model, ks_max=spec.ks_max,
                             seed=derive_seed(spec.seed, "theory/ks/w"))
        res.weights = [s.to_dict() for s in stats]
        _summary(res.values, "noise", stats)
    else:
        res.undefined["noise"] = NO_WEIGHT_NOISE
    res.timings["weight_noise"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if subj.a_quant:
        xa, _ = _subset(train, spec.act_batch, spec.seed, "theory/act", dev)
        stats = activation_noise(subj.model, xa, ks_max=spec.ks_max,
                                 seed=derive_seed(spec.seed, "theory/ks/a"))
        res.activations = [s.to_dict() for s in stats]
        _summary(res.values, "act", stats)
        res.data["act_batch"] = len(xa)
    else:
        res.undefined["act"] = NO_ACT_NOISE
    res.timings["activation_noise"] = time.perf_counter() - t0

    # from here on L(w) is the loss of the latent float weights: weight quantizers off; the
    # activation quantizers act as spec.activations says for the curvature and the
    # regularizer (the same in every term), as trained for the bound
    res.data["activations"] = spec.activations
    with quantizers_enabled(subj.w_quant, False):
        with activations_as(subj.a_quant, spec.activations):
            _curvature_and_regularizer(res, subj, train, spec, dev)
        if subj.noisy:
            _rounding_as_trained(res, subj, train, spec, dev)
            t0 = time.perf_counter()
            _bound(res, subj, w0, train, test, m, spec, observed, dev)
            res.timings["bound"] = time.perf_counter() - t0
    if not subj.noisy:
        res.undefined["reg"] = res.undefined["bound"] = NO_WEIGHT_NOISE
    return res


def _curvature_and_regularizer(res: TheoryResult, subj: _Subject, train: ExampleSource,
                               spec: TheorySpec, dev: torch.device) -> None:
    """curv.* for every weight tensor; reg.* (predicted, rounding, uniform) when quantized."""
    t0 = time.perf_counter()
    xh, yh = _subset(train, spec.hessian_batch, spec.seed, "theory/hessian", dev)
    res.data["hessian_batch"] = len(xh)

    def loss_fn() -> Tensor:
        return F.cross_entropy(upcast(subj.model(xh)), yh)

    for p in subj.tensors:
        p.requires_grad_(True)
    try:
        lh = loss_hvp(loss_fn, subj.tensors)
        curv = layer_curvature(lh.hvp, subj.tensors, subj.steps, subj.names,
                               spec.hutchinson_probes, derive_seed(spec.seed, "theory/hutchinson"))
        res.timings["curvature"] = time.perf_counter() - t0
        res.curvature = curv.table()
        values = res.values
        values["curv.trace"] = curv.trace_total
        values["curv.trace_se"] = curv.trace_total_se
        for name, tr in zip(subj.names, curv.trace, strict=True):
            values[f"curv.trace.{name}"] = tr
        values["reg.loss_float"] = lh.loss
        if subj.noisy:
            t0 = time.perf_counter()
            _regularizer(res, subj, curv, lh, loss_fn, spec)
            res.timings["regularizer"] = time.perf_counter() - t0
    finally:
        for p in subj.tensors:
            p.requires_grad_(False)


def _ratio(num: float, num_se: float, den: float, den_se: float) -> tuple[float, float]:
    """num/den and its delta-method standard error (the two estimates independent)."""
    return num / den, math.hypot(num_se / den, num * den_se / den**2)


def _regularizer(res: TheoryResult, subj: _Subject, curv: LayerCurvature, lh: LossHvp,
                 loss_fn: Callable[[], Tensor], spec: TheorySpec) -> None:
    """Predicted (s²/24)·tr(H) against L(Q(w)) − L(w) and E[L(w + Δ')] − L(w), in total and
    per layer."""
    noisy = subj.noisy
    with torch.no_grad():
        loss_float = float(loss_fn())  # L(w) as the no-grad forwards below compute it
        with quantizers_enabled(subj.w_quant, True):
            # the rounding error Q(w) − w (zero on full-precision tensors), and L(Q(w))
            delta = [torch.zeros_like(p) if q is None else q(p.detach()) - p.detach()
                     for p, q in zip(subj.tensors, subj.quantizer, strict=True)]
            loss_q = float(loss_fn())
        layer_rounding = {}
        for i in noisy:  # L(w with layer i alone quantized) − L(w)
            with quantizers_enabled([subj.quantizer[i]], True):  # type: ignore[list-item]
                layer_rounding[i] = float(loss_fn()) - loss_float
    first, second = quadratic_terms(lh, delta)
    gap = uniform_loss_gap(loss_fn, [subj.tensors[i] for i in noisy],
                           [subj.steps[i] for i in noisy], spec.uniform_draws,
                           derive_seed(spec.seed, "theory/uniform"))
    layer_uniform = {}
    if spec.layer_pairs:
        for i in noisy:
            layer_uniform[i] = uniform_loss_gap(
                loss_fn, [subj.tensors[i]], [subj.steps[i]], spec.layer_pairs,  # type: ignore[list-item]
                derive_seed(spec.seed, f"theory/uniform/{subj.names[i]}"))
    predicted, predicted_se = curv.regularizer_total, curv.regularizer_total_se
    rounding = loss_q - loss_float
    values = res.values
    values.update({
        "reg.loss_float": loss_float,
        "reg.loss_quantized": loss_q,
        "reg.predicted": predicted,
        "reg.predicted_se": predicted_se,
        "reg.measured_rounding": rounding,
        "reg.measured_uniform": gap.value,
        "reg.measured_uniform_se": gap.stderr,
        "reg.rounding_first_order": first,
        "reg.rounding_second_order": second,
        "reg.rounding_layer_sum": sum(layer_rounding.values()),
    })
    if predicted != 0:
        values["reg.ratio_rounding"], values["reg.ratio_rounding_se"] = _ratio(
            rounding, 0.0, predicted, predicted_se)
        values["reg.ratio_uniform"], values["reg.ratio_uniform_se"] = _ratio(
            gap.value, gap.stderr, predicted, predicted_se)
    layers = []
    for i in noisy:
        name = subj.names[i]
        g1 = float((lh.grads[i].double() * delta[i].double()).sum())
        values[f"reg.predicted.{name}"] = curv.regularizer[i]
        values[f"reg.rounding.{name}"] = layer_rounding[i]
        row = {"name": name, "bits": subj.quantizer[i].bits,  # type: ignore[union-attr]
               "predicted": curv.regularizer[i], "predicted_se": curv.regularizer_se[i],
               "rounding": layer_rounding[i], "rounding_first_order": g1}
        if i in layer_uniform:
            values[f"reg.uniform.{name}"] = layer_uniform[i].value
            row.update(uniform=layer_uniform[i].value, uniform_se=layer_uniform[i].stderr)
        layers.append(row)
    res.regularizer = {"predicted": predicted, "predicted_se": predicted_se,
                       "rounding": rounding, "uniform": gap.to_dict(),
                       "rounding_first_order": first, "rounding_second_order": second,
                       "loss_float": loss_float, "loss_quantized": loss_q,
                       "probes": curv.probes, "layers": layers,
                       "probe_regularizer_total": [sum(r[j] for r in curv.probe_regularizer)
                                                   for j in range(curv.probes)]}


@torch.no_grad()
def _rounding_as_trained(res: TheoryResult, subj: _Subject, train: ExampleSource,
                         spec: TheorySpec, dev: torch.device) -> None:
    """L(Q(w)) − L(w) on the regularizer's batch with the activation quantizers as trained
    (rounding included), beside the ``spec.activations`` numbers."""
    xh, yh = _subset(train, spec.hessian_batch, spec.seed, "theory/hessian", dev)
    loss_float = float(F.cross_entropy(upcast(subj.model(xh)), yh))
    with quantizers_enabled(subj.w_quant, True):
        loss_q = float(F.cross_entropy(upcast(subj.model(xh)), yh))
    res.values["reg.trained.loss_float"] = loss_float
    res.values["reg.trained.loss_quantized"] = loss_q
    res.values["reg.trained.measured_rounding"] = loss_q - loss_float


def _observed_errors(observed: Mapping[str, Any] | None, subj: _Subject,
                     data: dict[str, tuple[Tensor, Tensor]], batch: int
                     ) -> tuple[float, float, str]:
    """(train error, test error, where they come from) of the quantized network."""
    if observed is not None and "test_accuracy" in observed and "train_accuracy" in observed:
        return (1.0 - float(observed["train_accuracy"]), 1.0 - float(observed["test_accuracy"]),
                "run metrics (full splits)")
    with quantizers_enabled(subj.w_quant, True):
        err = {k: zero_one_error(subj.model, x, y, batch) for k, (x, y) in data.items()}
    return err["train"], err.get("test", math.nan), "quantized network on the evaluation subsets"


def _bound(res: TheoryResult, subj: _Subject, w0: Mapping[str, Tensor], train: ExampleSource,
           test: ExampleSource | None, m: int, spec: TheorySpec,
           observed: Mapping[str, Any] | None, dev: torch.device) -> None:
    """The bound's terms with σ_i² = s_i²/12 on the weight-quantized tensors."""
    noisy = subj.noisy
    tensors = [subj.tensors[i] for i in noisy]
    names = [subj.param_names[i] for i in noisy]
    missing = [n for n in names if n not in w0]
    if missing:
        raise QgenError(f"w0: no value for {missing[0]!r}; the initial weights do not match "
                        "the model")
    prior = [w0[n].to(dev) for n in names]
    variances = [subj.steps[i].double().square() / 12 for i in noisy]  # float64 for the KL
    kl = gaussian_kl(tensors, prior, variances)
    data = {"train": _subset(train, spec.eval_subset, spec.seed, "theory/eval_subset", dev)}
    if test is not None:
        data["test"] = _subset(as_source(test), spec.test_subset, spec.seed,
                               "theory/test_subset", dev)
    gibbs = gibbs_errors(subj.model, tensors, [v.sqrt() for v in variances], data,
                         spec.bound_draws, derive_seed(spec.seed, "theory/bound"),
                         spec.eval_batch)
    emp, se_draws = gibbs.mean("train"), gibbs.stderr("train")
    n = len(data["train"][1])
    # beside the draws' error, the subset's own sampling error (finite-population corrected)
    se = math.sqrt(se_draws**2 + emp * (1 - emp) / n * (1 - n / m))
    terms = pacbayes_terms(emp, se, kl, m, spec.delta)
    obs_train, obs_test, source = _observed_errors(observed, subj, data, spec.eval_batch)
    values = res.values
    values.update({
        "bound.value": terms.value,
        "bound.value_kl": terms.value_kl,
        "bound.kl": terms.kl,
        "bound.empirical_risk": terms.empirical_risk,
        "bound.empirical_risk_se": terms.empirical_risk_se,
        "bound.complexity": terms.complexity,
        "bound.m": float(m),
        "bound.delta": spec.delta,
        "bound.vacuous": int(terms.value >= 1.0),
        "bound.float_train_error": gibbs.base["train"],
        "bound.observed_train_error": obs_train,
    })
    if "test" in data:
        values["bound.float_test_error"] = gibbs.base["test"]
    if not math.isnan(obs_test):
        values["bound.observed_test_error"] = obs_test
        values["bound.observed_gap"] = obs_test - obs_train
        values["bound.held"] = int(terms.value >= obs_test)
    if "test" in data:
        values["bound.gibbs_test_error"] = gibbs.mean("test")
        values["bound.gibbs_test_error_se"] = gibbs.stderr("test")
        values["bound.held_gibbs"] = int(terms.value >= gibbs.mean("test"))
        values["bound.gibbs_gap"] = gibbs.mean("test") - emp
    layers = [{"name": _layer_name(name), "sigma_rms": float(v.mean().sqrt()),
               "dist_sq": float((t.detach().double() - p.double()).square().sum()),
               "kl": gaussian_kl([t], [p], [v])}
              for name, t, p, v in zip(names, tensors, prior, variances, strict=True)]
    res.bound = {**terms.to_dict(), "draws": spec.bound_draws, "eval_examples": n,
                 "test_examples": len(data["test"][1]) if "test" in data else 0,
                 "observed_source": source, "gibbs_train_errors": gibbs.errors["train"],
                 "gibbs_test_errors": gibbs.errors.get("test", []),
                 "empirical_risk_se_draws": se_draws, "layers": layers}
