"""The theory, computed: the noise model's regularizer on a linear model (exact), the noise
statistics of fine and coarse quantizers, per-layer Hutchinson traces against the exact
Hessian, the bound's arithmetic by hand, and the ``theory`` post-pass with its CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from typer.testing import CliRunner

from qgen.cli import app
from qgen.config import QuantSpec, RunSpec, Runtime
from qgen.data.source import TensorSource
from qgen.errors import QgenError
from qgen.measures.curvature import hutchinson_trace, make_hvp
from qgen.quant import LSQQuantizer, quant_layers, quantize_model
from qgen.results import collect
from qgen.theory import (
    TheorySpec,
    activation_noise,
    activations_as,
    binary_kl,
    compute_theory,
    error_stats,
    gaussian_kl,
    layer_curvature,
    loss_hvp,
    pacbayes_terms,
    quantizers_enabled,
    settings_from_dict,
    theory_run,
    uniform_loss_gap,
    weight_noise,
)
from qgen.train import execute_run

# ---------------------------------------------------------------- the regularizer, exactly


def linear_problem(k: int = 3, d: int = 6, n: int = 200):
    """Linear regression W ∈ R^{k×d}, squared loss summed over outputs, mean over examples."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, d,
                                                                               dtype=torch.float64)
    y = torch.randn(n, k, generator=g, dtype=torch.float64)
    net = nn.Linear(d, k, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))

    def loss_fn():
        return (y - net(x)).square().sum(1).mean()

    return net, x, loss_fn


@pytest.mark.parametrize("steps", [[0.2, 0.2, 0.2], [0.1, 0.2, 0.4]],
                         ids=["per-tensor", "per-channel"])
def test_linear_regression_regularizer_is_exact(steps):
    net, x, loss_fn = linear_problem()
    s = torch.tensor(steps, dtype=torch.float64).view(-1, 1)  # one step per output row
    mean_sq_norm = float(x.square().sum(1).mean())  # mean ‖x‖²
    # E[(y − (w+Δ)ᵀx)²] = (y − wᵀx)² + Var(Δ)‖x‖², per output row k with Var(Δ) = s_k²/12:
    exact = sum(sk**2 / 12 * mean_sq_norm for sk in steps)
    # the (s²/24)·tr(H) form: each row's Hessian block is 2·mean(x xᵀ), trace 2·mean ‖x‖²
    tr_block = 2 * mean_sq_norm
    assert sum(sk**2 / 24 * tr_block for sk in steps) == pytest.approx(exact, rel=1e-12)

    w = net.weight
    w.requires_grad_(True)
    lh = loss_hvp(loss_fn, [w])
    curv = layer_curvature(lh.hvp, [w], [s], ["w"], probes=400, seed=0)
    assert curv.trace_total == pytest.approx(3 * tr_block, abs=4 * curv.trace_total_se)
    assert 0 < curv.regularizer_total_se < 0.1 * exact
    assert abs(curv.regularizer_total - exact) < 4 * curv.regularizer_total_se

    before = w.detach().clone()
    gap = uniform_loss_gap(loss_fn, [w], [s], pairs=400, seed=0)
    assert torch.equal(w.detach(), before)  # restored exactly
    with torch.no_grad():
        assert gap.base_loss == pytest.approx(float(loss_fn()))
    assert 0 < gap.stderr < 0.05 * exact
    assert abs(gap.value - exact) < 4 * gap.stderr
    print(f"\nlinear {steps}: exact {exact:.6g}, predicted {curv.regularizer_total:.6g} "
          f"± {curv.regularizer_total_se:.2g}, Monte-Carlo {gap.value:.6g} ± {gap.stderr:.2g}")


# ---------------------------------------------------------------- noise statistics


def test_fine_quantizer_error_is_uniform_with_variance_s2_over_12():
    v = torch.randn(20000, generator=torch.Generator().manual_seed(1))
    q = LSQQuantizer(8, signed=True, role="weight")
    q.init_from(v)
    st = error_stats("w", q, v, q(v), ks_max=20000, seed=0)
    assert st.clipped_fraction == 0 and st.n == 20000 and st.ks_n == 20000
    assert 0 < st.var_ratio_se < 0.02
    assert abs(st.var_ratio - 1) < 3 * st.var_ratio_se
    assert abs(st.mean) < 4 * math.sqrt(1 / 12 / st.n)
    assert st.ks_pvalue > 0.01  # uniformity is not rejected
    s = float(q.effective_step())
    assert st.predicted_var == pytest.approx(s * s / 12, rel=1e-12)
    assert st.delta_var / st.predicted_var == pytest.approx(st.var_ratio, rel=1e-9)
    assert abs(st.nsr / st.nsr_predicted - 1) < 3 * st.var_ratio_se + 1e-3
    assert st.saturated_fraction == 0 and st.var_ratio_nonexact == pytest.approx(st.var_ratio)
    print(f"\n8-bit: var ratio {st.var_ratio:.4f} ± {st.var_ratio_se:.4f}, "
          f"KS {st.ks_stat:.4f} (p={st.ks_pvalue:.3f})")


