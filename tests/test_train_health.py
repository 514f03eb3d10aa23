"""Step sizes that cannot collapse a layer, the step-size rules, and the training-health flag."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from qgen.config import QuantSpec, RunSpec
from qgen.data import load_data
from qgen.quant import LSQQuantizer
from qgen.quant.steps import StepTracker
from qgen.train.health import training_health
from qgen.train.loop import make_optimizer, train_model
from qgen.train.run import build_for_spec

KICK_AT = 40  # optimizer update at which the overshoot is forced
KICKED = "blocks.1.conv2"


def _train_with_overshoot(positivity: str) -> tuple[dict, list[float], object]:
    """Train an 8-bit NiN on digits; at update KICK_AT set one weight step's SGD momentum
    buffer so that the optimizer's own update carries the step 1% of its value below zero,
    as a momentum overshoot does."""
    spec = RunSpec.from_dict({
        "data": {"name": "digits", "train_subset": 1000},
        "model": {"name": "nin", "depth": 2, "width": 1},
        # the step bound off: the positivity rule alone must survive the overshoot
        "quant": {"bits": 8, "step_positivity": positivity, "step_max_rel_change": None},
        "train": {"lr": 0.01, "momentum": 0.9, "batch_size": 32, "max_epochs": 8,
                  "target_ce": 0.0}})
    splits = load_data(spec.data)
    model = build_for_spec(spec, splits.info)
    step = dict(model.named_modules())[KICKED].w_quant.step
    seen: list[float] = []
    calls = {"n": 0}

    def overshoot(opt, args, kwargs):
        calls["n"] += 1
        if calls["n"] == KICK_AT:
            group = next(g for g in opt.param_groups if any(p is step for p in g["params"]))
            s, g = step.detach().clone(), step.grad.detach()
            # SGD: s_new = s - lr * (momentum * buf + g) = -0.01 s
            opt.state[step]["momentum_buffer"] = (1.01 * s / group["lr"] - g) / group["momentum"]

    def record(opt, args, kwargs):
        if calls["n"] == KICK_AT:
            seen.append(float(step.detach()))  # the parameter after the kicked update

    handles = [register_optimizer_step_pre_hook(overshoot),
               register_optimizer_step_post_hook(record)]
    try:
        out = train_model(model, splits.train_x, splits.train_y, spec.train, quant=spec.quant)
    finally:
        for handle in handles:
            handle.remove()
    health = training_health(out.history, out.step_sizes, out.status)
    return health, seen, out


def test_a_momentum_overshoot_below_zero_does_not_kill_the_layer():
    health, seen, out = _train_with_overshoot("abs")
    assert seen and seen[0] < 0  # the optimizer did carry the step below zero
    ce = [h["mean_batch_ce"] for h in out.history]
    assert ce[-1] < 0.6 < 2.0  # chance is log(10) = 2.30
    row = next(r for r in out.step_sizes if r["name"] == f"{KICKED}.w_quant")
    assert 0.1 < row["final"] / row["init"] < 10  # bounded
    assert health["healthy"], health["flags"]


def test_the_old_clamp_rule_collapses_under_the_same_overshoot_and_is_flagged():
    """The same forced overshoot under spec version 1's rule (project onto 1e-8): the layer
    dies and takes the network to chance, and the health check says so."""
    health, seen, out = _train_with_overshoot("clamp")
    assert seen and seen[0] < 0
    assert out.history[-1]["mean_batch_ce"] > 2.0
    assert not health["healthy"]
    assert any("decades" in f for f in health["flags"])
    assert any("train CE rose" in f for f in health["flags"]) or health["max_ce_rise"] > 1.1


def test_step_report_and_health_in_result(tmp_path, tiny_tree):
    from qgen.config import Runtime
    from qgen.train import execute_run

    tiny_tree["quant"] = {"bits": 4}
    result = execute_run(RunSpec.from_dict(tiny_tree), Runtime(out_dir=tmp_path, threads=1))
    rows = result["quant"]["step_sizes"]
    assert {r["name"] for r in rows} >= {"blocks.0.conv1.w_quant", "blocks.0.conv1.a_quant"}
    for r in rows:
        assert r["init"] > 0 and r["final"] > 0 and 0 <= r["max_rel_change"] <= 0.5 + 1e-6
    assert result["quant"]["step_tracking"]["updates"] == result["steps"]
    assert result["health"]["healthy"] is True and result["health"]["flags"] == []
    tiny_tree["quant"] = {}
    fp = execute_run(RunSpec.from_dict(tiny_tree), Runtime(out_dir=tmp_path, threads=1))
    assert fp["health"]["healthy"] and "quant" not in fp


def test_health_flags_a_ce_rise_and_a_step_that_moves_decades():
    hist = [{"mean_batch_ce": v} for v in (1.9, 0.62, 0.58, 1.13)]
    steps = [{"name": "a", "init": 0.0125, "final": 452.0, "max_rel_change": 3e9,
              "log10_change": 4.56}]
    h = training_health(hist, steps, "max_epochs")
    assert not h["healthy"] and len(h["flags"]) == 2
    assert h["max_ce_rise"] == pytest.approx(1.13 / 0.58) and h["max_ce_rise_epoch"] == 3
    # a small wobble near the target is not a rise, whatever its ratio
    calm = training_health([{"mean_batch_ce": v} for v in (0.02, 0.035, 0.01)], [], "converged")
    assert calm["healthy"]
    assert not training_health([], [], "diverged")["healthy"]


def _one_step_model(max_rel_change=None, lr_scale=1.0, momentum=None):
    spec = QuantSpec(w_bits=4, a_bits=None, first_last="same", step_lr_scale=lr_scale,
                     step_momentum=momentum, step_max_rel_change=max_rel_change)
    from qgen.quant import quantize_model

    torch.manual_seed(0)
    model = quantize_model(torch.nn.Sequential(torch.nn.Linear(8, 3)), spec)
    return model, spec


def test_step_lr_scale_and_momentum_reach_the_optimizer():
    from qgen.config import TrainSpec

    model, spec = _one_step_model(lr_scale=0.1, momentum=0.5)
    opt = make_optimizer(model, TrainSpec(lr=0.2, momentum=0.9), spec)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["steps"]["lr"] == pytest.approx(0.02) and groups["steps"]["momentum"] == 0.5
    assert groups["weights"]["lr"] == 0.2 and groups["weights"]["momentum"] == 0.9
    with pytest.raises(Exception, match="step_momentum"):
        RunSpec.from_dict({"quant": {"bits": 4, "step_momentum": 0.5},
                           "train": {"optimizer": "adam"}})


def test_bounded_relative_change_keeps_momentum_consistent():
    model, spec = _one_step_model(max_rel_change=0.5)
    step = model[0].w_quant.step
    opt = torch.optim.SGD([step], lr=0.1, momentum=0.9)
    tracker = StepTracker(model, spec.step_max_rel_change)
    before = float(step.detach())  # 0.12
    step.grad = torch.tensor(1.0)  # an update of -0.1: more than half the step
    tracker.before_update()
    opt.step()
    tracker.after_update(opt)
    after = float(step.detach())
    assert after == pytest.approx(0.5 * before)
    buf = opt.state[step]["momentum_buffer"]
    assert float(buf) == pytest.approx((before - after) / 0.1)  # the update actually taken
    assert tracker.summary()["bounded_elements"] == 1
    # the next update is momentum alone: 0.9 * buf * lr = 0.9 of the step, bounded again
    # (had the buffer kept the unbounded update, it would have been 0.9 * 1.0 * 0.1 = 0.09)
    step.grad = torch.tensor(0.0)
    tracker.before_update()
    opt.step()
    tracker.after_update(opt)
    assert float(step.detach()) == pytest.approx(after * 0.5, rel=1e-5)
    assert tracker.summary()["bounded_elements"] == 2
    # a small gradient against the momentum: within the bound, untouched
    prev = float(step.detach())
    buf_before = opt.state[step]["momentum_buffer"].clone()
    step.grad = torch.tensor(-0.3)
    tracker.before_update()
    opt.step()
    tracker.after_update(opt)
    expected = prev - 0.1 * (0.9 * float(buf_before) - 0.3)
    assert float(step.detach()) == pytest.approx(expected, rel=1e-5)
    assert tracker.summary()["bounded_elements"] == 2
    (row,) = tracker.report()
    assert row["max_rel_change"] == pytest.approx(0.5, rel=1e-5)
    # an update across zero: the magnitude in use is bounded, the sign is the optimizer's
    before = float(step.detach())
    step.grad = torch.tensor(50.0)
    tracker.before_update()
    opt.step()
    tracker.after_update(opt)
    assert float(step.detach()) == pytest.approx(-1.5 * before, rel=1e-5)


def test_version_1_specs_read_as_the_clamp_rule():
    v1 = {"spec_version": 1, "quant": {"w_bits": 4, "a_bits": 4}}
    spec = RunSpec.from_dict(v1)
    assert spec.quant.step_positivity == "clamp" and spec.quant.step_max_rel_change is None
    assert spec.train.bn_recalibration == "off"
    assert RunSpec.from_dict({"quant": {"bits": 4}}).quant.step_positivity == "abs"
    quant = LSQQuantizer(4, positivity="clamp")
    quant(torch.randn(4, 3))
    with torch.no_grad():
        quant.step.fill_(-1.0)
    quant(torch.randn(4, 3))
    assert float(quant.step.detach()) == pytest.approx(1e-8)  # v1's projection, reproduced


def test_batchnorm_recalibration_restores_the_statistics_of_the_trained_network():
    """Running statistics that describe another network (as QAT's oscillating codes leave
    them) are replaced by those of the network as it is; the health check flags a run whose
    eval-mode CE is far above its minibatch CE."""
    from qgen.train.evaluate import evaluate
    from qgen.train.loop import recalibrate_batchnorm

    spec = RunSpec.from_dict({"data": {"name": "digits", "train_subset": 800},
                              "model": {"name": "nin", "depth": 1, "width": 1, "dropout": 0.2},
                              "train": {"max_epochs": 8, "lr": 0.05}})
    splits = load_data(spec.data)
    model = build_for_spec(spec, splits.info)
    train_model(model, splits.train_x, splits.train_y, spec.train)
    good = evaluate(model, splits.train_x, splits.train_y).loss
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.add_(3.0)
            m.running_var.mul_(20.0)
    bad = evaluate(model, splits.train_x, splits.train_y).loss
    assert good < 1.0 and bad > good + 0.3
    model.train()
    assert recalibrate_batchnorm(model, splits.train_x, 32) == 4
    assert model.training  # mode restored
    again = evaluate(model, splits.train_x, splits.train_y).loss
    assert again == pytest.approx(good, rel=0.05)
    flagged = training_health([{"mean_batch_ce": 0.55}], [], "max_epochs", eval_train_ce=1.05)
    assert not flagged["healthy"] and "BatchNorm" in flagged["flags"][0]
    assert training_health([{"mean_batch_ce": 0.55}], [], "max_epochs", 0.47)["healthy"]
