"""Model-level LSQ: the module swap and its policies, float equivalence when disabled,
optimizer groups, the report, the integer export, the study's models, and a short real
training run at 2 bits."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from qgen.config import ModelSpec, QuantSpec
from qgen.errors import QgenError
from qgen.quant import (
    LSQQuantizer,
    QuantConv2d,
    QuantLinear,
    export_quantized,
    freeze_steps,
    load_quantized,
    param_groups,
    quant_layers,
    quant_report,
    quantize_model,
    quantizers,
    set_quantizers_enabled,
)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU twice, a residual 1x1 conv, pooling and two Linear layers."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.mix = nn.Conv2d(width, width, 1)
        self.fc1 = nn.Linear(width * 16, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = x + self.mix(x)  # a residual sum: signed input downstream
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def nin_like(width: int = 8) -> nn.Sequential:
    """A NiN-style stack: strided 3x3 then 1x1 convs with BN+ReLU, a 1x1 class conv, pooling."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(1, width), *block(width, width), nn.Conv2d(width, 10, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


W4A4 = QuantSpec(w_bits=4, a_bits=4)




def test_every_layer_swapped_sharing_parameters():
    torch.manual_seed(0)
    model = SmallCNN()
    params = {n: p for n, p in model.named_parameters()}
    model = quantize_model(model, W4A4)
    names = [n for n, _ in quant_layers(model)]
    assert names == ["conv1", "conv2", "mix", "fc1", "fc2"]
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())
    assert isinstance(model.conv1, QuantConv2d) and isinstance(model.fc2, QuantLinear)
    for n, p in params.items():  # the very same Parameter objects (optimizers stay valid)
        assert dict(model.named_parameters())[n] is p
    bits = {r["name"]: (r["w_bits"], r["a_bits"]) for r in quant_report(model)}
    assert bits == {"conv1": (8, 8), "conv2": (4, 4), "mix": (4, 4), "fc1": (4, 4),
                    "fc2": (8, 8)}
    assert model.conv2.stride == (2, 2) and model.conv2.bias is None


def test_first_last_policies_and_overrides():
    fp_ends = quantize_model(SmallCNN(), QuantSpec(w_bits=2, a_bits=3, first_last="fp"))
    layers = dict(quant_layers(fp_ends))
    assert layers["conv1"].w_quant is None and layers["conv1"].a_quant is None
    assert layers["fc2"].w_quant is None and layers["fc2"].a_quant is None
    assert (layers["mix"].w_quant.bits, layers["mix"].a_quant.bits) == (2, 3)

    same_spec = QuantSpec(w_bits=2, a_bits=2, first_last="same")
    same = dict(quant_layers(quantize_model(SmallCNN(), same_spec)))
    assert {m.w_quant.bits for m in same.values()} == {2}

    spec = QuantSpec(w_bits=4, a_bits=4, overrides=(("fc*", 6, None), ("fc2", 8, 8)))
    over = dict(quant_layers(quantize_model(SmallCNN(), spec)))
    assert (over["fc1"].w_quant.bits, over["fc1"].a_quant) == (6, None)
    assert (over["fc2"].w_quant.bits, over["fc2"].a_quant.bits) == (8, 8)  # later one wins

    weights_only = dict(quant_layers(quantize_model(SmallCNN(), QuantSpec(w_bits=4))))
    assert all(m.a_quant is None for m in weights_only.values())
    assert weights_only["conv1"].w_quant.bits == 8  # '8bit' keeps fp activations fp


def test_per_channel_steps_and_forced_sign():
    model = quantize_model(SmallCNN(), QuantSpec(w_bits=4, a_bits=4, granularity="channel"),
                           act_signed={"fc1": True})
    assert model.conv2.w_quant.step.shape == (6,) and model.fc1.w_quant.step.shape == (16,)
    model(batch()[0])
    assert model.conv2.a_quant.signed is False  # post-ReLU
    assert model.conv1.a_quant.signed is True  # network input
    assert model.fc1.a_quant.signed is True  # forced, although its input is non-negative


def test_signedness_from_position():
    torch.manual_seed(0)
    model = quantize_model(SmallCNN(), W4A4)
    model(batch()[0])
    signs = {r["name"]: r["a_signed"] for r in quant_report(model)}
    # input and the residual-sum consumers are signed; post-ReLU consumers unsigned
    assert signs == {"conv1": True, "conv2": False, "mix": False, "fc1": True, "fc2": False}


