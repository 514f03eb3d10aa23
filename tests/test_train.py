"""The training engine: stop rule, reproducibility, run directories."""

from __future__ import annotations

import json
import math

import pytest
import torch

from qgen.config import RunSpec, Runtime
from qgen.data import load_data
from qgen.store import RunDir
from qgen.train import evaluate, execute_run, load_run_model, train_model
from qgen.train.run import build_for_spec


def test_run_writes_complete_directory(tmp_path, tiny_tree):
    spec = RunSpec.from_dict(tiny_tree)
    result = execute_run(spec, Runtime(out_dir=tmp_path, threads=1))
    run_dir = tmp_path / spec.run_id
    assert RunDir(run_dir).is_complete
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "init.safetensors", "model.safetensors", "result.json", "spec.json"]
    assert RunSpec.from_dict(json.loads((run_dir / "spec.json").read_text())) == spec
    m = result["metrics"]
    assert m["loss_gap"] == pytest.approx(m["test_loss"] - m["train_loss"])
    assert m["acc_gap"] == pytest.approx(m["train_accuracy"] - m["test_accuracy"])
    assert result["status"] in ("converged", "max_epochs")
    assert set(result["versions"]) >= {"qgen", "torch", "python"}
    assert result["data"]["train_size"] == 300
    # no hidden temp dirs left behind
    assert [p.name for p in tmp_path.iterdir()] == [spec.run_id]


def test_same_spec_same_metrics(tmp_path, tiny_tree):
    spec = RunSpec.from_dict(tiny_tree)
    a = execute_run(spec, Runtime(out_dir=tmp_path / "a", threads=1))
    b = execute_run(spec, Runtime(out_dir=tmp_path / "b", threads=1))
    assert a["metrics"] == b["metrics"]
    assert a["history"] == b["history"]
    wa = (tmp_path / "a" / spec.run_id / "model.safetensors").read_bytes()
    wb = (tmp_path / "b" / spec.run_id / "model.safetensors").read_bytes()
    assert wa == wb


def test_reloaded_model_reproduces_metrics(tmp_path, tiny_tree):
    spec = RunSpec.from_dict(tiny_tree)
    result = execute_run(spec, Runtime(out_dir=tmp_path, threads=1))
    model = load_run_model(tmp_path / spec.run_id)
    splits = load_data(spec.data)
    m = evaluate(model, splits.test_x, splits.test_y)
    assert m.loss == result["metrics"]["test_loss"]
    init = load_run_model(tmp_path / spec.run_id, which="init")
    torch.manual_seed(spec.train.seed)
    fresh = build_for_spec(spec, splits.info)
    for (k, v), (k2, v2) in zip(init.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_existing_run_is_not_retrained(tmp_path, tiny_tree):
    spec = RunSpec.from_dict(tiny_tree)
    execute_run(spec, Runtime(out_dir=tmp_path, threads=1))
    stamp = (tmp_path / spec.run_id / "result.json").stat().st_mtime_ns
    execute_run(spec, Runtime(out_dir=tmp_path, threads=1))
    assert (tmp_path / spec.run_id / "result.json").stat().st_mtime_ns == stamp


def test_stop_rule_converges_at_target(tiny_tree):
    tree = dict(tiny_tree, train={"lr": 0.05, "max_epochs": 60, "target_ce": 0.3})
    spec = RunSpec.from_dict(tree)
    splits = load_data(spec.data)
    model = build_for_spec(spec, splits.info)
    out = train_model(model, splits.train_x, splits.train_y, spec.train)
    assert out.status == "converged"
    assert out.checks and out.checks[-1]["train_ce"] <= 0.3
    assert all(c["train_ce"] > 0.3 for c in out.checks[:-1])
    # the model really is at the target on the full training set
    assert evaluate(model, splits.train_x, splits.train_y).loss <= 0.3


def test_divergence_is_a_result(tmp_path, tiny_tree):
    # BatchNorm keeps the NiN finite even at lr 10; a ViT (LayerNorm only) blows up
    tree = dict(tiny_tree, model={"name": "vit", "depth": 1, "width": 1},
                train={"optimizer": "sgd", "lr": 10.0, "momentum": 0.9, "max_epochs": 3})
    spec = RunSpec.from_dict(tree)
    result = execute_run(spec, Runtime(out_dir=tmp_path, threads=1))
    assert result["status"] == "diverged"
    assert RunDir(tmp_path / spec.run_id).is_complete
    stored = json.loads((tmp_path / spec.run_id / "result.json").read_text())
    assert stored["status"] == "diverged"
    loss = stored["metrics"]["train_loss"]
    assert loss == "nan" or not math.isfinite(float(loss))


def test_cosine_schedule_and_adam_train(tmp_path, tiny_tree):
    tree = dict(tiny_tree, train={"optimizer": "adam", "lr": 0.01, "schedule": "cosine",
                                  "max_epochs": 4, "weight_decay": 1e-4})
    result = execute_run(RunSpec.from_dict(tree), Runtime(out_dir=tmp_path, threads=1))
    hist = result["history"]
    assert hist[-1]["mean_batch_ce"] < hist[0]["mean_batch_ce"] < 2.31
    assert hist[-1]["lr"] < hist[1]["lr"] < hist[0]["lr"] <= 0.01
