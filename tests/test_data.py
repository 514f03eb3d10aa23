"""qgen.data: registry, Fashion-MNIST/CIFAR/digits readers, preparation, and error paths.

CIFAR and the corrupt-file cases use tiny files in the real on-disk formats, written here;
Fashion-MNIST is also read for real from the Debian package ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from qgen.config import DataSpec
from qgen.data import (
    DatasetInfo,
    RawImages,
    Splits,
    dataset_available,
    dataset_names,
    load_data,
)
from qgen.data.cifar import load_pickle
from qgen.data.fashion_mnist import download_fashion_mnist, read_idx
from qgen.data.prepare import prepare, subset_indices
from qgen.errors import QgenError

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not (SYSTEM_FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="Debian package dataset-fashion-mnist not installed")
FM_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch):
    # A developer's own $QGEN_DATA must not change what these tests find.
    monkeypatch.delenv("QGEN_DATA", raising=False)


# ---- writers of the real formats ------------------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        FM_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        FM_FILES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        FM_FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        FM_FILES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        with gzip.open(folder / name, "wb") as fh:
            fh.write(idx_bytes(arr))
    return arrays


def cifar_arrays(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            rng.integers(0, num_classes, n).astype(np.int64))


def write_cifar10(root: Path, binary: bool, per_batch: int = 4, protocol: int = 4) -> dict:
    """Five training batches and a test batch; returns the arrays written."""
    folder = root / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        data, labels = cifar_arrays(per_batch, 10, seed=i)
        out[name] = (data, labels)
        if binary:
            rec = np.concatenate([labels[:, None].astype(np.uint8), data], axis=1)
            (folder / f"{name}.bin").write_bytes(rec.tobytes())
        else:
            batch = {b"batch_label": b"batch", b"labels": labels.tolist(), b"data": data,
                     b"filenames": [b"x.png"] * per_batch}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return out


def write_cifar100(root: Path, binary: bool, n_train: int = 20, n_test: int = 6) -> dict:
    folder = root / ("cifar-100-binary" if binary else "cifar-100-python")
    folder.mkdir(parents=True)
    out = {}
    for i, (name, n) in enumerate((("train", n_train), ("test", n_test))):
        data, fine = cifar_arrays(n, 100, seed=10 + i)
        fine[0] = 99  # the top label must load
        coarse = fine // 5
        out[name] = (data, fine)
        if binary:
            rec = np.concatenate([coarse[:, None].astype(np.uint8),
                                  fine[:, None].astype(np.uint8), data], axis=1)
            (folder / f"{name}.bin").write_bytes(rec.tobytes())
        else:
            batch = {b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist(),
                     b"data": data}
            (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    return out


# ---- registry -----------------------------------------------------------------------------

def test_registry_lists_the_four_datasets():
    assert dataset_names() == ["cifar10", "cifar100", "digits", "fashion-mnist", "imagenet"]


def test_unknown_dataset_is_an_error_listing_the_known_ones():
    with pytest.raises(QgenError, match="unknown dataset 'mnist'.*cifar10.*fashion-mnist"):
        load_data(DataSpec(name="mnist"))
    with pytest.raises(QgenError, match="unknown dataset"):
        dataset_available("mnist")


# ---- Fashion-MNIST, real files --------------------------------------------------------------

@needs_fmnist
def test_fashion_mnist_real_load():
    s = load_data(DataSpec(normalize=False))
    assert isinstance(s, Splits) and isinstance(s.info, DatasetInfo)
    assert s.train_x.shape == (60000, 1, 28, 28) and s.test_x.shape == (10000, 1, 28, 28)
    assert s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    assert 0.0 <= float(s.train_x.min()) and float(s.train_x.max()) <= 1.0
    # Fashion-MNIST is balanced: 6,000 / 1,000 images of each of the 10 classes.
    assert torch.bincount(s.train_y).tolist() == [6000] * 10
    assert torch.bincount(s.test_y).tolist() == [1000] * 10
    info = s.info
    assert (info.name, info.num_classes, info.channels, info.size) == ("fashion-mnist", 10, 1, 28)
    assert (info.train_size, info.test_size) == (60000, 10000)
    assert info.source == str(SYSTEM_FMNIST)
    assert info.mean[0] == pytest.approx(float(s.train_x.mean()), abs=1e-5)
    assert info.mean[0] == pytest.approx(0.2860, abs=1e-3)  # the published training mean
    assert dataset_available("fashion-mnist") == (True, str(SYSTEM_FMNIST))


@needs_fmnist
def test_normalization_uses_training_statistics_only():
    spec = DataSpec(train_subset=2000, test_subset=500, subset_seed=3)
    raw = load_data(spec.replace(normalize=False))
    norm = load_data(spec)
    assert norm.info.mean == raw.info.mean and norm.info.std == raw.info.std
    assert float(norm.train_x.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(norm.train_x.std()) == pytest.approx(1.0, abs=1e-3)
    train_mean, train_std = float(raw.train_x.mean()), float(raw.train_x.std(unbiased=False))
    assert norm.info.mean[0] == pytest.approx(train_mean, abs=1e-6)
    assert norm.info.std[0] == pytest.approx(train_std, abs=1e-5)
    # The test split is normalized with the training statistics, not its own.
    expected = (raw.test_x - norm.info.mean[0]) / norm.info.std[0]
    torch.testing.assert_close(norm.test_x, expected, rtol=0, atol=1e-5)
    assert abs(float(raw.test_x.mean()) - train_mean) > 1e-3
    assert abs(float(norm.test_x.mean())) > 1e-3


@needs_fmnist
def test_fashion_mnist_to_three_channels_of_32():
    s = load_data(DataSpec(normalize=False, channels=3, input_size=32, train_subset=50,
                           test_subset=20))
    native = load_data(DataSpec(normalize=False, train_subset=50, test_subset=20))
    assert s.train_x.shape == (50, 3, 32, 32) and (s.info.channels, s.info.size) == (3, 32)
    for c in range(3):
        torch.testing.assert_close(s.train_x[:, c, 2:30, 2:30], native.train_x[:, 0])
    assert float(s.train_x[:, :, :2].abs().sum() + s.train_x[:, :, :, 30:].abs().sum()) == 0.0
    torch.testing.assert_close(s.train_y, native.train_y)


# ---- Fashion-MNIST search order and errors ----------------------------------------------------

def test_explicit_data_dir_without_data_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    elsewhere = tmp_path / "env"
    write_fmnist(elsewhere)
    monkeypatch.setenv("QGEN_DATA", str(elsewhere))  # would be found if we fell back
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QgenError) as err:
        load_data(DataSpec(), data_dir=empty)
    msg = str(err.value)
    assert str(empty) in msg and str(empty / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "--download" in msg
    assert str(elsewhere) not in msg and "/usr/share" not in msg
    ok, how = dataset_available("fashion-mnist", empty)
    assert not ok and "apt-get install dataset-fashion-mnist" in how


def test_partial_folder_says_which_files_are_missing(tmp_path):
    write_fmnist(tmp_path)
    (tmp_path / FM_FILES[2]).unlink()
    with pytest.raises(QgenError, match=f"lacks {FM_FILES[2]}"):
        load_data(DataSpec(), data_dir=tmp_path)


@pytest.mark.parametrize("nested", [False, True])
def test_data_dir_holds_files_directly_or_in_subfolder(tmp_path, nested):
    folder = tmp_path / "fashion-mnist" if nested else tmp_path
    arrays = write_fmnist(folder, n_train=20, n_test=10)
    s = load_data(DataSpec(normalize=False), data_dir=str(tmp_path))
    assert s.info.source == str(folder)
    assert s.train_x.shape == (20, 1, 28, 28) and s.test_x.shape == (10, 1, 28, 28)
    np.testing.assert_array_equal((s.train_x[:, 0] * 255).round().byte().numpy(),
                                  arrays[FM_FILES[0]])
    np.testing.assert_array_equal(s.test_y.numpy(), arrays[FM_FILES[3]])


def test_qgen_data_env_is_searched_before_the_system_folder(tmp_path, monkeypatch):
    write_fmnist(tmp_path / "fashion-mnist", n_train=12, n_test=4)
    monkeypatch.setenv("QGEN_DATA", str(tmp_path))
    s = load_data(DataSpec())
    assert s.info.source == str(tmp_path / "fashion-mnist") and s.info.train_size == 12


def _corrupt(folder: Path, case: str) -> str:
    """Damage one file of a valid tiny Fashion-MNIST folder; returns the damaged file."""
    rng = np.random.default_rng(1)
    imgs, labels = FM_FILES[0], FM_FILES[1]
    if case == "not gzip":
        (folder / imgs).write_bytes(b"this is not gzip data at all")
        return imgs
    if case == "truncated gzip":
        data = (folder / imgs).read_bytes()
        (folder / imgs).write_bytes(data[: len(data) // 2])
        return imgs
    payload = {
        "bad magic": b"\x12\x34\x08\x03" + idx_bytes(rng.integers(0, 255, (20, 28, 28)))[4:],
        "wrong dimension count": idx_bytes(rng.integers(0, 255, (20, 784))),
        "size mismatch": idx_bytes(rng.integers(0, 255, (20, 28, 28)))[:-100],
        "count mismatch": idx_bytes(rng.integers(0, 255, (19, 28, 28))),
    }
    if case in payload:
        with gzip.open(folder / imgs, "wb") as fh:
            fh.write(payload[case])
        return imgs if case != "count mismatch" else labels
    assert case == "label out of range"
    with gzip.open(folder / labels, "wb") as fh:
        fh.write(idx_bytes(np.full(20, 10)))
    return labels


@pytest.mark.parametrize("case, problem", [
    ("not gzip", "not a readable gzip"),
    ("truncated gzip", "not a readable gzip"),
    ("bad magic", "bad IDX magic"),
    ("wrong dimension count", "2 dimensions, expected 3"),
    ("size mismatch", "size mismatch"),
    ("count mismatch", "20 labels for 19 images"),
    ("label out of range", "label 10 out of range"),
])
def test_corrupt_idx_is_an_error_naming_file_and_problem(tmp_path, case, problem):
    write_fmnist(tmp_path, n_train=20)
    bad = _corrupt(tmp_path, case)
    with pytest.raises(QgenError, match=problem) as err:
        load_data(DataSpec(), data_dir=tmp_path)
    assert bad in str(err.value)


def test_read_idx_reads_the_dimensions(tmp_path):
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    with gzip.open(tmp_path / "a.gz", "wb") as fh:
        fh.write(idx_bytes(arr))
    out = read_idx(tmp_path / "a.gz", 3)
    assert out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), arr)


def test_download_from_a_local_url(tmp_path):
    src = tmp_path / "mirror"
    arrays = write_fmnist(src, n_train=8, n_test=4)
    target = tmp_path / "data"
    download_fashion_mnist(target / "fashion-mnist", base_url=src.as_uri() + "/")
    assert sorted(p.name for p in (target / "fashion-mnist").iterdir()) == sorted(FM_FILES)
    s = load_data(DataSpec(normalize=False), data_dir=target)
    np.testing.assert_array_equal(s.train_y.numpy(), arrays[FM_FILES[1]])


def test_download_of_a_corrupt_file_leaves_nothing(tmp_path):
    src = tmp_path / "mirror"
    write_fmnist(src)
    (src / FM_FILES[2]).write_bytes(b"garbage")
    target = tmp_path / "data"
    with pytest.raises(QgenError, match="t10k-images-idx3-ubyte.gz is not valid"):
        download_fashion_mnist(target, base_url=src.as_uri() + "/")
    assert not (target / FM_FILES[2]).exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no partial files


def test_download_of_a_dataset_without_one_is_an_error(tmp_path):
    with pytest.raises(QgenError, match="--download is not available for cifar10"):
        load_data(DataSpec(name="cifar10"), data_dir=tmp_path, download=True)


# ---- subsets --------------------------------------------------------------------------------

def test_subsets_are_seeded_and_deterministic():
    a = load_data(DataSpec(name="digits", train_subset=200, test_subset=50, subset_seed=1))
    b = load_data(DataSpec(name="digits", train_subset=200, test_subset=50, subset_seed=1))
    c = load_data(DataSpec(name="digits", train_subset=200, test_subset=50, subset_seed=2))
    assert a.train_x.shape == (200, 1, 8, 8) and a.test_x.shape == (50, 1, 8, 8)
    assert (a.info.train_size, a.info.test_size) == (200, 50)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    # The test subset draws from its own stream: it never changes the training images.
    d = load_data(DataSpec(name="digits", train_subset=200, test_subset=80, subset_seed=1,
                           normalize=False))
    e = load_data(DataSpec(name="digits", train_subset=200, subset_seed=1, normalize=False))
    assert torch.equal(d.train_x, e.train_x)


def test_subsets_are_nested_for_one_seed():
    small, large = subset_indices(1000, 100, 7), subset_indices(1000, 400, 7)
    assert set(small.tolist()) <= set(large.tolist())
    assert len(set(large.tolist())) == 400 and large.tolist() == sorted(large.tolist())
    assert subset_indices(1000, None, 7) is None


def test_subset_larger_than_dataset_names_both_sizes():
    with pytest.raises(QgenError, match="train_subset: 2000 .* digits train set \\(1437 images\\)"):
        load_data(DataSpec(name="digits", train_subset=2000))
    with pytest.raises(QgenError, match="test_subset: 361 .*\\(360 images\\)"):
        load_data(DataSpec(name="digits", test_subset=361))


# ---- digits and conversions -----------------------------------------------------------------

def test_digits_load():
    s = load_data(DataSpec(name="digits", normalize=False))
    assert s.train_x.shape == (1437, 1, 8, 8) and s.test_x.shape == (360, 1, 8, 8)
    assert float(s.train_x.min()) == 0.0 and float(s.train_x.max()) == 1.0  # 0..16 → [0, 1]
    assert torch.allclose(s.train_x * 16, (s.train_x * 16).round())
    assert (s.info.num_classes, s.info.size, s.info.channels) == (10, 8, 1)
    assert s.info.source.startswith("scikit-learn")
    # Stratified: every class has 35 or 36 of the 360 test images.
    assert set(torch.bincount(s.test_y).tolist()) <= {35, 36, 37}
    again = load_data(DataSpec(name="digits", normalize=False))
    assert torch.equal(s.test_x, again.test_x) and torch.equal(s.train_y, again.train_y)


def test_digits_padding_and_channels():
    native = load_data(DataSpec(name="digits", normalize=False))
    s = load_data(DataSpec(name="digits", normalize=False, channels=3, input_size=13))
    assert s.train_x.shape == (1437, 3, 13, 13) and (s.info.channels, s.info.size) == (3, 13)
    # 8 → 13 pads 2 before and 3 after, centred; grey is repeated into all three channels.
    for c in range(3):
        torch.testing.assert_close(s.train_x[:, c, 2:10, 2:10], native.train_x[:, 0])
    border = s.train_x.clone()
    border[:, :, 2:10, 2:10] = 0
    assert float(border.abs().sum()) == 0.0


def test_normalized_three_channel_stats_are_per_channel():
    s = load_data(DataSpec(name="digits", channels=3, input_size=12))
    per_channel_mean = s.train_x.mean(dim=(0, 2, 3))
    per_channel_std = s.train_x.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(per_channel_mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel_std, torch.ones(3), atol=1e-4, rtol=0)
    assert len(s.info.mean) == 3 and len(s.info.std) == 3


def _raw(x: torch.Tensor, n_classes: int = 2) -> RawImages:
    y = torch.arange(x.shape[0]) % n_classes
    return RawImages(x, y, x.clone(), y.clone(), num_classes=n_classes, source="test")


def test_resize_down_is_bilinear_and_keeps_constants():
    x = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    x[:, :, :, 16:] = 100  # left half bright, right half darker
    s = prepare(_raw(x), DataSpec(name="t", normalize=False, input_size=16))
    assert s.train_x.shape == (4, 3, 16, 16) and s.info.size == 16
    torch.testing.assert_close(s.train_x[..., :7], torch.full((4, 3, 16, 7), 200 / 255))
    torch.testing.assert_close(s.train_x[..., 9:], torch.full((4, 3, 16, 7), 100 / 255))
    assert float(s.train_x.mean()) == pytest.approx(150 / 255, abs=1e-6)


def test_three_to_one_channel_averages():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    s = prepare(_raw(x), DataSpec(name="t", normalize=False, channels=1))
    torch.testing.assert_close(s.train_x[:, 0], x.float().mean(dim=1) / 255)


def test_constant_images_do_not_divide_by_zero():
    s = prepare(_raw(torch.zeros(4, 1, 8, 8, dtype=torch.uint8)), DataSpec(name="t"))
    assert torch.isfinite(s.train_x).all() and s.info.std[0] > 0


# ---- CIFAR ----------------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False])
def test_cifar10_layouts(tmp_path, binary):
    written = write_cifar10(tmp_path, binary)
    s = load_data(DataSpec(name="cifar10", normalize=False), data_dir=tmp_path)
    assert s.train_x.shape == (20, 3, 32, 32) and s.test_x.shape == (4, 3, 32, 32)
    assert (s.info.num_classes, s.info.channels, s.info.size) == (10, 3, 32)
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(s.train_y.numpy(), train_labels)
    np.testing.assert_array_equal(s.test_y.numpy(), written["test_batch"][1])
    pixels = (s.train_x * 255).round().byte().numpy()
    # Channel-major records: R plane, then G, then B, each row by row.
    np.testing.assert_array_equal(pixels.reshape(20, 3072), train_data)
    assert pixels[3, 1, 2, 5] == train_data[3, 1024 + 2 * 32 + 5]
    assert s.info.source.endswith("bin" if binary else "py")


@pytest.mark.parametrize("binary", [True, False])
def test_cifar100_layouts_use_the_fine_label(tmp_path, binary):
    written = write_cifar100(tmp_path, binary)
    s = load_data(DataSpec(name="cifar100", normalize=False), data_dir=tmp_path)
    assert s.train_x.shape == (20, 3, 32, 32) and s.test_x.shape == (6, 3, 32, 32)
    assert s.info.num_classes == 100
    np.testing.assert_array_equal(s.train_y.numpy(), written["train"][1])
    assert int(s.train_y.max()) == 99
    np.testing.assert_array_equal((s.test_x * 255).round().byte().numpy().reshape(6, -1),
                                  written["test"][0])


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_python_layout_any_pickle_protocol(tmp_path, protocol):
    write_cifar10(tmp_path, binary=False, protocol=protocol)
    s = load_data(DataSpec(name="cifar10"), data_dir=tmp_path / "cifar-10-batches-py")
    assert s.train_x.shape == (20, 3, 32, 32)


def test_cifar_found_through_qgen_data(tmp_path, monkeypatch):
    write_cifar10(tmp_path, binary=True)
    monkeypatch.setenv("QGEN_DATA", str(tmp_path))
    assert dataset_available("cifar10") == (True, str(tmp_path / "cifar-10-batches-bin"))
    assert load_data(DataSpec(name="cifar10")).info.train_size == 20


def test_cifar_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(QgenError, match="cifar100 not found.*cifar-100-python.*--data-dir"):
        load_data(DataSpec(name="cifar100"), data_dir=tmp_path)


def test_cifar_truncated_binary_and_bad_label(tmp_path):
    write_cifar10(tmp_path, binary=True)
    folder = tmp_path / "cifar-10-batches-bin"
    data = (folder / "data_batch_2.bin").read_bytes()
    (folder / "data_batch_2.bin").write_bytes(data[:-10])
    with pytest.raises(QgenError, match="data_batch_2.bin.*not a whole number of 3073-byte"):
        load_data(DataSpec(name="cifar10"), data_dir=tmp_path)
    (folder / "data_batch_2.bin").write_bytes(bytes([12]) + data[1:])
    with pytest.raises(QgenError, match="data_batch_2.bin: label 12 out of range"):
        load_data(DataSpec(name="cifar10"), data_dir=tmp_path)


def test_cifar_python_with_wrong_contents(tmp_path):
    write_cifar10(tmp_path, binary=False)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}))
    with pytest.raises(QgenError, match="test_batch: 'data' must be a uint8 array"):
        load_data(DataSpec(name="cifar10"), data_dir=tmp_path)
    batch.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}))
    with pytest.raises(QgenError, match="3 labels for 4 images"):
        load_data(DataSpec(name="cifar10"), data_dir=tmp_path)
    batch.write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(QgenError, match="test_batch: not a readable pickle"):
        load_data(DataSpec(name="cifar10"), data_dir=tmp_path)


# ---- the restricted unpickler -----------------------------------------------------------------

class _Evil:
    """Pickles into a call of ``func(*args)`` on load: what a hostile file would do."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("make", [
    lambda marker: _Evil(os.system, f"touch {marker}"),
    lambda marker: _Evil(exec, f"open({str(marker)!r}, 'w').close()"),
    lambda marker: {b"data": _Evil(Path.touch, marker), b"labels": []},
])
def test_malicious_pickle_is_refused_without_running(tmp_path, make):
    marker = tmp_path / "pwned"
    write_cifar10(tmp_path, binary=False)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(pickle.dumps(make(marker), protocol=2))
    with pytest.raises(QgenError, match="contains a pickled object of type .*only arrays and "
                                        "builtin containers are allowed") as err:
        load_data(DataSpec(name="cifar10"), data_dir=tmp_path)
    assert "data_batch_3" in str(err.value)
    assert not marker.exists()


def test_restricted_unpickler_refuses_ordinary_classes_too(tmp_path):
    from collections import OrderedDict

    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(QgenError, match="type collections.OrderedDict"):
        load_pickle(path)


def test_restricted_unpickler_rebuilds_arrays_and_containers(tmp_path):
    obj = {b"a": np.arange(12, dtype=np.int16).reshape(3, 4), "b": [1, (2, 3)], "c": {4, 5},
           "d": np.float32(2.5), "e": np.zeros((2, 2), dtype=np.uint8).T}
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        back = load_pickle(path)
        np.testing.assert_array_equal(back[b"a"], obj[b"a"])
        assert back[b"a"].dtype == np.int16
        assert back["b"] == [1, (2, 3)] and back["c"] == {4, 5} and back["d"] == 2.5