def test_bad_inputs_raise_user_errors():
    with pytest.raises(QgenError, match="QuantSpec"):
        quantize_model(SmallCNN(), {"w_bits": 4})
    model = quantize_model(SmallCNN(), W4A4)
    with pytest.raises(QgenError, match="already quantized"):
        quantize_model(model, W4A4)
    with pytest.raises(QgenError, match="MultiheadAttention"):
        quantize_model(nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 2)), W4A4)
    with pytest.raises(QgenError, match="no nn.Conv2d"):
        quantize_model(nn.Sequential(nn.ReLU()), W4A4)


def test_disabled_model_is_the_float_model_bit_for_bit():
    torch.manual_seed(0)
    ref = SmallCNN()
    model = quantize_model(copy.deepcopy(ref), QuantSpec(w_bits=2, a_bits=2))
    x, y = batch(16)
    model(x)  # activation quantizers start, then are switched off
    set_quantizers_enabled(model, False)
    # BN running stats moved in that batch: bring the reference along the same way
    ref(x)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt_q = torch.optim.SGD(param_groups(model, 1e-3), lr=0.1, momentum=0.9)
    for step in range(2):
        x, y = batch(16, seed=step + 1)
        out_ref, out_q = ref(x), model(x)
        assert torch.equal(out_ref, out_q)
        F.cross_entropy(out_ref, y).backward()
        F.cross_entropy(out_q, y).backward()
        q_params = dict(model.named_parameters())
        for n, p in ref.named_parameters():
            assert torch.equal(p.grad, q_params[n].grad), n
        assert all(q.step.grad is None for _, q in quantizers(model))
        opt_ref.step()
        opt_q.step()
        opt_ref.zero_grad()
        opt_q.zero_grad()
        for n, p in ref.named_parameters():
            assert torch.equal(p, dict(model.named_parameters())[n]), n
    set_quantizers_enabled(model, True)
    assert not torch.equal(ref(x), model(x))  # enabled again: it quantizes


def test_param_groups_and_freeze_steps():
    model = quantize_model(SmallCNN(), W4A4)
    model(batch()[0])
    steps = {id(q.step) for _, q in quantizers(model)}
    groups = param_groups(model, 5e-4)
    assert [g["name"] for g in groups] == ["weights", "steps"]
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[1]["params"]} == steps
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())
    assert param_groups(model, 5e-4, step_weight_decay=True)[1]["weight_decay"] == 5e-4
    freeze_steps(model)
    assert [g["name"] for g in param_groups(model, 5e-4)] == ["weights"]
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    assert all(q.step.grad is None for _, q in quantizers(model))
    assert model.conv2.weight.grad is not None
    freeze_steps(model, False)
    assert all(q.step.requires_grad for _, q in quantizers(model))


def test_steps_reach_the_optimizer_and_move():
    torch.manual_seed(0)
    model = quantize_model(SmallCNN(), QuantSpec(w_bits=3, a_bits=3))
    x, y = batch(16)
    model(x)
    before = {n: q.step.detach().clone() for n, q in quantizers(model)}
    opt = torch.optim.SGD(param_groups(model, 0.0), lr=0.05)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    moved = [n for n, q in quantizers(model) if not torch.equal(q.step.detach(), before[n])]
    assert len(moved) == len(before)


def test_report_fields():
    model = quantize_model(SmallCNN(), QuantSpec(w_bits=4, a_bits=4, granularity="channel"))
    rows = quant_report(model)
    assert rows[1]["a_step"] is None  # before the first batch
    model(batch()[0])
    row = quant_report(model)[1]
    assert set(row) >= {"name", "kind", "w_bits", "a_bits", "a_signed", "granularity", "w_step",
                        "a_step"}
    assert row["kind"] == "conv" and row["granularity"] == "channel"
    assert isinstance(row["w_step"], list) and len(row["w_step"]) == 6
    assert isinstance(row["a_step"], float) and row["a_step"] > 0
    assert quant_report(model)[-1]["kind"] == "linear"


