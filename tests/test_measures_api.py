"""compute_measures end to end on a tiny trained conv net: determinism, the shared parameter
selector, cached searches, presets, JSON output."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qgen.errors import QgenError
from qgen.measures import MeasureResult, MeasureSpec, compute_measures, measure_names
from qgen.measures.context import MeasureContext
from qgen.measures.pacbayes import pacbayes_deviation
from qgen.measures.perturb import Perturbation

FAST = dict(mc_draws=3, ascent_steps=3, ascent_restarts=1, bisect_steps=6, eval_subset=120,
            hessian_samples=3, power_iters=3, hessian_batch=64, ascent_batch=64, eval_batch=64)




def tiny_data(n=240, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    protos = torch.randn(3, 1, 8, 8, generator=gen)
    return protos[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=gen), y


def tiny_net():
    return nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 3, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    net = tiny_net()
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = tiny_data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), w0, x, y


def test_all_measures_are_computed_and_json_serializable(trained):
    net, w0, x, y = trained
    res = compute_measures(net, w0, x, y, MeasureSpec(**FAST))
    assert set(res.values) == set(measure_names())
    finite = [k for k, v in res.values.items() if math.isfinite(v)]
    assert len(finite) == len(res.values), res.diagnostics["nonfinite"]
    data = json.loads(json.dumps(res.to_dict()))
    assert MeasureResult.from_dict(data).values == res.values
    settings = data["settings"]
    assert set(MeasureSpec().to_dict()) <= set(settings)  # every choice recorded
    assert settings["eval_subset_size"] == 120 and settings["train_size"] == 240
    for key in ("search.pacbayes", "search.pacbayes.mag", "search.sharpness",
                "search.sharpness.mag"):
        search = data["diagnostics"][key]
        assert {"trace", "bracket", "saturated", "converged"} <= set(search)
        assert 1 <= len(search["trace"]) <= FAST["bisect_steps"] + 1  # + the lower-end probe
        assert all({"x", "deviation", "samples"} <= set(t) for t in search["trace"])
    assert data["diagnostics"]["eval"]["subset_size"] == 120
    assert "pacbayes.init" in data["diagnostics"]["timings"]["measures"]


def test_same_seed_gives_identical_measures(trained):
    net, w0, x, y = trained
    names = ["pacbayes.*", "sharpness.mag.*", "hessian.trace", "norm.inverse_margin"]
    a = compute_measures(net, w0, x, y, MeasureSpec(**FAST), names=names)
    b = compute_measures(net, w0, x, y, MeasureSpec(**FAST), names=names)
    c = compute_measures(net, w0, x, y, MeasureSpec(**FAST, seed=1), names=names)
    assert a.values == b.values
    for key in ("search.pacbayes", "search.sharpness.mag"):
        assert a.diagnostics[key]["trace"] == b.diagnostics[key]["trace"]
    assert a.diagnostics["search.pacbayes"]["trace"] != c.diagnostics["search.pacbayes"]["trace"]


def test_callers_model_is_untouched(trained):
    net, w0, x, y = trained
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    try:
        compute_measures(net, w0, x, y, MeasureSpec(**FAST, bn="fold"),
                         names=["pacbayes.flatness", "norm.path"])
        assert net.training
        assert isinstance(net[1], nn.BatchNorm2d)
        for k, v in net.state_dict().items():
            assert torch.equal(v, before[k]), k
    finally:
        net.eval()


@pytest.mark.parametrize("which", ["weights", "all"])
def test_perturbed_set_is_the_counted_set(trained, which):
    """During a Monte-Carlo draw, exactly the parameters the bound counts have moved."""
    net, w0, x, y = trained
    spec = MeasureSpec(**FAST, params=which)
    ctx = MeasureContext(net, w0, x, y, spec)
    original = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    moved: set[str] = set()

    def record(mod, args):
        for n, p in ctx.model.named_parameters():
            if not torch.equal(p, original[n]):
                moved.add(n)

    # The forward that is evaluated may be the BN-folded twin: hook whatever is evaluated.
    hook = ctx.eval_model().register_forward_pre_hook(record)
    pacbayes_deviation(ctx, 0.1, magnitude=False, key="t")
    hook.remove()
    assert moved == set(ctx.prep.params.names)
    counted = compute_measures(net, w0, x, y, spec, names=["norm.params"])
    assert counted.values["norm.params"] == sum(original[n].numel() for n in moved)
    if which == "weights":
        assert moved == {"0.weight", "3.weight", "6.weight"}
    else:
        assert {"0.bias", "1.weight", "1.bias"} <= moved


@pytest.mark.parametrize("which", ["weights", "all"])
def test_folded_twin_evaluates_the_perturbed_model(trained, which):
    net, w0, x, y = trained
    ctx = MeasureContext(net, w0, x, y, MeasureSpec(**FAST, params=which))
    assert ctx.eval_model() is not ctx.model  # the faster twin is in use
    gen = torch.Generator().manual_seed(0)
    with Perturbation(ctx.prep.params) as pert:
        pert.apply([0.3 * torch.randn(t.shape, generator=gen) for t in pert.original])
        with torch.no_grad():
            direct = ctx.model(ctx.x)
            twin = ctx.eval_model()(ctx.x)
        assert not torch.allclose(direct, net(ctx.x))  # really perturbed
        assert torch.allclose(twin, direct, rtol=1e-4, atol=1e-5)


def test_one_search_feeds_the_pacbayes_family(trained):
    net, w0, x, y = trained
    res = compute_measures(net, w0, x, y, MeasureSpec(**FAST),
                           names=["pacbayes.init", "pacbayes.orig", "pacbayes.flatness",
                                  "norm.l2", "norm.l2_dist"])
    search = res.diagnostics["search.pacbayes"]
    s = search["value"]
    assert list(res.diagnostics["timings"]["shared"]).count("search.pacbayes") == 1
    v = res.values
    assert v["pacbayes.flatness"] == pytest.approx(1 / s**2)
    assert v["pacbayes.init"] == pytest.approx(v["norm.l2_dist"] ** 2 / (4 * s**2)
                                               + math.log(240 / s) + 10)
    assert v["pacbayes.orig"] == pytest.approx(v["norm.l2"] ** 2 / (4 * s**2)
                                               + math.log(240 / s) + 10)
    for name in ("pacbayes.init", "pacbayes.orig", "pacbayes.flatness"):
        assert res.diagnostics["measures"][name]["search"] == "search.pacbayes"


def test_magnitude_orig_denominator_choice(trained):
    net, w0, x, y = trained
    names = ["pacbayes.mag.orig"]
    plain = compute_measures(net, w0, x, y, MeasureSpec(**FAST), names=names)
    quirk = compute_measures(net, w0, x, y, MeasureSpec(**FAST, mag_orig_denominator="w_minus_w0"),
                             names=names)
    # Same search, different formula.
    assert (plain.diagnostics["search.pacbayes.mag"]["value"]
            == quirk.diagnostics["search.pacbayes.mag"]["value"])
    s = plain.diagnostics["search.pacbayes.mag"]["value"]
    ctx = MeasureContext(net, w0, x, y, MeasureSpec(**FAST))
    w = torch.cat([t.reshape(-1).double() for t in ctx.w])
    d = w - torch.cat([t.reshape(-1).double() for t in ctx.w0])
    eps = 1e-3

    def by_hand(den):
        num = eps**2 + (s**2 + 1) * w.square().sum() / w.numel()
        return (0.25 * torch.log(num / (eps**2 + s**2 * den.square())).sum()).item() \
            + math.log(240 / s) + 10

    assert plain.values["pacbayes.mag.orig"] == pytest.approx(by_hand(w), rel=1e-9)
    assert quirk.values["pacbayes.mag.orig"] == pytest.approx(by_hand(d), rel=1e-9)


def test_dziugaite_preset_runs_folded_on_all_parameters(trained):
    net, w0, x, y = trained
    spec = MeasureSpec.preset("dziugaite2020", **FAST)
    res = compute_measures(net, w0, x, y, spec, names=["pacbayes.flatness", "norm.params"])
    st = res.settings
    assert st["gauss_std"] == "sigma_squared" and st["params"] == "all"
    assert len(st["bn_folded"]["folded"]) == 2
    # folded as the reference does: each BN stays (γ = 1, β = 0) and is perturbed with the
    # conv biases; the bound terms count the conv/linear weights only, and the value is
    # adjusted for the dataset size (√(v/m))
    folded_bns = [bn for _, bn in st["bn_folded"]["folded"]]
    assert {f"{bn}.weight" for bn in folded_bns} <= set(st["selected_tensors"])
    assert {f"{bn}.bias" for bn in folded_bns} <= set(st["selected_tensors"])
    omega = 6 * 9 + 36 + 18
    diag = res.diagnostics["measures"]["norm.params"]
    assert diag["raw_value"] == omega and diag["size_transform"] == "√(v/m)"
    assert res.values["norm.params"] == pytest.approx(math.sqrt(omega / 240))
    raw = compute_measures(net, w0, x, y, MeasureSpec.preset("dziugaite2020", **FAST,
                                                             size_transform="none",
                                                             bound_params="perturbed"),
                           names=["norm.params"])
    assert raw.values["norm.params"] == st["num_selected_params"] > omega


def test_full_train_set_evaluation(trained):
    net, w0, x, y = trained
    res = compute_measures(net, w0, x, y, MeasureSpec(**{**FAST, "eval_subset": None}),
                           names=["norm.inverse_margin"])
    assert res.settings["eval_subset_size"] == 240


def test_bad_inputs_raise_qgen_error(trained):
    net, w0, x, y = trained
    with pytest.raises(QgenError, match="matches no measure"):
        compute_measures(net, w0, x, y, MeasureSpec(**FAST), names=["nope"])
    with pytest.raises(QgenError, match="w0"):
        compute_measures(net, {"bad": torch.zeros(1)}, x, y, MeasureSpec(**FAST),
                         names=["norm.l2"])
    with pytest.raises(QgenError, match="train_y"):
        compute_measures(net, w0, x, y[:5], MeasureSpec(**FAST), names=["norm.l2"])