def test_coarse_quantizer_reports_clipping():
    v = torch.randn(20000, generator=torch.Generator().manual_seed(1))
    q = LSQQuantizer(2, signed=True, role="weight")  # codes -2..1
    q.init_from(v)
    st = error_stats("w", q, v, q(v), ks_max=5000, seed=0)
    x = v / q.effective_step()
    by_hand = float(((x < -2.5) | (x > 1.5)).double().mean())  # |Δ| > s/2 beyond the codes
    assert st.clipped_fraction > 0
    assert st.clipped_fraction == pytest.approx(by_hand)
    assert st.to_dict()["clipped_fraction"] == st.clipped_fraction
    assert st.var_ratio > st.var_ratio_unclipped  # the clipped errors exceed s/2
    assert st.saturated_fraction == pytest.approx(float(((x < -2) | (x > 1)).double().mean()))
    assert st.saturated_fraction > st.clipped_fraction
    assert st.ks_n == 5000 and 0 <= st.ks_stat <= 1


def test_per_channel_steps_pool_the_scaled_error():
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(4000, 3)
    with torch.no_grad():  # rows on very different scales: one step each
        lin.weight.copy_(torch.randn(3, 4000, generator=g) * torch.tensor([[1e-3], [1.0], [100.0]]))
    net = quantize_model(nn.Sequential(lin), QuantSpec(w_bits=8, granularity="channel",
                                                       first_last="same"))
    (st,) = weight_noise(net)
    assert st.granularity == "channel" and st.n == 12000
    assert abs(st.var_ratio - 1) < 3 * st.var_ratio_se  # Δ/s pooled over the channels


def test_activation_noise_reads_each_quantizer_input():
    torch.manual_seed(0)
    net = quantize_model(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)),
                         QuantSpec(w_bits=4, a_bits=4, first_last="same")).eval()
    x = torch.randn(64, 8)
    net(x)  # starts the activation steps
    stats = activation_noise(net, x)
    assert [s.name for s in stats] == ["0", "2"]
    # the second layer's quantizer sees the ReLU output, whose zeros sit on a code exactly
    layer0, layer2 = net[0], net[2]
    with torch.no_grad():
        h = torch.relu(layer0(x))
        by_hand = error_stats("2", layer2.a_quant, h, layer2.a_quant(h), ks_max=20000, seed=0)
    assert stats[1].var_ratio == pytest.approx(by_hand.var_ratio)
    assert stats[1].exact_fraction >= float((h == 0).double().mean()) > 0


def test_activation_modes_clip_round_or_pass_and_restore():
    torch.manual_seed(0)
    net = quantize_model(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)),
                         QuantSpec(w_bits=4, a_bits=2, first_last="same")).eval()
    x = torch.randn(32, 8) * 3
    net(x)  # starts the activation steps
    aq = net[2].a_quant
    h = torch.relu(net[0](x))
    s = float(aq.effective_step())
    with torch.no_grad():
        as_trained = net(x)
        with activations_as([aq], "clipped"):
            clipped = net(x)
            by_hand = net[2](h.clamp(-aq.Qn * s, aq.Qp * s))
        with activations_as([aq], "float"):
            floating = net(x)
            with quantizers_enabled([aq], False):
                assert torch.equal(floating, net(x))
        with activations_as([aq], "quantized"):
            assert torch.equal(net(x), as_trained)
    assert torch.allclose(clipped, by_hand)
    assert float((h > aq.Qp * s).double().mean()) > 0  # the clip is active somewhere
    assert not torch.allclose(clipped, as_trained) and not torch.allclose(clipped, floating)
    assert aq.enabled and not aq._forward_hooks  # restored
    with torch.no_grad():
        assert torch.equal(net(x), as_trained)
    # clipped, the loss moves smoothly with the weights; as trained, it is a staircase
    w = net[2].weight
    with torch.no_grad(), activations_as([aq], "clipped"):
        base = net(x)
        w.mul_(1 + 1e-6)
        moved = net(x)
        w.div_(1 + 1e-6)
    assert (moved - base).abs().max() < 1e-4


