"""Mixed-precision training (``train.precision``): bf16 on the CPU trains and is reproducible,
LSQ quantizers compute in float32 under autocast, fp16 without CUDA is a user error."""

from __future__ import annotations

import pytest
import torch

from qgen.config import RunSpec, Runtime
from qgen.data import load_data
from qgen.errors import QgenError
from qgen.quant import LSQQuantizer
from qgen.train import execute_run, train_model
from qgen.train.run import build_for_spec


def bf16_spec(tiny_tree: dict, **train) -> RunSpec:
    return RunSpec.from_dict({**tiny_tree, "quant": {"bits": 4},
                              "train": {**tiny_tree["train"], "max_epochs": 4,
                                        "precision": "bf16", **train}})


def test_bf16_run_trains_and_is_reproducible(tiny_tree):
    """bf16 follows the float32 run closely (same data order and start), and the same spec
    gives the same weights twice."""
    spec = bf16_spec(tiny_tree, lr=0.2)
    fp32 = spec.replace(train=spec.train.replace(precision="fp32"))
    assert spec.run_id != fp32.run_id
    splits = load_data(spec.data)
    weights, curves = [], []
    for s in (fp32, spec, spec):
        model = build_for_spec(s, splits.info)
        out = train_model(model, splits.train, spec=s.train, quant=s.quant)
        weights.append(model.state_dict())
        curves.append([h["mean_batch_ce"] for h in out.history])
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    ref, ce = curves[0], curves[1]
    assert all(b < a for a, b in zip(ce, ce[1:], strict=False)) and ce[-1] < 0.8 * ce[0], ce
    assert ce[-1] == pytest.approx(ref[-1], rel=0.1), (ce, ref)
    assert ce != ref  # bf16 really ran
    for k, v in weights[1].items():
        assert torch.equal(v, weights[2][k]), k


@pytest.mark.parametrize("role,per_channel,signed,bits", [
    ("activation", False, None, 4), ("activation", False, True, 8), ("activation", False, None, 8),
    ("weight", True, True, 4), ("weight", False, True, 2)])
def test_quantizer_under_bf16_autocast_computes_in_float32(role, per_channel, signed, bits):
    """The autocast output is the float32 quantizer's output on the same (bf16) values,
    rounded once to bf16; codes, the start step and the step gradient are float32's exactly."""
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(8, 6, 5, 5, generator=gen)
    if role == "activation" and signed is None:
        x = x.relu()  # unsigned: the sign is decided on the first batch
    xb = x.to(torch.bfloat16)
    grad = torch.randn(x.shape, generator=gen).to(torch.bfloat16)

    def make() -> LSQQuantizer:
        return LSQQuantizer(bits, signed=signed, per_channel=per_channel, num_channels=8,
                            role=role)

    q32, qmix = make(), make()
    if role == "weight":
        q32.init_from(xb.float())
        qmix.init_from(xb.float())
    ref_in = xb.float().requires_grad_()
    ref = q32(ref_in)
    ref.backward(grad.float())
    mix_in = xb.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = qmix(mix_in)
    out.backward(grad)
    assert out.dtype == torch.bfloat16
    assert torch.equal(qmix.step.detach(), q32.step.detach())  # same start step (activations)
    assert torch.equal(out, ref.detach().to(torch.bfloat16))
    codes = q32.integer(xb.float())
    s = q32.effective_step()
    if per_channel:
        s = s.view(-1, 1, 1, 1)
    assert torch.equal(torch.round(out.float() / s), codes.float())
    assert torch.equal(qmix.step.grad, q32.step.grad)
    assert torch.equal(mix_in.grad, ref_in.grad.to(torch.bfloat16))


def test_quantizer_keeps_float32_input_dtype_under_autocast():
    q = LSQQuantizer(4, signed=True, role="weight")
    w = torch.randn(3, 4)
    q.init_from(w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(w)
    assert out.dtype == torch.float32 and torch.equal(out, q(w))


def test_fp16_on_cpu_is_a_one_line_error(tmp_path, tiny_tree):
    spec = bf16_spec(tiny_tree, precision="fp16")
    with pytest.raises(QgenError) as err:
        execute_run(spec, Runtime(out_dir=tmp_path / "store", threads=1))
    msg = str(err.value)
    assert "\n" not in msg and "CUDA" in msg and "'bf16'" in msg and "precision" in msg
    assert not (tmp_path / "store").exists()