STUDY_MODELS = [("nin", 2, 1, 1, 28), ("resnet", 20, 1, 3, 32), ("vgg", 11, 1, 3, 32),
                ("vit", 2, 1, 3, 32)]


@pytest.mark.parametrize("name,depth,width,channels,size", STUDY_MODELS)
def test_study_models_fully_quantized(name, depth, width, channels, size):
    from qgen import models
    torch.manual_seed(0)
    model = models.build_model(ModelSpec(name=name, depth=depth, width=width), channels, 10,
                               size)
    float_layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model = quantize_model(model, QuantSpec(w_bits=2, a_bits=2))
    assert [n for n, _ in quant_layers(model)] == float_layers
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())
    rows = quant_report(model)
    assert (rows[0]["w_bits"], rows[0]["a_bits"]) == (8, 8)
    assert (rows[-1]["w_bits"], rows[-1]["a_bits"]) == (8, 8)
    assert all((r["w_bits"], r["a_bits"]) == (2, 2) for r in rows[1:-1])
    x = torch.randn(4, channels, size, size)
    y = torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()
    assert quant_report(model)[0]["a_signed"] is True  # the network input
    for n, q in quantizers(model):
        assert q.initialized and q.step.grad is not None and torch.isfinite(q.step.grad).all(), n


def _train_a_little(model: nn.Module, steps: int = 3) -> None:
    opt = torch.optim.SGD(param_groups(model, 0.0), lr=0.05, momentum=0.9)
    for i in range(steps):
        x, y = batch(16, seed=10 + i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("make,granularity", [(SmallCNN, "tensor"), (nin_like, "tensor"),
                                              (nin_like, "channel")])
def test_export_round_trip_is_exact(tmp_path, make, granularity):
    torch.manual_seed(0)
    spec = QuantSpec(w_bits=3, a_bits=4, granularity=granularity)
    model = quantize_model(make(), spec)
    _train_a_little(model)
    path = tmp_path / "model.safetensors"
    export_quantized(model, path, metadata={"note": "test"})

    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        assert fh.metadata()["note"] == "test"
        for name, layer in quant_layers(model):
            assert f"{name}.weight" not in keys  # no latent float weight in the file
            codes = fh.get_tensor(f"{name}.weight_int")
            assert codes.dtype == torch.int8
            assert -layer.w_quant.Qn <= int(codes.min()) and int(codes.max()) <= layer.w_quant.Qp

    torch.manual_seed(123)  # a different initialization: everything must come from the file
    rebuilt = load_quantized(path, quantize_model(make(), spec))
    x, _ = batch(32, seed=99)
    model.eval()
    rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))
    for name, layer in quant_layers(rebuilt):
        assert torch.equal(layer.quantized_weight(), dict(quant_layers(model))[name]
                           .quantized_weight())
    assert [r["a_signed"] for r in quant_report(rebuilt)] == \
        [r["a_signed"] for r in quant_report(model)]
    model.train()
    rebuilt.train()
    assert torch.equal(model(x), rebuilt(x))  # batch-statistics mode too


def test_export_refuses_bad_files_and_models(tmp_path):
    torch.manual_seed(0)
    model = quantize_model(nin_like(), W4A4)
    _train_a_little(model, 1)
    path = tmp_path / "m.safetensors"
    export_quantized(model, path)

    with pytest.raises(QgenError, match="layer"):  # other bits
        load_quantized(path, quantize_model(nin_like(), QuantSpec(w_bits=2, a_bits=2)))
    with pytest.raises(QgenError, match="shape"):  # other width
        load_quantized(path, quantize_model(nin_like(width=4), W4A4))
    with pytest.raises(QgenError, match="do not match"):  # other architecture
        load_quantized(path, quantize_model(SmallCNN(), W4A4))

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(QgenError):
        load_quantized(corrupt, quantize_model(nin_like(), W4A4))
    plain = tmp_path / "plain.safetensors"
    from qgen.checkpoint import save_tensors
    save_tensors(plain, nin_like().state_dict())
    with pytest.raises(QgenError, match="not a qgen quantized export"):
        load_quantized(plain, quantize_model(nin_like(), W4A4))
    with pytest.raises(QgenError, match="not found"):
        load_quantized(tmp_path / "missing.safetensors", quantize_model(nin_like(), W4A4))

    with pytest.raises(QgenError, match="reserved"):
        export_quantized(model, tmp_path / "x.safetensors", metadata={"qgen.format": "x"})
    set_quantizers_enabled(model, False)
    with pytest.raises(QgenError, match="disabled"):
        export_quantized(model, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_state_dict_round_trip_keeps_activation_decisions(tmp_path):
    from qgen.checkpoint import load_tensors, save_tensors
    torch.manual_seed(0)
    model = quantize_model(SmallCNN(), W4A4)
    _train_a_little(model, 2)
    save_tensors(tmp_path / "s.safetensors", model.state_dict())
    fresh = quantize_model(SmallCNN(), W4A4)
    fresh.load_state_dict(load_tensors(tmp_path / "s.safetensors"))
    x, _ = batch(8, seed=5)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))


