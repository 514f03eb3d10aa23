"""Zoo models (torchvision, timm): build, quantize every layer, train, evaluate, start from a
user's checkpoint, and refuse bad names and checkpoints in one line.

These need the ``vision`` extra; CI installs it and sets ``QGEN_REQUIRE_VISION`` so that the
tests cannot skip there.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from qgen.cli import app
from qgen.config import RunSpec
from qgen.data import DatasetInfo, TensorSource
from qgen.errors import QgenError

HAVE_VISION = all(importlib.util.find_spec(m) for m in ("torchvision", "timm", "PIL"))
pytestmark = pytest.mark.skipif(not HAVE_VISION and not os.environ.get("QGEN_REQUIRE_VISION"),
                                reason="the vision extra (torchvision, timm) is not installed")

ADAPTERS = ("tv:resnet18", "tv:resnet50", "tv:mobilenet_v2", "timm:deit_tiny_patch16_224",
            "timm:swin_tiny_patch4_window7_224")


def info(size: int = 32, classes: int = 3) -> DatasetInfo:
    return DatasetInfo(name="t", num_classes=classes, channels=3, size=size, mean=(0.0,) * 3,
                       std=(1.0,) * 3, train_size=8, test_size=8, source="test")


def spec(name: str, bits: int | None = 4, **train) -> RunSpec:
    return RunSpec.from_dict({"model": {"name": name}, "quant": {"bits": bits},
                              "train": {"batch_size": 4, "max_epochs": 1, "lr": 0.01, **train}})


def test_the_examples_are_the_documented_ones() -> None:
    from qgen.models.zoo import EXAMPLES

    assert EXAMPLES == ADAPTERS


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_builds_quantizes_trains_and_evaluates(name: str) -> None:
    from qgen.models.zoo import build_zoo_model
    from qgen.quant import quant_layers
    from qgen.quant.model import execution_order
    from qgen.train import build_for_spec, evaluate, train_model

    s = spec(name)
    torch.manual_seed(0)
    float_model = build_zoo_model(s.model, 3, 3, 32)
    ran = execution_order(float_model, torch.zeros(1, 3, 32, 32))
    model = build_for_spec(s, info())
    # every Conv2d/Linear, attention and MLP projections included, is a quantized layer
    assert not [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    layers = dict(quant_layers(model))
    assert len(layers) == len(ran) and set(layers) == set(ran)
    for n, layer in layers.items():
        expect = 8 if n in (ran[0], ran[-1]) else 4
        assert (layer.w_quant.bits, layer.a_quant.bits) == (expect, expect), n
    if name.startswith("timm:"):
        assert any(n.endswith("qkv") for n in layers) and any(n.endswith("fc2") for n in layers)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    before = [p.detach().clone() for p in model.parameters()]
    outcome = train_model(model, TensorSource(x, y), spec=s.train, quant=s.quant)
    assert outcome.steps == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    metrics = evaluate(model, TensorSource(x, y))
    assert torch.isfinite(torch.tensor(metrics.loss)) and 0.0 <= metrics.accuracy <= 1.0


def test_first_and_last_follow_execution_not_registration() -> None:
    from qgen.config import QuantSpec
    from qgen.quant import quantize_model

    class Backwards(nn.Module):  # the head is registered before the stem
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8, 3)
            self.stem = nn.Conv2d(3, 8, 3)
            self.mid = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.head(self.mid(self.stem(x)).mean((2, 3)))

    q = quantize_model(Backwards(), QuantSpec(w_bits=4, a_bits=4),
                       example_input=torch.zeros(1, 3, 8, 8))
    assert q.stem.w_quant.bits == 8 and q.head.w_quant.bits == 8 and q.mid.w_quant.bits == 4
    by_name = quantize_model(Backwards(), QuantSpec(w_bits=4, a_bits=4))
    assert by_name.head.w_quant.bits == 8 and by_name.mid.w_quant.bits == 8


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_starts_from_a_checkpoint_and_steps_start_from_it(tmp_path, suffix: str) -> None:
    from safetensors.torch import save_file

    from qgen.models.zoo import build_zoo_model
    from qgen.quant import quant_layers
    from qgen.train import build_for_spec

    torch.manual_seed(123)
    pretrained = build_zoo_model(spec("tv:resnet18").model, 3, 3, 32)
    state = {k: v.contiguous() for k, v in pretrained.state_dict().items()}
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        save_file(state, str(path))
    model = build_for_spec(spec("tv:resnet18"), info(), weights=path)
    layers = dict(quant_layers(model))
    assert torch.equal(layers["conv1"].weight, state["conv1.weight"])
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])
    # LSQ's weight step starts at 2·mean|w|/√Qp of the loaded weights (4 bits: Qp = 7)
    w = state["layer1.0.conv1.weight"]
    step = layers["layer1.0.conv1"].w_quant.step.detach()
    assert step.item() == pytest.approx((2 * w.abs().mean() / 7 ** 0.5).item(), rel=1e-6)


def test_checkpoint_of_another_architecture_is_one_line(tmp_path) -> None:
    from safetensors.torch import save_file

    from qgen.models.zoo import build_zoo_model
    from qgen.train import build_for_spec

    other = build_zoo_model(spec("tv:mobilenet_v2").model, 3, 3, 32)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(QgenError, match=r"does not match tv:resnet18 \(\d+ tensors missing"):
        build_for_spec(spec("tv:resnet18"), info(), weights=path)
    head = build_zoo_model(spec("tv:resnet18").model, 3, 10, 32)  # 10 classes, data has 3
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))
    with pytest.raises(QgenError, match=r"another shape \(e\.g\. fc\.weight: \(10, 512\)"):
        build_for_spec(spec("tv:resnet18"), info(), weights=path)


def test_pickled_code_is_not_run(tmp_path) -> None:
    from qgen.models.zoo import read_state_dict

    path = tmp_path / "evil.pt"
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Payload()}, path)
    with pytest.raises(QgenError, match="does not read as a torch state_dict"):
        read_state_dict(path)
    assert not marker.exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(QgenError, match="does not read as safetensors"):
        read_state_dict(bad)


@pytest.mark.parametrize("name, match", [
    ("tv:resnet19", r"tv:resnet19 is not a torchvision classification architecture here; "
                    r"e\.g\. .*resnet18"),
    ("timm:nope_net", r"timm:nope_net is not a timm classification architecture"),
    ("zoo:resnet18", r"unknown model 'zoo:resnet18'; allowed: .*tv:<arch> / timm:<arch>"),
])
def test_unknown_zoo_name_is_one_line(name: str, match: str) -> None:
    from qgen.models import check_model_name

    with pytest.raises(QgenError, match=match) as err:
        check_model_name(name)
    assert "\n" not in str(err.value)


def test_depth_and_grey_input_are_refused() -> None:
    from qgen.models import build_model

    s = RunSpec.from_dict({"model": {"name": "tv:resnet18", "depth": 5}})
    with pytest.raises(QgenError, match="fixed by its name"):
        build_model(s.model, 3, 3, 32)
    with pytest.raises(QgenError, match="set data.channels: 3"):
        build_model(spec("tv:resnet18").model, 1, 3, 32)


def test_cli_fine_tunes_from_weights_and_measures(tmp_path) -> None:
    """`qgen train --weights` on a zoo model, then `qgen measure` on the run; the spec names
    the checkpoint by SHA-256, and the same spec without the file is refused."""
    from safetensors.torch import save_file

    from qgen.models.zoo import WEIGHTS_OPTION, build_zoo_model, file_sha256
    from qgen.store import RunDir

    runner = CliRunner()
    torch.manual_seed(0)
    net = build_zoo_model(spec("tv:mobilenet_v2").model, 3, 10, 32)
    ckpt = tmp_path / "mnv2.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt))
    args = ["train", "--dataset", "digits", "--train-subset", "64", "--model",
            "tv:mobilenet_v2", "--bits", "4", "--epochs", "1", "--batch-size", "16",
            "--set", "data.channels=3", "--set", "data.input_size=32", "--set",
            "data.test_subset=32", "--threads", "1", "--quiet", "--out", str(tmp_path / "runs")]
    res = runner.invoke(app, [*args, "--weights", str(ckpt)])
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "runs" / res.output.strip().splitlines()[-1].split("/")[-1]
    run = RunDir(run_dir)
    assert run.spec.model.option(WEIGHTS_OPTION) == file_sha256(ckpt)
    assert "torchvision" in run.result["versions"]
    res = runner.invoke(app, ["measure", str(run_dir), "--measures", "norm.*",
                              "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (run_dir / "measures.json").is_file()
    # the spec without its checkpoint: one line, exit 2, nothing written
    spec_file = run_dir / "spec.json"
    res = runner.invoke(app, ["train", "--config", str(spec_file), "--out",
                              str(tmp_path / "other"), "--quiet", "--force"])
    assert res.exit_code == 2 and "pass it with --weights FILE" in res.output
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())


@pytest.mark.parametrize("preset, model", [
    ("imagenet-resnet18", "tv:resnet18"), ("imagenet-resnet50", "tv:resnet50"),
    ("imagenet-deit-tiny", "timm:deit_tiny_patch16_224"),
    ("imagenet-swin-tiny", "timm:swin_tiny_patch4_window7_224")])
def test_imagenet_presets_plan_fp_8_4_2_and_name_the_checkpoint(tmp_path, preset: str,
                                                                 model: str) -> None:
    from safetensors.torch import save_file

    from qgen.models.zoo import WEIGHTS_OPTION, file_sha256
    from qgen.sweep.plan import expand, load_sweep

    plan = expand(load_sweep(preset))
    assert [s.quant.label for s in plan.specs] == ["fp", "w8a8", "w4a4", "w2a2"]
    for s in plan.specs:
        assert (s.data.name, s.data.input_size, s.model.name) == ("imagenet", 224, model)
        assert (s.train.schedule, s.train.precision, s.quant.first_last) == ("cosine", "bf16",
                                                                             "8bit")
    ckpt = tmp_path / "start.safetensors"
    save_file({"w": torch.zeros(2)}, str(ckpt))
    named = plan.with_weights(ckpt)
    assert {s.model.option(WEIGHTS_OPTION) for s in named.specs} == {file_sha256(ckpt)}
    assert set(named.run_ids).isdisjoint(plan.run_ids)


def test_write_folder_writes_the_subsets_pixels_and_labels(tmp_path) -> None:
    """`qgen write-folder digits OUT` writes the seeded subsets as lossless PNG class folders
    (every file holds exactly the dataset's pixels, in the folder of its label), and
    `folder:OUT` reads them back as a dataset."""
    import numpy as np
    from PIL import Image

    from qgen.config import DataSpec
    from qgen.data import get_dataset, load_data
    from qgen.data.prepare import subset_indices

    out = tmp_path / "digits-folder"
    res = CliRunner().invoke(app, ["write-folder", "digits", str(out), "--train-subset", "40",
                                   "--test-subset", "20"])
    assert res.exit_code == 0, res.output
    entry = get_dataset("digits")
    raw = entry.read(entry.locate(None))
    for folder, x, y, k, seed in (("train", raw.train_x, raw.train_y, 40, 0),
                                  ("val", raw.test_x, raw.test_y, 20, 1)):
        files = sorted((out / folder).rglob("*.png"))
        assert len(files) == k
        assert sorted(int(f.stem) for f in files) == subset_indices(len(x), k, seed).tolist()
        for f in files:
            pos = int(f.stem)
            expect = (x[pos, 0].float() * 255 / 16).round().to(torch.uint8).numpy()
            assert np.array_equal(np.array(Image.open(f)), expect), f
            assert f.parent.name == f"class{int(y[pos])}"
    back = load_data(DataSpec(name=f"folder:{out}", input_size=8))
    assert (len(back.train), len(back.test), back.info.num_classes) == (40, 20, 10)
    res = CliRunner().invoke(app, ["write-folder", "digits", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output


def test_measures_refuse_a_whole_streamed_training_set(tmp_path) -> None:
    from PIL import Image

    from qgen.config import DataSpec
    from qgen.data import load_data
    from qgen.measures import MeasureSpec, compute_measures
    from qgen.measures import context as ctx

    for split, n in (("train", 3), ("val", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                image = Image.new("RGB", (12, 12), (40 * i, 90, 200))
                image.save(tmp_path / split / c / f"{i}.png")
    splits = load_data(DataSpec(name=f"folder:{tmp_path}", input_size=8))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 2))
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    old = ctx.STREAMED_EVAL_MAX
    try:
        ctx.STREAMED_EVAL_MAX = 4
        with pytest.raises(QgenError, match="read from disk .* set eval_subset to at most 4"):
            compute_measures(model, w0, splits.train, None,
                             MeasureSpec.from_dict({"names": ["norm.l2"],
                                                    "eval_subset": None}))
        out = compute_measures(model, w0, splits.train, None,
                               MeasureSpec.from_dict({"names": ["norm.l2"], "eval_subset": 4}))
        assert out.values["norm.l2"] > 0
    finally:
        ctx.STREAMED_EVAL_MAX = old