# ---------------------------------------------------------------- Hutchinson per layer


def tiny_mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return net, x, y


def exact_weight_hessian(net, x, y):
    names = ["0.weight", "2.weight"]
    params = dict(net.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def loss_of(flat):
        chunks = torch.split(flat, sizes)
        state = {**{k: v.detach() for k, v in params.items()},
                 **{n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}}
        return F.cross_entropy(functional_call(net, state, (x,)), y)

    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(loss_of, flat), sizes


def test_per_layer_hutchinson_matches_the_exact_hessian():
    net, x, y = tiny_mlp()
    h, (n1, _) = exact_weight_hessian(net, x, y)
    blocks = [h[:n1, :n1], h[n1:, n1:]]
    params = [net[0].weight, net[2].weight]
    s_row = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).view(4, 1)  # per channel
    lh = loss_hvp(lambda: F.cross_entropy(net(x), y), params)
    est = layer_curvature(lh.hvp, params, [s_row, None], ["0", "2"], probes=400, seed=3)
    for k, block in enumerate(blocks):
        assert abs(est.trace[k] - float(torch.trace(block))) < 4 * est.trace_se[k]
    # Σ_i (s_i²/24)·H_ii over layer 0's elements; layer 2 has no noise
    s_el = s_row.expand(4, 3).reshape(-1)
    exact_reg = float((s_el.square() * torch.diag(blocks[0])).sum()) / 24
    assert abs(est.regularizer[0] - exact_reg) < 4 * est.regularizer_se[0]
    assert est.regularizer[1] == 0 and est.regularizer_total == pytest.approx(est.regularizer[0])
    # the same probes as qgen.measures.curvature's estimator
    ref = hutchinson_trace(make_hvp(net, params, x, y), params, samples=400, seed=3)
    assert est.trace_total == pytest.approx(ref.value, rel=1e-9)
    assert sum(est.trace) == pytest.approx(est.trace_total, rel=1e-9)
    assert est.trace_total == pytest.approx(float(torch.trace(h)), abs=4 * est.trace_total_se)


# ---------------------------------------------------------------- the bound, by hand


def test_bound_terms_by_hand():
    f64 = {"dtype": torch.float64}
    w = [torch.tensor([[0.5, -0.25]], **f64), torch.tensor([1.0], **f64)]
    w0 = [torch.zeros(1, 2, **f64), torch.tensor([0.8], **f64)]
    s = [torch.tensor(0.1, **f64), torch.tensor(0.2, **f64)]
    # KL = Σ (w − w0)²/(2σ²), σ² = s²/12:
    #   (0.25 + 0.0625)/(2·0.01/12) = 0.3125·600 = 187.5;  0.04/(2·0.04/12) = 6
    kl = gaussian_kl(w, w0, [si.square() / 12 for si in s])
    assert kl == pytest.approx(193.5, rel=1e-12)
    m, delta, emp = 1000, 0.05, 0.1
    terms = pacbayes_terms(emp, 0.01, kl, m, delta)
    # sqrt((193.5 + ln(1000/0.05)) / (2·999)) = sqrt(203.40349/1998) = sqrt(0.1018035) = 0.319067
    assert terms.complexity == pytest.approx(math.sqrt((193.5 + math.log(20000)) / 1998))
    assert terms.complexity == pytest.approx(0.319067, abs=1e-6)
    assert terms.value == pytest.approx(0.419067, abs=1e-6)
    # kl-inverse form: kl(0.1 ‖ p) = (193.5 + ln(2·√1000/0.05))/1000 at the bound
    rhs = (193.5 + math.log(2 * math.sqrt(1000) / 0.05)) / 1000
    assert binary_kl(emp, terms.value_kl) == pytest.approx(rhs, rel=1e-6)
    assert emp < terms.value_kl < terms.value


