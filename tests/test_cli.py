"""The command line: every bad input ends with one line, exit code 2, nothing written."""

from __future__ import annotations

import gzip

import pytest
from typer.testing import CliRunner

from qgen.cli import app

runner = CliRunner()
TINY = ["--dataset", "digits", "--train-subset", "200", "--model", "nin", "--depth", "1",
        "--width", "1", "--epochs", "1", "--threads", "1", "--quiet"]


def run(*args: str):
    return runner.invoke(app, list(args))


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    return lines[0]


def test_train_writes_a_run(tmp_path):
    res = run("train", *TINY, "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    run_dirs = [p for p in tmp_path.iterdir()]
    assert len(run_dirs) == 1 and (run_dirs[0] / "result.json").is_file()


def test_train_from_yaml_with_flag_override(tmp_path):
    cfg = tmp_path / "spec.yaml"
    cfg.write_text("data: {name: digits, train_subset: 200}\n"
                   "model: {name: nin, depth: 1, width: 1}\n"
                   "train: {max_epochs: 1, lr: 0.5}\n")
    res = run("train", "--config", str(cfg), "--lr", "0.02", "--out", str(tmp_path / "o"),
              "--quiet")
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / "o").iterdir()
    assert '"lr": 0.02' in (run_dir / "spec.json").read_text()


@pytest.mark.parametrize("args, fragment", [
    (["--dataset", "mnist9"], "unknown dataset 'mnist9'; allowed: cifar10"),
    (["--model", "alexnet"], "unknown model 'alexnet'; allowed:"),
    (["--lr", "0"], "train.lr: must be > 0.0"),
    (["--lr", "-1"], "train.lr"),
    (["--train-subset", "999999"], "999999"),
    (["--bits", "1"], "2..8 or 'fp'"),
    (["--optimizer", "lbfgs"], "sgd, adam"),
])
def test_bad_train_input(tmp_path, args, fragment):
    out = tmp_path / "runs"
    res = run("train", *TINY, *args, "--out", str(out))
    assert res.exit_code == 2, res.output
    assert fragment in one_error_line(res)
    assert not out.exists() or not any(out.iterdir())


def test_missing_dataset_directory_says_how_to_get_it(tmp_path):
    out = tmp_path / "runs"
    res = run("train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nowhere"),
              "--out", str(out), "--quiet")
    assert res.exit_code == 2
    line = one_error_line(res)
    assert "dataset-fashion-mnist" in line
    assert not out.exists() or not any(out.iterdir())


def test_corrupt_idx_file(tmp_path):
    d = tmp_path / "fm"
    d.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (d / name).write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 7))
    out = tmp_path / "runs"
    res = run("train", "--dataset", "fashion-mnist", "--data-dir", str(d), "--out", str(out),
              "--quiet")
    assert res.exit_code == 2
    assert "idx" in one_error_line(res).lower()
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = run("train", *TINY, "--out", str(blocker / "runs"))
    assert res.exit_code == 2
    assert "not writable" in one_error_line(res)


def test_bad_yaml(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train: {lr: [\n")
    res = run("train", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "not valid YAML" in one_error_line(res)
    cfg.write_text("- 1\n- 2\n")
    res = run("train", "--config", str(cfg), "--out", str(tmp_path / "o"))
    assert res.exit_code == 2 and "must hold a mapping" in one_error_line(res)


def test_datasets_lists_all():
    res = run("datasets")
    assert res.exit_code == 0
    for name in ("fashion-mnist", "digits", "cifar10", "cifar100"):
        assert name in res.output
