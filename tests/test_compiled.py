"""The compiled training path (``train.compile``): LSQ as plain ops agrees with the eager
autograd Function (exactly in value, within float rounding in gradient), compiled it gives the
same codes away from rounding boundaries, a compiled W4A4 run trains and exports bit-exactly,
and the choice is part of the run's identity.

Compiling takes seconds per graph on the CPU (more from a cold cache), so the compiled tests
use tiny graphs and a run whose batches all have one shape (one graph).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from qgen.config import RunSpec, Runtime
from qgen.errors import QgenError
from qgen.quant import lsq_fake_quant, lsq_fake_quant_ops

HAVE_CXX = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
needs_compiler = pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler for inductor")


def _case(ch_axis: int | None, signed: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(8, 4, 5, 5, generator=gen) * 0.4
    if not signed:
        v = v.relu()
    step = (torch.rand(8, generator=gen) * 0.05 + 0.02 if ch_axis is not None
            else torch.tensor(0.05))
    qn, qp = (8, 7) if signed else (0, 15)
    return v, step, qn, qp


def _grads(fn, v, step, qn, qp, g, ch_axis, go):
    v = v.clone().requires_grad_(True)
    s = step.clone().requires_grad_(True)
    out = fn(v, s, qn, qp, g, ch_axis)
    out.backward(go)
    return out.detach(), v.grad, s.grad


def _off_boundary(v: torch.Tensor, step: torch.Tensor, ch_axis: int | None) -> torch.Tensor:
    s = step if ch_axis is None else step.view(-1, 1, 1, 1)
    frac = (v / s).abs() % 1.0
    return (frac - 0.5).abs() > 1e-3


@pytest.mark.parametrize("ch_axis", [None, 0])
@pytest.mark.parametrize("signed", [True, False])
def test_ops_form_is_the_function_exactly(ch_axis, signed) -> None:
    v, step, qn, qp = _case(ch_axis, signed)
    go = torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
    a = _grads(lsq_fake_quant, v, step, qn, qp, 0.3, ch_axis, go)
    b = _grads(lsq_fake_quant_ops, v, step, qn, qp, 0.3, ch_axis, go)
    assert torch.equal(a[0], b[0])  # the same ops in the same order: bit-identical values
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=1e-6)


def test_ops_form_keeps_the_positivity_rule() -> None:
    """A step that overshot below zero quantizes with |s| and its gradient is negated."""
    v = torch.linspace(-1, 1, 101)
    for fn in (lsq_fake_quant, lsq_fake_quant_ops):
        pos = torch.tensor(0.05, requires_grad=True)
        neg = torch.tensor(-0.05, requires_grad=True)
        out_p = fn(v, pos, 8, 7, 0.5)
        out_n = fn(v, neg, 8, 7, 0.5)
        assert torch.equal(out_p, out_n)
        out_p.sum().backward()
        out_n.sum().backward()
        assert neg.grad.item() == pytest.approx(-pos.grad.item())


@needs_compiler
@pytest.mark.parametrize("ch_axis", [None, 0])
def test_compiled_quantizer_agrees_with_eager(ch_axis) -> None:
    v, step, qn, qp = _case(ch_axis, signed=True, seed=1)
    go = torch.randn(v.shape, generator=torch.Generator().manual_seed(4))

    def quant(v, s, qn, qp, g, ch_axis):  # inside compile this dispatches to the ops form
        return lsq_fake_quant(v, s, qn, qp, g, ch_axis) * 1.0

    eager = _grads(lsq_fake_quant, v, step, qn, qp, 0.3, ch_axis, go)
    compiled = _grads(torch.compile(quant, dynamic=False), v, step, qn, qp, 0.3, ch_axis, go)
    keep = _off_boundary(v, step, ch_axis)
    assert keep.float().mean() > 0.99
    assert torch.equal(eager[0][keep], compiled[0][keep])
    torch.testing.assert_close(eager[1], compiled[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(eager[2], compiled[2], rtol=1e-4, atol=1e-5)


def _tiny_spec(compile_: bool) -> RunSpec:
    # 192 images in batches of 64: every batch has one shape, so one graph is compiled
    return RunSpec.from_dict({
        "data": {"name": "digits", "train_subset": 192, "test_subset": 64},
        "model": {"name": "nin", "depth": 1, "width": 1},
        "quant": {"bits": 4},
        "train": {"lr": 0.05, "batch_size": 64, "max_epochs": 4, "target_ce": 0.0,
                  "compile": compile_}})


@needs_compiler
def test_compiled_w4a4_run_trains_records_and_exports_bit_exactly(tmp_path) -> None:
    from qgen.train import execute_run, export_run, load_export, load_run_model

    spec = _tiny_spec(True)
    result = execute_run(spec, Runtime(out_dir=tmp_path, threads=1, quiet=True))
    ce = [h["mean_batch_ce"] for h in result["history"]]
    assert ce[-1] < ce[0]
    record = result["compile"]
    assert record["graphs"] == 1 and record["eager_steps"] == 1 and record["compile_s"] > 0
    run_dir = tmp_path / spec.run_id
    exported = load_export(export_run(run_dir))
    model = load_run_model(run_dir)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), exported(x))


def test_compile_is_part_of_the_run_id_and_checked() -> None:
    eager, compiled = _tiny_spec(False), _tiny_spec(True)
    assert eager.run_id != compiled.run_id
    assert "compile" not in eager.canonical_json()  # older run ids are kept
    with pytest.raises(QgenError, match="train.compile: must be true or false"):
        RunSpec.from_dict({"train": {"compile": "yes"}})
    with pytest.raises(QgenError, match="'clamp' step rule .* trains eagerly only"):
        RunSpec.from_dict({"quant": {"bits": 4, "step_positivity": "clamp"},
                           "train": {"compile": True}})


def test_no_compiler_is_one_line(monkeypatch, tmp_path) -> None:
    from qgen.train.compiled import check_compile_available

    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without g++/clang++
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(QgenError, match="needs a C\\+\\+ compiler .* train.compile: false") as e:
        check_compile_available("cpu")
    assert "\n" not in str(e.value)