def test_bound_of_a_tiny_quantized_model_by_hand():
    torch.manual_seed(0)
    net = quantize_model(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)),
                         QuantSpec(w_bits=4, a_bits=4, first_last="same"))
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():  # "training" moved the weights
        for _, layer in quant_layers(net):
            layer.weight.add_(0.05 * torch.randn_like(layer.weight))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    xt, yt = torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
    net.eval()(x)  # starts the activation steps
    spec = TheorySpec(hutchinson_probes=4, uniform_draws=2, bound_draws=5, delta=0.1,
                      eval_subset=None, test_subset=None)
    res = compute_theory(net, w0, TensorSource(x, y), TensorSource(xt, yt), spec,
                         observed={"train_accuracy": 0.75, "test_accuracy": 0.5})
    v = res.values
    # KL = Σ_l ‖w_l − w0_l‖² / (2 s_l²/12) = Σ_l 6 ‖w_l − w0_l‖² / s_l²
    kl = sum(6 * float((layer.weight.detach().double() - w0[f"{name}.weight"].double())
                       .square().sum()) / float(layer.w_quant.effective_step()) ** 2
             for name, layer in quant_layers(net))
    assert v["bound.kl"] == pytest.approx(kl, rel=1e-9)
    assert v["bound.m"] == 64
    emp = sum(res.bound["gibbs_train_errors"]) / 5
    assert v["bound.empirical_risk"] == pytest.approx(emp)
    complexity = math.sqrt((kl + math.log(64 / 0.1)) / (2 * 63))
    assert v["bound.complexity"] == pytest.approx(complexity, rel=1e-9)
    assert v["bound.value"] == pytest.approx(emp + complexity, rel=1e-9)
    assert v["bound.observed_test_error"] == pytest.approx(0.5)
    assert v["bound.observed_gap"] == pytest.approx(0.25)
    assert v["bound.held"] == int(emp + complexity >= 0.5)
    assert [row["name"] for row in res.weights] == ["0", "2"]


def test_per_layer_rounding_of_a_single_quantized_layer_is_the_total():
    torch.manual_seed(0)
    net = quantize_model(nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12),
                                       nn.Tanh(), nn.Linear(12, 3)),
                         QuantSpec(w_bits=3, a_bits="fp", first_last="fp"))
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(48, 6, generator=g), torch.randint(0, 3, (48,), generator=g)
    spec = TheorySpec(hutchinson_probes=4, uniform_draws=2, layer_pairs=3, bound_draws=2,
                      hessian_batch=48, eval_subset=None, test_subset=None)
    res = compute_theory(net, w0, TensorSource(x, y), None, spec)
    v = res.values
    assert [row["name"] for row in res.regularizer["layers"]] == ["2"]  # first/last: fp
    assert v["reg.rounding.2"] == pytest.approx(v["reg.measured_rounding"], abs=1e-12)
    assert v["reg.rounding_layer_sum"] == v["reg.rounding.2"]
    assert math.isfinite(v["reg.uniform.2"]) and res.regularizer["layers"][0]["uniform_se"] > 0
    assert v["reg.predicted.2"] == pytest.approx(v["reg.predicted"])
    assert v["noise.b3.layers"] == 1 and "act" in res.undefined
    # no activation quantizer: every activation mode computes the same numbers
    other = compute_theory(net, w0, TensorSource(x, y), None, spec.replace(activations="float"))
    assert other.values["reg.predicted"] == pytest.approx(v["reg.predicted"], rel=1e-9)
    assert other.values["reg.trained.measured_rounding"] == pytest.approx(
        v["reg.measured_rounding"], abs=1e-12)


def test_settings_from_dict_validates_in_one_line():
    assert settings_from_dict({}) == TheorySpec() == settings_from_dict(None)
    assert settings_from_dict({"hutchinson_probes": 20, "activations": "quantized"}) == \
        TheorySpec(hutchinson_probes=20, activations="quantized")
    for bad, fragment in (({"probes": 3}, "unknown field 'probes'; allowed: act_batch"),
                          ({"delta": 1}, "theory.delta: must be a number in (0, 1)"),
                          ({"activations": "soft"}, "clipped, quantized, float"),
                          ({"layer_pairs": 1}, "must be 0 (off) or >= 2"),
                          ({"hessian_batch": 0}, "theory.hessian_batch"),
                          ([1, 2], "must be a mapping")):
        with pytest.raises(QgenError) as err:
            settings_from_dict(bad)
        assert fragment in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- the post-pass and CLI

CHEAP = {"hutchinson_probes": 4, "uniform_draws": 2, "bound_draws": 3, "eval_subset": 100,
         "test_subset": 100, "hessian_batch": 64, "act_batch": 16}