def test_w2a2_nin_trains_on_fashion_mnist():
    """A real short run: 2-bit weights and activations (8-bit ends), 2,000 Fashion-MNIST
    images, 100 SGD steps; the training loss must fall clearly."""
    from qgen import data
    if not data.dataset_available("fashion-mnist")[0]:
        pytest.skip("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)")
    from qgen.config import DataSpec
    splits = data.load_data(DataSpec(name="fashion-mnist", train_subset=2000, test_subset=10))
    losses = _train_fashion_w2a2(splits)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.75 * first, (first, last)


def _train_fashion_w2a2(splits) -> list[float]:
    torch.manual_seed(0)
    model = quantize_model(nin_like(width=8), QuantSpec(w_bits=2, a_bits=2))
    opt = torch.optim.SGD(param_groups(model, 0.0), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    losses = []
    order = torch.randperm(2000, generator=gen)
    for step in range(100):
        idx = order[(step * 64) % 1984:][:64]
        loss = F.cross_entropy(model(splits.train_x[idx]), splits.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(q.step.item() > 0 for _, q in quantizers(model))
    assert isinstance(model[0].a_quant, LSQQuantizer) and model[3].w_quant.bits == 2
    return losses


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_matches_cpu_and_exports(tmp_path):
    from qgen import models
    torch.manual_seed(0)
    base = models.build_model(ModelSpec(name="resnet", depth=20, width=1), 3, 10, 32)
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(32, 3, 32, 32, generator=gen), torch.randint(0, 10, (32,), generator=gen))
            for _ in range(3)]
    runs = {}
    # no TF32 in cuDNN convolutions, so that CUDA computes what the CPU computes
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True,
                                    allow_tf32=False):
        for device in ("cpu", "cuda"):
            model = quantize_model(copy.deepcopy(base).to(device), QuantSpec(w_bits=4, a_bits=4))
            assert all(q.step.device.type == device for _, q in quantizers(model))
            opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.05, momentum=0.9)
            losses = []
            for x, y in data:
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                opt.zero_grad()
                loss.backward()
                if not losses:  # the first step's step-size gradients, for comparison
                    first_grads = [q.step.grad.detach().cpu().clone()
                                   for _, q in quantizers(model)]
                opt.step()
                losses.append(loss.item())
            runs[device] = (model, losses, first_grads)
        # The first forward and backward agree (convolutions differ in summation order only,
        # which can flip a code sitting on a rounding tie); later steps may drift apart.
        assert runs["cuda"][1][0] == pytest.approx(runs["cpu"][1][0], rel=1e-4)
        for g_cuda, g_cpu in zip(runs["cuda"][2], runs["cpu"][2], strict=True):
            torch.testing.assert_close(g_cuda, g_cpu, rtol=2e-2, atol=1e-6)
        assert all(math.isfinite(v) for v in runs["cuda"][1])

        model = runs["cuda"][0]
        path = tmp_path / "cuda.safetensors"
        export_quantized(model, path)
        rebuilt = load_quantized(path, quantize_model(copy.deepcopy(base).cuda(),
                                                      QuantSpec(w_bits=4, a_bits=4)))
        x = data[0][0].cuda()
        model.eval()
        rebuilt.eval()
        assert torch.equal(model(x), rebuilt(x))
        set_quantizers_enabled(model, False)
        ref = copy.deepcopy(base).cuda()
        ref.load_state_dict({k: v for k, v in model.state_dict().items() if "_quant." not in k})
        ref.eval()
        assert torch.equal(ref(x), model(x))
