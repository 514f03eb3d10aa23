"""Robustness to corrupted data: the 19 corruptions (contract, determinism, severity order,
the benchmark's constants, the steps checked against SciPy and Pillow), the released
CIFAR-C loader, the settings, the ``robustness`` post-pass with collect and its command,
and the report section with its claim."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qgen.config import RunSpec, Runtime
from qgen.errors import QgenError
from qgen.robustness import (
    CIFAR,
    CORRUPTIONS,
    NAMES,
    ReleasedC,
    RobustnessSpec,
    corrupt,
    find_released,
    imagenet_c_files,
    read_images,
    robustness_run,
)
from qgen.robustness.compute import CorruptedSets, EvalSet, compute_robustness
from qgen.robustness.constants import zoom_factors
from qgen.robustness.corruptions import glass_permutation, zoom_matrix
from qgen.robustness.filters import gaussian_blur


# ------------------------------------------------------------------ test images
def natural(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth images with detail at two scales, in (0, 1) (no real photographs here)."""
    g = torch.Generator().manual_seed(seed)
    a = gaussian_blur(torch.rand(n, c, size, size, generator=g), 3.0)
    b = gaussian_blur(torch.rand(n, 1, size, size, generator=g), 1.0)
    a, b = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
    return torch.sigmoid(1.2 * a + 0.8 * b)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of a batch against its clean version (batch-averaged mean squared error)."""
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-12)))


# ------------------------------------------------------------------ constants
#: robustness.md's table, copied by hand (the doc is also parsed when it is beside the repo)
DOC = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.90, 0.85, 0.75, 0.65),
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
}
SHARED_DOC = Path(__file__).resolve().parents[2] / "shared" / "docs" / "robustness.md"


def _flat(v):
    return [float(x) for x in (v if isinstance(v, tuple) else (v,))]


def test_constants_match_the_benchmark_table():
    assert set(CIFAR) == set(DOC) == set(NAMES) and len(NAMES) == 19
    for name, values in DOC.items():
        assert [_flat(v) for v in CIFAR[name]] == [_flat(v) for v in values], name
    if SHARED_DOC.is_file():  # the shared notes themselves, row by row
        rows = {}
        for line in SHARED_DOC.read_text().splitlines():
            m = re.match(r"\| (\w+) \(.*?\) \| (.*) \|$", line) or \
                re.match(r"\| (\w+) \| (.*) \|$", line)
            if m and m.group(1) in CIFAR:
                rows[m.group(1)] = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", m.group(2))]
        assert set(rows) == set(NAMES)
        for name, numbers in rows.items():
            expected = [x for v in CIFAR[name] for x in _flat(v)]
            if name == "zoom_blur":  # the doc writes "up to 1.06, ..."
                expected = [float(v) for v in CIFAR[name]]
            assert numbers == expected, name
    # np.arange(1, stop, 0.01) of the benchmark: 7, 12, 16, 21 and 26 factors
    assert [len(zoom_factors(s)) for s in range(1, 6)] == [
        len(np.arange(1, stop, 0.01)) for stop in DOC["zoom_blur"]]


# ------------------------------------------------------------------ the contract
@pytest.mark.parametrize("name", NAMES)
def test_corruption_keeps_shape_dtype_range_and_is_deterministic(name):
    for c, size, dtype in ((3, 32, torch.float32), (1, 28, torch.float32), (3, 8, torch.float64)):
        x = natural(5, c, size).to(dtype)
        for s in (1, 3, 5):
            y = corrupt(x, name, s, seed=3)
            assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
            assert torch.equal(y, corrupt(x, name, s, seed=3))
        # the registered function is pure: the same generator state, the same output
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        assert torch.equal(CORRUPTIONS[name](x, 2, g1), CORRUPTIONS[name](x, 2, g2))
    # chunked like the one-call API or not, the output depends only on the seed and chunk
    x = natural(7, 3, 16)
    assert torch.equal(corrupt(x, name, 4, seed=1, chunk=3), corrupt(x, name, 4, seed=1, chunk=3))


#: PSNR need not fall with severity where the benchmark's constants are not ordered that
#: way: glass_blur's blur sigma goes 0.05, 0.25, 0.4, 0.25, 0.4; elastic_transform's affine
#: jitter shrinks (0.08 → 0.03) while its elastic part grows; spatter turns from water (1–3)
#: to mud (4–5); frost's image weight drops from 0.9 to 0.85 at a constant frost weight
#: (brighter images lose less); saturate first desaturates (×0.3, ×0.1) then saturates.
NOT_ORDERED = {"glass_blur", "elastic_transform", "spatter", "frost", "saturate"}


@pytest.mark.parametrize("c,size", [(3, 32), (1, 28)])
def test_distortion_grows_with_severity(c, size):
    x = natural(24, c, size)
    for name in NAMES:
        ps = [psnr(corrupt(x, name, s, seed=1), x) for s in range(1, 6)]
        if name == "saturate" and c == 1:
            assert ps == [120.0] * 5  # grey images have no saturation: unchanged
            continue
        assert max(ps) < 55, (name, ps)  # every severity distorts
        if name not in NOT_ORDERED:
            assert all(b <= a + 0.05 for a, b in zip(ps, ps[1:], strict=False)), (name, ps)
            assert ps[-1] < ps[0] - 1.0, (name, ps)


def test_bad_input_is_one_line_qgen_error():
    x = torch.rand(2, 3, 8, 8)
    for call, fragment in (
            (lambda: corrupt(x, "blur", 1), "unknown corruption 'blur'"),
            (lambda: corrupt(x, "fog", 6), "severity must be an integer 1..5"),
            (lambda: corrupt(x, "fog", 0), "severity"),
            (lambda: corrupt(torch.rand(2, 2, 8, 8), "fog", 1), "C = 1 or 3"),
            (lambda: corrupt((x * 255).to(torch.uint8), "fog", 1), "floats"),
            (lambda: corrupt(x, "fog", 1, chunk=0), "chunk")):
        with pytest.raises(QgenError, match=fragment) as exc:
            call()
        assert "\n" not in str(exc.value)


# ------------------------------------------------------------------ against references
def test_blur_and_zoom_match_scipy():
    import scipy.ndimage as ndi

    a = np.random.default_rng(0).random((2, 3, 11, 11))
    for sigma in (0.4, 1.0, 6.4):
        ref = ndi.gaussian_filter(a, (0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        assert np.abs(gaussian_blur(torch.from_numpy(a), sigma).numpy() - ref).max() < 1e-12
    img = np.random.default_rng(1).random((32, 32, 3))
    for f in (1.0, 1.01, 1.11, 1.25, 1.75, 2.25):  # the benchmark's clipped_zoom
        ch = int(np.ceil(32 / f))
        top = (32 - ch) // 2
        z = ndi.zoom(img[top:top + ch, top:top + ch], (f, f, 1), order=1)
        t = (z.shape[0] - 32) // 2
        x = torch.from_numpy(img).permute(2, 0, 1)
        ours = (zoom_matrix(32, f) @ x @ zoom_matrix(32, f).T).permute(1, 2, 0).numpy()
        assert np.abs(ours - z[t:t + 32, t:t + 32]).max() < 1e-12, f


def test_pixelate_and_jpeg_match_pillow():
    pil = pytest.importorskip("PIL.Image")
    import io

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    for s, factor in enumerate(CIFAR["pixelate"], 1):
        n = int(32 * factor)
        ref = np.stack([np.asarray(pil.fromarray(i).resize((n, n), pil.BOX)
                                   .resize((32, 32), pil.BOX)) for i in imgs])
        ours = (corrupt(x, "pixelate", s) * 255).round().permute(0, 2, 3, 1).numpy()
        assert np.array_equal(ours, ref), s  # bit-exact, Pillow's two rounded passes
    smooth = (natural(8, 3, 28) * 255).round().to(torch.uint8)
    arr = smooth.permute(0, 2, 3, 1).numpy()
    for s, quality in enumerate(CIFAR["jpeg_compression"], 1):
        ref = []
        for im in arr:
            buf = io.BytesIO()
            pil.fromarray(im).save(buf, "JPEG", quality=quality)
            ref.append(np.asarray(pil.open(io.BytesIO(buf.getvalue())).convert("RGB")))
        ours = (corrupt(smooth.float() / 255, "jpeg_compression", s) * 255).round()
        diff = np.abs(ours.permute(0, 2, 3, 1).numpy() - np.stack(ref))
        distortion = np.abs(np.stack(ref).astype(float) - arr).mean()
        assert diff.mean() < 0.1 * distortion and diff.mean() < 1.0, (s, diff.mean())


def test_brightness_and_saturate_are_hsv_edits():
    colors = pytest.importorskip("matplotlib.colors")
    hsv_to_rgb, rgb_to_hsv = colors.hsv_to_rgb, colors.rgb_to_hsv

    x = natural(4, 3, 16)
    x[0, :, :4, :4] = 0.0  # black: hue 0, saturation 0
    x[1, :, :4, :4] = 0.5  # grey
    hsv = rgb_to_hsv(x.permute(0, 2, 3, 1).numpy().astype(np.float64))
    for s, add in enumerate(CIFAR["brightness"], 1):
        h = hsv.copy()
        h[..., 2] = np.clip(h[..., 2] + add, 0, 1)
        ref = hsv_to_rgb(h)
        ours = corrupt(x, "brightness", s).permute(0, 2, 3, 1).numpy()
        assert np.abs(ours - ref).max() < 1e-5
    for s, (a, b) in enumerate(CIFAR["saturate"], 1):
        h = hsv.copy()
        h[..., 1] = np.clip(h[..., 1] * a + b, 0, 1)
        ref = np.clip(hsv_to_rgb(h), 0, 1)
        ours = corrupt(x, "saturate", s).permute(0, 2, 3, 1).numpy()
        assert np.abs(ours - ref).max() < 1e-5


def test_glass_permutation_is_the_benchmark_swap_loop():
    n, h, w, delta, iters = 3, 9, 7, 1, 2
    gen = torch.Generator().manual_seed(5)
    perm = glass_permutation(n, h, w, delta, iters, gen)
    # the same draws, replayed through the benchmark's loop, one image at a time
    gen = torch.Generator().manual_seed(5)
    cpu = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
    img = np.tile(np.arange(h * w).reshape(h, w), (n, 1, 1))
    for _ in range(iters):
        offs = torch.randint(-delta, delta, (len(rows) * len(cols), n, 2), generator=cpu)
        for i in range(n):
            k = 0
            for r in rows:
                for c in cols:
                    dx, dy = int(offs[k, i, 0]), int(offs[k, i, 1])
                    img[i, r, c], img[i, r + dy, c + dx] = img[i, r + dy, c + dx], img[i, r, c]
                    k += 1
    assert np.array_equal(perm.numpy(), img.reshape(n, -1))


# ------------------------------------------------------------------ released files
def _write_released(folder: Path, n: int, corruptions=("gaussian_noise", "fog"),
                    labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A small folder in the exact released layout: <c>.npy (5·n, 32, 32, 3) uint8 with
    severities 1 → 5 stacked, labels.npy (5·n,) = the test labels 5 times."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n) if labels is None else labels
    np.save(folder / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    arrays = {}
    for c in corruptions:
        arr = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
        np.save(folder / f"{c}.npy", arr)
        arrays[c] = arr
    arrays["labels"] = labels
    return arrays


def test_released_loader_reads_the_layout_and_refuses_wrong_files(tmp_path):
    n = 7
    arrays = _write_released(tmp_path / "CIFAR-10-C", n)
    rc = ReleasedC(tmp_path / "CIFAR-10-C", n_test=n)
    assert rc.n == n and rc.available() == ["gaussian_noise", "fog"]
    assert np.array_equal(rc.labels(), arrays["labels"])
    rc.check_labels(arrays["labels"], "cifar10")
    for s in range(1, 6):
        block = arrays["fog"][(s - 1) * n:s * n]
        assert np.array_equal(rc.images("fog", s), block)
        assert np.array_equal(rc.images("fog", s, np.array([5, 1])), block[[5, 1]])
    assert isinstance(rc.array("fog"), np.memmap)
    assert find_released("cifar10", data_dir=tmp_path) == tmp_path / "CIFAR-10-C"
    assert find_released("cifar100", data_dir=tmp_path) is None
    assert find_released("fashion-mnist", data_dir=tmp_path) is None

    bad = tmp_path / "bad"
    _write_released(bad, n, corruptions=())
    np.save(bad / "fog.npy", np.zeros((5 * n, 32, 32, 3), dtype=np.float32))
    np.save(bad / "snow.npy", np.zeros((4 * n, 32, 32, 3), dtype=np.uint8))
    np.save(bad / "contrast.npy", np.zeros((5 * n, 32, 32), dtype=np.uint8))
    rb = ReleasedC(bad)
    cases = [(lambda: rb.images("fog", 1), "dtype float32, expected uint8"),
             (lambda: rb.images("snow", 1), r"shape \(28, 32, 32, 3\), expected \(35, 32"),
             (lambda: rb.images("contrast", 1), "expected"),
             (lambda: rb.images("frost", 1), "no such file"),
             (lambda: rb.images("fog", 6), "severity"),
             (lambda: rb.check_labels(arrays["labels"][::-1], "cifar10"),
              "does not match the cifar10 test labels"),
             (lambda: ReleasedC(bad, n_test=10000), "test set has 10000"),
             (lambda: find_released("cifar10", released_dir=tmp_path), "no labels.npy")]
    (tmp_path / "odd").mkdir()
    np.save(tmp_path / "odd" / "labels.npy", np.zeros(11, np.int64))
    cases.append((lambda: ReleasedC(tmp_path / "odd"), "not 5 severity blocks"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "labels.npy", np.arange(5 * n) % 10)
    cases.append((lambda: ReleasedC(mixed), "blocks hold different labels"))
    for call, fragment in cases:
        with pytest.raises(QgenError, match=fragment) as exc:
            call()
        assert "\n" not in str(exc.value)


def test_released_files_are_what_the_evaluation_reads(tmp_path):
    n = 9
    arrays = _write_released(tmp_path / "CIFAR-10-C", n)
    labels = torch.from_numpy(arrays["labels"]).long()
    positions = torch.tensor([0, 2, 3, 7])
    es = EvalSet("cifar10", torch.zeros(4, 3, 32, 32, dtype=torch.uint8), labels[positions],
                 positions, 255.0, 3, 32, (0.5,) * 3, (0.25,) * 3, True, labels)
    spec = RobustnessSpec(corruptions="gaussian_noise,fog", severities=[2, 5], batch_size=3)
    sets = CorruptedSets(es, spec, "released", tmp_path / "CIFAR-10-C", {})
    got = sets.images("fog", 5)
    expected = torch.from_numpy(arrays["fog"][4 * n:][[0, 2, 3, 7]])
    assert torch.equal(got.permute(0, 2, 3, 1), expected)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    rec = compute_robustness(model, es, 0.5, spec, source="released",
                             folder=tmp_path / "CIFAR-10-C")
    v = rec["values"]
    x = es.model_input(got.float() / 255)
    with torch.no_grad():
        loss = F.cross_entropy(model(x).double(), es.labels).item()
    assert v["fog.s5.loss"] == pytest.approx(loss, rel=1e-6)
    assert v["fog.s5.gap"] == pytest.approx(loss - 0.5, rel=1e-6)
    assert rec["source"] == "released"
    wrong = EvalSet("cifar10", es.images, es.labels, positions, 255.0, 3, 32, (0.5,) * 3,
                    (0.25,) * 3, True, (labels + 1) % 10)
    with pytest.raises(QgenError, match="does not match the cifar10 test labels"):
        CorruptedSets(wrong, spec, "released", tmp_path / "CIFAR-10-C", {})


def test_imagenet_c_folder_layout(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    root = tmp_path / "imagenet-c"
    for cls, color in (("n01", 10), ("n02", 200)):
        d = root / "fog" / "3" / cls
        d.mkdir(parents=True)
        for k in range(2):
            pil.fromarray(np.full((6, 6, 3), color + k, np.uint8)).save(d / f"{k}.png")
    files = imagenet_c_files(root, "fog", 3)
    assert [(p.parent.name, lab) for p, lab in files] == [("n01", 0)] * 2 + [("n02", 1)] * 2
    imgs = read_images([p for p, _ in files])
    assert imgs.shape == (4, 6, 6, 3) and imgs[3, 0, 0, 0] == 201
    assert [lab for _, lab in imagenet_c_files(root, "fog", 3, ["n02", "n01"])] == [1, 1, 0, 0]
    for call, fragment in ((lambda: imagenet_c_files(root, "fog", 2), "no such folder"),
                           (lambda: imagenet_c_files(root, "fog", 3, ["n01"]), "not one of"),
                           (lambda: imagenet_c_files(root, "smoke", 3), "unknown corruption")):
        with pytest.raises(QgenError, match=fragment):
            call()


# ------------------------------------------------------------------ settings
def test_settings_validate_and_round_trip(monkeypatch):
    spec = RobustnessSpec.from_dict({"corruptions": ["noise", "fog"], "severities": "5,1",
                                     "test_examples": 50})
    assert spec.corruptions == ("gaussian_noise", "shot_noise", "impulse_noise", "fog")
    assert spec.severities == (1, 5)
    assert RobustnessSpec.from_dict(spec.to_dict()) == spec
    assert RobustnessSpec().corruptions == NAMES and RobustnessSpec().severities == (1, 2, 3, 4, 5)
    assert len(RobustnessSpec(corruptions="demo").corruptions) == 6
    assert "released_dir" not in spec.replace(released_dir="/x").settings_key()
    for data, fragment in (({"corruptions": ["fog", "smoke"]}, "unknown corruption 'smoke'"),
                           ({"corruptions": []}, "at least one"),
                           ({"severities": [0, 3]}, "integers 1..5, got 0"),
                           ({"severities": "1,6"}, "integers 1..5, got 6"),
                           ({"severities": [2.0]}, "integers 1..5"),
                           ({"test_examples": 0}, "robustness.test_examples"),
                           ({"source": "cifar"}, "auto, released, generated"),
                           ({"nope": 1}, "unknown field 'nope'")):
        with pytest.raises(QgenError, match=fragment) as exc:
            RobustnessSpec.from_dict(data)
        assert "\n" not in str(exc.value)
    with pytest.raises(QgenError, match="allowed: gaussian_noise, shot_noise"):
        RobustnessSpec(corruptions="smoke")
    from qgen.robustness.compute import resolve_source

    assert resolve_source(RobustnessSpec(), "fashion-mnist", None) == ("generated", None)
    for bad in (RobustnessSpec(source="released"), RobustnessSpec(released_dir="/x")):
        with pytest.raises(QgenError, match="exist only for cifar10, cifar100"):
            resolve_source(bad, "fashion-mnist", None)
    monkeypatch.delenv("QGEN_DATA", raising=False)
    with pytest.raises(QgenError, match="no CIFAR-10-C folder"):
        resolve_source(RobustnessSpec(source="released"), "cifar10", None)


# ------------------------------------------------------------------ the post-pass
CHEAP = {"corruptions": "gaussian_noise,contrast,pixelate", "severities": [1, 5],
         "test_examples": 60}


def test_postpass_records_reuses_collects_and_runs_from_the_command_line(tmp_path, tiny_tree):
    import typer
    from typer.testing import CliRunner

    from qgen.cli.robustness import robustness_command
    from qgen.results import collect
    from qgen.store import Resources
    from qgen.train import execute_run

    spec_run = RunSpec.from_dict(dict(tiny_tree, quant={"bits": 4}))
    execute_run(spec_run, Runtime(out_dir=tmp_path / "runs", threads=1))
    run = tmp_path / "runs" / spec_run.run_id
    spec = RobustnessSpec.from_dict(CHEAP)
    resources = Resources()
    rec = robustness_run(run, spec, resources=resources)
    v = rec["values"]
    assert (run / "robustness.json").is_file() and rec["source"] == "generated"
    for c in spec.corruptions:
        for s in spec.severities:
            assert 0.0 <= v[f"{c}.s{s}.acc"] <= 1.0
            assert v[f"{c}.s{s}.gap"] == pytest.approx(v[f"{c}.s{s}.loss"] - v["train_loss"])
    assert v["mean_acc"] == pytest.approx(np.mean([v[f"{c}.s{s}.acc"] for c in spec.corruptions
                                                   for s in spec.severities]))
    assert v["n_test"] == 60 and v["train_loss"] > 0
    # the clean images are exactly the run's own test images, prepared the same way
    from qgen.robustness.compute import eval_set
    from qgen.store import RunDir
    from qgen.train import load_run_data, load_run_model
    from qgen.train.evaluate import predict_logits

    splits = load_run_data(RunDir(run), resources)
    result_data = json.loads((run / "result.json").read_text())["data"]
    full = eval_set(spec_run.data, result_data, RobustnessSpec(), cache=resources.cache)
    assert torch.allclose(full.model_input(full.clean01()), splits.test_x, atol=1e-6)
    es = eval_set(spec_run.data, result_data, spec, cache=resources.cache)
    model = load_run_model(run)
    clean = F.cross_entropy(predict_logits(model, es.model_input(es.clean01())), es.labels)
    assert v["clean_loss"] == pytest.approx(float(clean), rel=1e-5)
    # corrupted sets were made once and kept for the next run of the same call
    assert any(k[0] == "robust.set" for k in resources.cache if isinstance(k, tuple))

    before = (run / "robustness.json").read_bytes()
    again = robustness_run(run, spec)
    assert again["reused"] is True and (run / "robustness.json").read_bytes() == before
    with pytest.raises(QgenError, match="other settings"):
        robustness_run(run, spec.replace(seed=1))

    # another set of corruptions is not other settings: the record is made again for the
    # set asked, reusing the cells it holds, and its aggregates are over that set
    one = spec.replace(corruptions=(spec.corruptions[0],))
    fewer = robustness_run(run, one)
    assert fewer["reused_cells"] == len(spec.severities) and fewer["corruptions"] == list(
        one.corruptions)
    c0 = spec.corruptions[0]
    assert fewer["values"][f"{c0}.s1.acc"] == v[f"{c0}.s1.acc"]
    assert fewer["values"]["mean_acc"] == pytest.approx(
        np.mean([v[f"{c0}.s{s}.acc"] for s in spec.severities]))
    assert not any(k.startswith(f"{spec.corruptions[1]}.") for k in fewer["values"])
    back = robustness_run(run, spec)  # the dropped cells are evaluated again, the same
    assert back["reused_cells"] == len(spec.severities)
    assert back["values"] == pytest.approx(v)

    df = collect(run.parent)
    assert df.loc[0, "robust.mean_acc"] == pytest.approx(v["mean_acc"])
    assert df.loc[0, "robust.contrast.s5.gap"] == pytest.approx(v["contrast.s5.gap"])
    key = spec.settings_key()
    del key["corruptions"], key["severities"]  # the sets a record covers are not its key
    assert json.loads(df.loc[0, "meta.robustness_settings"]) == key
    assert df.loc[0, "meta.robustness_source"] == "generated"

    app = typer.Typer()
    app.command()(robustness_command)
    runner = CliRunner()
    args = [str(run), "--corruptions", CHEAP["corruptions"], "--severities", "1,5",
            "--set", "test_examples=60", "--threads", "1", "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads((run / "robustness.json").read_text())["values"] == pytest.approx(v)
    for bad, fragment in ((["--corruptions", "smoke"], "unknown corruption 'smoke'"),
                          (["--severities", "0,6"], "integers 1..5"),
                          (["--set", "test_examples=0"], "robustness.test_examples"),
                          ([*args[1:5], "--set", "test_examples=60", "--released-dir",
                            str(tmp_path)], "exist only for cifar10, cifar100")):
        res = runner.invoke(app, [str(run), *bad])
        lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert lines[0].startswith("error:") and fragment in lines[0]


# ------------------------------------------------------------------ report and claim
def robust_table(make_table, shift: dict[str, float]):
    """The synthetic results table with robust.* columns: the gap under distortion of bit
    width b is its clean gap + 0.3 + ``shift[b]``."""
    df = make_table()
    # measures are not needed here, and gen.epochs (integer ties) sends scipy's Wilcoxon
    # to a slow permutation test
    df = df.drop(columns=[c for c in df.columns if c.startswith("measure.")] + ["gen.epochs"])
    rng = np.random.default_rng(1)
    sev = (1, 3, 5)
    for c in ("gaussian_noise", "fog"):
        for s in sev:
            acc = (0.85 - 0.08 * s - df["hp.quant.label"].map(shift)
                   + rng.normal(0, 0.002, len(df)))
            df[f"robust.{c}.s{s}.acc"] = acc
            df[f"robust.{c}.s{s}.loss"] = (df["gen.test_loss"] + 0.3 + 0.02 * s
                                           + df["hp.quant.label"].map(shift))
            df[f"robust.{c}.s{s}.gap"] = df[f"robust.{c}.s{s}.loss"] - df["gen.train_loss"]
        for q in ("acc", "loss", "gap"):
            df[f"robust.{c}.{q}"] = df[[f"robust.{c}.s{s}.{q}" for s in sev]].mean(axis=1)
    for s in sev:
        for q in ("acc", "loss", "gap"):
            df[f"robust.s{s}.{q}"] = df[[f"robust.{c}.s{s}.{q}" for c in ("gaussian_noise",
                                                                          "fog")]].mean(axis=1)
    for q in ("acc", "loss", "gap"):
        df[f"robust.mean_{q}"] = df[[f"robust.s{s}.{q}" for s in sev]].mean(axis=1)
    df["robust.clean_acc"] = df["gen.test_accuracy"]
    df["meta.robustness_settings"] = json.dumps({"corruptions": ["gaussian_noise", "fog"],
                                                 "severities": list(sev), "seed": 0,
                                                 "test_examples": 500})
    df["meta.robustness_source"] = "generated"
    return df


def test_report_section_and_claim_from_a_hand_made_table(make_table, tmp_path):
    pytest.importorskip("matplotlib")
    import qgen.robustness.report as rr
    from qgen.analysis import analyze
    from qgen.report import build_report
    from qgen.report.sections import ReportContext

    df = robust_table(make_table, {"fp": 0.0, "w8a8": 0.0, "w4a4": -0.03, "w2a2": -0.08})
    a = analyze(df, n_boot=200)
    claim = next(c for c in a.claims if c.id == rr.CLAIM_ID)
    assert claim.verdict == "supported" and claim.evidence["decided_by"] == "w2a2"
    assert {p.id.split(".")[-1]: p.verdict for p in claim.parts}["w4a4"] == "supported"
    section = rr.robustness_section(ReportContext(analysis=a, title="t"))
    assert not section.omitted
    diff, summary = section.tables()
    assert diff.header == ["corruption", "w8a8", "w4a4", "w2a2"]
    assert [r[0] for r in diff.rows] == ["gaussian_noise", "fog", "mean over corruptions"]
    # the clean gap shift of the table (−0.05 at w2a2) plus the distortion shift (−0.08)
    assert diff.rows[2][3].endswith("(q better)") and diff.rows[2][3].startswith("-0.13")
    assert "≈" in diff.rows[2][1]
    # the paper's colouring: green where the quantized model is better, none where unclear
    assert diff.tone(2, 3) == "good" and diff.tone(2, 1) == "" and diff.tone(2, 0) == ""
    assert [r[0] for r in summary.rows] == ["fp", "w8a8", "w4a4", "w2a2"]
    assert {f.name for f in section.figures()} == {"robust_accuracy_vs_severity",
                                                   "robust_accuracy_by_corruption"}
    html = build_report(df, tmp_path / "report", analysis=a).read_text()
    assert "Robustness to corrupted data" in html and "degrade less" in html
    assert re.search(r'<td class="tone-good">-0\.13[^<]*\(q better\)</td>', html)

    worse = analyze(robust_table(make_table, {"fp": 0.0, "w8a8": 0.0, "w4a4": 0.03,
                                              "w2a2": 0.08}), n_boot=200)
    assert next(c for c in worse.claims if c.id == rr.CLAIM_ID).verdict == "contradicted"
    worse_diff = rr.robustness_section(ReportContext(analysis=worse, title="t")).tables()[0]
    assert worse_diff.tone(2, 3) == "bad" and worse_diff.rows[2][3].endswith("(fp better)")
    plain = robust_table(make_table, {"fp": 0.0, "w8a8": 0.0, "w4a4": 0.0, "w2a2": 0.0})
    plain = analyze(plain.drop(columns=[c for c in plain.columns if c.startswith("robust.")]),
                    n_boot=50)
    assert all(c.id != rr.CLAIM_ID for c in plain.claims)
    omitted = rr.robustness_section(ReportContext(analysis=plain, title="t"))
    assert omitted.omitted and "robust.*" in omitted.note


def test_report_module_and_settings_import_no_torch():
    code = ("import sys; import qgen.robustness.report, qgen.robustness.settings; "
            "from qgen.robustness import RobustnessSpec, NAMES; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