EXPECTED = ["noise.var_ratio.median", "noise.ks_stat.median", "noise.clipped_fraction.mean",
            "act.var_ratio.median", "curv.trace", "reg.predicted", "reg.measured_rounding",
            "reg.measured_uniform", "reg.ratio_rounding", "reg.ratio_uniform", "bound.value",
            "bound.kl", "bound.empirical_risk", "bound.complexity",
            "bound.observed_test_error", "bound.held", "bound.observed_gap", "bound.vacuous",
            "reg.ratio_uniform_se", "reg.trained.measured_rounding", "noise.b4.nsr",
            "noise.b4.nsr_predicted", "noise.b4.var_ratio", "noise.b8.var_ratio",
            "act.b4.nsr"]


def _trained(tmp_path, tree):
    spec = RunSpec.from_dict(tree)
    execute_run(spec, Runtime(out_dir=tmp_path / "runs", threads=1))
    return tmp_path / "runs" / spec.run_id


def test_theory_postpass_records_reuses_and_collects(tmp_path, tiny_tree):
    run = _trained(tmp_path, dict(tiny_tree, quant={"bits": 4}))
    spec = TheorySpec(**CHEAP)
    rec = theory_run(run, spec)
    assert (run / "theory.json").is_file()
    values = rec["values"]
    assert set(EXPECTED) <= set(values)
    assert values["bound.held"] in (0, 1)
    for row in rec["weights"]:
        assert f"noise.var_ratio.{row['name']}" in values
    assert rec["curvature"] and rec["activations"] and rec["undefined"] == {}
    assert rec["wall_time_s"] > 0 and rec["theory_spec"] == spec.to_dict()
    print(f"\ntheory post-pass on the tiny run: {rec['wall_time_s']:.2f} s")

    before = (run / "theory.json").read_bytes()
    again = theory_run(run, spec)
    assert again["reused"] is True and again["values"] == values
    assert (run / "theory.json").read_bytes() == before
    with pytest.raises(QgenError, match="other settings"):
        theory_run(run, spec.replace(seed=1))

    df = collect(run.parent)
    assert df.loc[0, "theory.bound.value"] == pytest.approx(values["bound.value"])
    assert df.loc[0, "theory.noise.var_ratio.median"] == pytest.approx(
        values["noise.var_ratio.median"])
    assert json.loads(df.loc[0, "meta.theory_settings"]) == spec.to_dict()

    runner = CliRunner()
    sets = [a for k, v in CHEAP.items() for a in ("--set", f"{k}={v}")]
    res = runner.invoke(app, ["theory", str(run), *sets, "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (run / "theory.json").read_bytes() == before  # the same settings: reused
    for bad, fragment in ((["--set", "hutchinson_probes=1"], "theory.hutchinson_probes"),
                          (["--set", "probes"], "name=value"),
                          (["--set", "nope=3"], "unknown field 'nope'"),
                          (["--set", "delta=1"], "theory.delta")):
        res = runner.invoke(app, ["theory", str(run), *bad])
        lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert lines[0].startswith("error:") and fragment in lines[0]


def test_full_precision_run_records_curvature_and_says_why_not_the_rest(tmp_path, tiny_tree):
    run = _trained(tmp_path, dict(tiny_tree, quant={"bits": "fp"}))
    rec = theory_run(run, TheorySpec(**CHEAP))
    values = rec["values"]
    assert "curv.trace" in values and "reg.loss_float" in values
    assert not any(k.startswith(("noise.", "act.", "bound.", "reg.predicted")) for k in values)
    assert set(rec["undefined"]) == {"noise", "act", "reg", "bound"}
    assert "full-precision" in rec["undefined"]["bound"]
    df = collect(run.parent)
    assert "full-precision" in df.loc[0, "meta.theory_undefined"]


# ---------------------------------------------------------------- the report section


def theory_table(with_theory: bool = True):
    """A hand-made results table: two runs per bit width, theory columns on the quantized
    runs (full precision has curvature only), made-up values with known summaries."""
    import pandas as pd

    rows = []
    for label, bits in (("fp", None), ("w8a8", 8), ("w4a4", 4), ("w2a2", 2)):
        for k in range(2):
            row = {"run_id": f"{label}-{k}", "status": "converged", "hp.quant.label": label,
                   "gen.loss_gap": 0.5}
            if with_theory:
                row["theory.curv.trace"] = 100.0 + k
                row["meta.theory_settings"] = json.dumps(TheorySpec().to_dict())
            if with_theory and bits is not None:
                nsr = 4.0 ** -bits * (1 + 0.1 * k)
                for prefix in ("noise", "act"):
                    row.update({f"theory.{prefix}.b{bits}.nsr": nsr,
                                f"theory.{prefix}.b{bits}.nsr_predicted": nsr / (1 + 0.1 * k),
                                f"theory.{prefix}.b{bits}.var_ratio": 1 + 0.1 * k,
                                f"theory.{prefix}.b{bits}.ks_stat": 0.01 * bits,
                                f"theory.{prefix}.b{bits}.clipped_fraction": 0.0,
                                f"theory.{prefix}.b{bits}.layers": 8.0})
                if bits != 8:  # first and last layers at 8 bits
                    row["theory.noise.b8.nsr"] = 4.0 ** -8
                    row["theory.noise.b8.var_ratio"] = 1.0
                pred = 4.0 ** -bits
                row.update({"theory.reg.predicted": pred, "theory.reg.predicted_se": pred / 10,
                            "theory.reg.measured_uniform": (1.5 + k) * pred,
                            "theory.reg.measured_uniform_se": pred / 10,
                            "theory.reg.ratio_uniform": 1.5 + k,
                            "theory.reg.measured_rounding": -pred if bits == 2 else pred,
                            "theory.reg.ratio_rounding": -1.0 if bits == 2 else 1.0,
                            "theory.reg.trained.measured_rounding": pred,
                            "theory.bound.value": 30.0 / bits + k,
                            "theory.bound.complexity": 30.0 / bits + k - 0.01,
                            "theory.bound.kl": 1e5, "theory.bound.empirical_risk": 0.01,
                            "theory.bound.observed_test_error": 0.25,
                            "theory.bound.observed_gap": 0.24,
                            "theory.bound.held": 1, "theory.bound.vacuous": 1,
                            "theory.bound.held_gibbs": 1})
            rows.append(row)
    if with_theory:  # a run without a theory record: NaN in every theory column
        rows.append({"run_id": "w4a4-new", "status": "converged", "hp.quant.label": "w4a4",
                     "gen.loss_gap": 0.5})
    return pd.DataFrame(rows)


def test_theory_section_builds_from_a_table_and_is_omitted_without_theory_columns():
    from types import SimpleNamespace

    from qgen.report.render import render_markdown
    from qgen.report.sections import FigureBlock, TableBlock, registered_sections
    from qgen.theory.report import noise_by_bits, theory_section

    assert "theory" in registered_sections()
    df = theory_table()
    long = noise_by_bits(df)
    assert len(long) == 2 * 3 * 2 + 2 * 2  # runs × bits × roles, + the 8-bit first/last rows
    w8 = long[(long["role"] == "weights") & (long["bits"] == 8)]
    assert len(w8) == 6 and set(w8["label"]) == {"w8a8", "w4a4", "w2a2"}

    section = theory_section(SimpleNamespace(table=df))
    assert not section.omitted
    figures = [b.figure for b in section.blocks if isinstance(b, FigureBlock)]
    assert [f.name for f in figures] == ["theory_noise_vs_bits", "theory_regularizer",
                                         "theory_bound"]
    assert all(f.png.startswith(b"\x89PNG") for f in figures)
    tables = {b.table.name: b.table for b in section.blocks if isinstance(b, TableBlock)}
    noise = tables["theory_noise"].data
    row = noise[(noise["role"] == "weights") & (noise["bits"] == 4)].iloc[0]
    assert row["runs"] == 2 and row["var_ratio"] == pytest.approx(1.05)
    assert row["nsr"] == pytest.approx(4.0**-4 * 1.05)
    reg = tables["theory_regularizer"].data.set_index("label")
    assert list(reg.index) == ["w8a8", "w4a4", "w2a2"]  # fp has no regularizer
    assert reg.loc["w4a4", "ratio_uniform"] == pytest.approx(2.0)
    assert reg.loc["w2a2", "ratio_rounding"] == pytest.approx(-1.0)
    assert reg.loc["w4a4", "runs"] == 2  # the run without a record is left out
    bound = tables["theory_bound"]
    assert bound.data.set_index("label").loc["w2a2", "held_count"] == 2
    assert bound.rows[0][8] == "2/2 (100%)"
    md = render_markdown("t", [section])
    assert "theory_noise_vs_bits.png" in md and "activations = clipped" in md

    omitted = theory_section(SimpleNamespace(table=theory_table(with_theory=False)))
    assert omitted.omitted and "no theory.* columns" in omitted.note
    fp_only = theory_section(SimpleNamespace(table=theory_table()[lambda d: d["hp.quant.label"]
                                                                  == "fp"]))
    assert fp_only.omitted and "full precision" in fp_only.note


def test_report_and_settings_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, qgen.theory.report, qgen.theory.postpass; "
            "from qgen.theory import TheorySpec, settings_from_dict; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
