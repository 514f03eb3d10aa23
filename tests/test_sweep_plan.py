"""Sweep files, presets, the grid, bad input (one line, exit 2), and the run store's lock,
clean-up, status and table writing. No training here (see test_sweep_run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from qgen import store
from qgen.cli import app
from qgen.config import RunSpec
from qgen.errors import QgenError
from qgen.results import collect, write_table
from qgen.sweep import status
from qgen.sweep.plan import expand, load_sweep, parse_sweep, preset_names, resolve_sweep_path

runner = CliRunner()

BASE = {"data": {"name": "digits"}, "model": {"name": "nin", "depth": 1, "width": 1},
        "train": {"max_epochs": 1}}


def write_sweep(path: Path, content: object) -> Path:
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# presets and the grid


def test_presets_resolve_by_name_and_paper_grids_are_large():
    assert {"demo", "cifar10-nin", "cifar100-nin"} <= set(preset_names())
    demo = expand(load_sweep("demo"))
    assert len(demo.specs) == 24  # 6 settings, each at every bit width
    assert [s.quant.label for s in demo.specs[::6]] == ["fp", "w8a8", "w4a4", "w2a2"]
    assert {(s.model.width, s.train.lr) for s in demo.specs} == {
        (w, lr) for w in (2, 3) for lr in (0.05, 0.07, 0.1)}
    assert {s.train.target_ce for s in demo.specs} == {0.1}
    assert {s.data.name for s in demo.specs} == {"fashion-mnist"}
    assert load_sweep("demo").source == "preset:demo"
    c10 = expand(load_sweep("cifar10-nin"))
    c100 = expand(load_sweep("cifar100-nin"))
    assert len(c10.specs) + len(c100.specs) >= 1900
    assert {s.data.name for s in c100.specs} == {"cifar100"}
    assert {s.quant.label for s in c10.specs} == {"fp", "w8a8", "w4a4", "w2a2"}
    assert len(set(c10.run_ids) | set(c100.run_ids)) == len(c10.specs) + len(c100.specs)


def test_grid_is_the_product_in_file_order_with_seeds_innermost(tmp_path):
    f = write_sweep(tmp_path / "g.yaml", {"base": BASE, "axes": {"quant.bits": ["fp", 4],
                                                                 "model.width": [1, 2]},
                                          "seeds": [0, 7]})
    plan = expand(load_sweep(f))
    assert plan.grid_size == 8 and len(plan.specs) == 8 and not plan.duplicates
    got = [(s.quant.w_bits, s.model.width, s.train.seed) for s in plan.specs]
    assert got == [(None, 1, 0), (None, 1, 7), (None, 2, 0), (None, 2, 7),
                   (4, 1, 0), (4, 1, 7), (4, 2, 0), (4, 2, 7)]
    # base fields that no axis touches are kept
    assert all(s.data.name == "digits" and s.train.max_epochs == 1 for s in plan.specs)
    assert plan.sweep.name == "g"  # defaults to the file name


def test_duplicate_specs_are_counted_once_and_reported(tmp_path):
    # 32 bits means full precision, so 'fp' and 32 are the same run; so are 1 and 1.0.
    f = write_sweep(tmp_path / "d.yaml", {"base": BASE, "axes": {"quant.bits": ["fp", 32, 8],
                                                                 "train.lr": [1, 1.0]}})
    plan = expand(load_sweep(f))
    assert plan.grid_size == 6
    assert len(plan.specs) == 2 and len(set(plan.run_ids)) == 2
    assert len(plan.duplicates) == 4
    assert {rid for rid, _ in plan.duplicates} == set(plan.run_ids)
    result = runner.invoke(app, ["sweep", "plan", str(f)])
    assert result.exit_code == 0, result.output
    assert "6 points → 2 distinct runs" in result.output
    assert "4 points repeat a run" in result.output


def test_plan_prints_count_axes_and_examples():
    result = runner.invoke(app, ["sweep", "plan", "demo", "--show", "2"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "4 runs" in out and "quant.bits" in out and "fp, 8, 4, 2" in out
    first = expand(load_sweep("demo")).specs[0]
    assert first.run_id in out and '"fashion-mnist"' in out


def test_sweep_to_dict_round_trips(tmp_path):
    content = {"name": "x", "base": BASE, "axes": {"model.width": [1, 2]}, "seeds": [3]}
    sw = parse_sweep(content)
    again = parse_sweep(sw.to_dict())
    assert expand(again).run_ids == expand(sw).run_ids


# --------------------------------------------------------------------------------------------
# bad input: one clear line, exit code 2


BAD = [
    ("name: [unclosed\naxes: {", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ("", "got an empty file"),
    ({"base": BASE, "axes": ["quant.bits", "fp"]}, "axes must be a mapping"),
    ({"base": BASE, "axes": {"quant.bits": "fp"}}, "axes.quant.bits: values must be a non-empty"),
    ({"base": BASE, "axes": {"quant.bits": []}}, "axes.quant.bits: empty list"),
    ({"base": BASE, "seeds": []}, "seeds: empty list"),
    ({"base": BASE, "axes": {"model.colour": [1, 2]}}, "unknown spec field 'model.colour'"),
    ({"base": BASE, "axes": {"optim.lr": [1]}}, "unknown spec field 'optim.lr'"),
    ({"base": BASE, "axes": {"quant.bits": ["fp", 9]}}, "axes.quant.bits[1] = 9: quant.w_bits"),
    ({"base": BASE, "axes": {"train.lr": [0.1, -1]}}, "axes.train.lr[1] = -1: train.lr"),
    ({"base": BASE, "axes": {"data.name": ["digits", "mnist"]}}, "unknown dataset 'mnist'"),
    ({"base": BASE, "axez": {}}, "unknown key 'axez'"),
    ({"base": {"model": {"depht": 2}}}, "base: model: unknown field 'depht'"),
    ({"base": BASE, "seeds": [0], "axes": {"train.seed": [1]}}, "keep one of them"),
]


@pytest.mark.parametrize("content, fragment", BAD)
def test_bad_sweep_files_fail_with_one_line_and_exit_2(tmp_path, content, fragment):
    f = write_sweep(tmp_path / "bad.yaml", content)
    for command in (["sweep", "plan", str(f)], ["sweep", "run", str(f), "--out",
                                                str(tmp_path / "out"), "--quiet"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error:") and fragment in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was created


def test_unknown_preset_lists_the_presets(tmp_path):
    with pytest.raises(QgenError, match="presets: .*demo"):
        resolve_sweep_path("no-such-preset")
    with pytest.raises(QgenError, match="no such sweep file"):
        resolve_sweep_path(str(tmp_path / "missing.yaml"))


def test_bad_input_exit_code_through_a_real_process(tmp_path):
    f = write_sweep(tmp_path / "empty.yaml", {"base": BASE, "axes": {"model.width": []}})
    proc = subprocess.run([sys.executable, "-m", "qgen.cli", "sweep", "plan", str(f)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "axes.model.width: empty list" in proc.stderr


def test_bad_parallelism_is_explained(tmp_path):
    f = write_sweep(tmp_path / "ok.yaml", {"base": BASE})
    cores = store_cores = len(os.sched_getaffinity(0))
    result = runner.invoke(app, ["sweep", "run", str(f), "--out", str(tmp_path / "o"),
                                 "--workers", str(cores), "--threads", "2"])
    assert result.exit_code == 2
    assert f"{cores * 2} threads but this machine gives {store_cores} CPU cores" in result.stderr
    result = runner.invoke(app, ["sweep", "run", str(f), "--out", str(tmp_path / "o"),
                                 "--executor", "dask"])
    assert result.exit_code == 2 and "must be local or ray" in result.stderr


# --------------------------------------------------------------------------------------------
# the store: lock, stale files, status, tables


def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    with store.store_lock(tmp_path):
        holder = store.lock_holder(tmp_path)
        assert holder is not None and f"pid {os.getpid()}" in holder
        with pytest.raises(QgenError, match="another sweep is writing"):
            with store.store_lock(tmp_path, wait_s=0):
                pass
    assert store.lock_holder(tmp_path) is None
    with store.store_lock(tmp_path, wait_s=0):  # free again
        pass


def test_sweep_run_on_a_locked_store_fails_clearly(tmp_path):
    f = write_sweep(tmp_path / "ok.yaml", {"base": BASE})
    out = tmp_path / "out"
    # flock locks belong to open file descriptions, so a second open in this process
    # conflicts just as another process would.
    with store.store_lock(out):
        result = runner.invoke(app, ["sweep", "run", str(f), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert "another sweep is writing to this store" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr
    assert not (out / RunSpec.from_dict(BASE).run_id).exists()


def test_remove_stale_keeps_runs_and_the_lock(tmp_path):
    for name in (".abc.tmp-x1", ".abc.old-123", "abcdef0123456789"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    (tmp_path / ".sweep.json.k2j3.tmp").write_text("{")
    (tmp_path / store.LOCK_FILE).write_text("")
    removed = store.remove_stale(tmp_path)
    assert sorted(removed) == [".abc.old-123", ".abc.tmp-x1", ".sweep.json.k2j3.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [store.LOCK_FILE, "abcdef0123456789"]


def test_one_module_says_what_a_complete_run_is(tmp_path):
    # qgen.store owns the run directory; nothing else keeps a copy of its file list
    assert store.RUN_FILES == ("spec.json", "result.json", "model.safetensors",
                               "init.safetensors")
    from qgen.train import run

    assert not hasattr(run, "RUN_FILES") and not hasattr(run, "is_complete")


def test_status_of_a_store_without_manifest_and_errors(tmp_path):
    spec = RunSpec.from_dict(BASE)
    store.write_error(tmp_path, spec, {"error_type": "X", "message": "boom", "traceback": ""})
    st = status.store_status(tmp_path)
    assert st.planned is None and st.pending is None and st.failed == 1
    assert st.failed_ids == [spec.run_id] and st.running is None
    result = runner.invoke(app, ["sweep", "status", str(tmp_path)])
    assert result.exit_code == 0 and "pending runs are unknown" in result.output
    result = runner.invoke(app, ["sweep", "status", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such run store" in result.stderr


def test_collect_of_failed_only_store_and_table_formats(tmp_path):
    spec = RunSpec.from_dict({**BASE, "quant": {"w_bits": 4, "a_bits": "fp"}})
    store.write_error(tmp_path, spec, {"error_type": "X", "message": "boom", "traceback": "t"})
    df = collect(tmp_path)
    assert list(df["status"]) == ["failed"] and list(df["error"]) == ["boom"]
    assert df["hp.quant.w_bits"].tolist() == [4] and df["hp.quant.a_bits"].isna().all()
    assert df["hp.quant.label"].tolist() == ["w4afp"]
    for suffix in (".parquet", ".csv"):
        path = write_table(df, tmp_path / f"t{suffix}")
        assert path.is_file() and path.stat().st_size > 0
    with pytest.raises(QgenError, match="unknown table format '.xlsx'"):
        write_table(df, tmp_path / "t.xlsx")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert collect(empty).empty


def _handmade_run(out: Path, spec: RunSpec, result: dict) -> Path:
    """A run directory in the store's format, written by hand (weights are not read here)."""
    d = out / spec.run_id
    d.mkdir(parents=True)
    (d / "spec.json").write_text(json.dumps(spec.to_dict()))
    (d / "result.json").write_text(json.dumps(result))
    for name in ("model.safetensors", "init.safetensors"):
        (d / name).write_bytes(b"")
    return d


def test_collect_flattens_gen_measures_and_robustness(tmp_path):
    fp = RunSpec.from_dict(BASE)
    q4 = RunSpec.from_dict({**BASE, "quant": {"bits": 4}})
    metrics = {"train_loss": 0.01, "test_loss": 0.3, "loss_gap": 0.29, "train_accuracy": 1.0,
               "test_accuracy": 0.9, "acc_gap": 0.1, "train_n": 100, "test_n": 50}
    _handmade_run(tmp_path, fp, {
        "status": "converged", "epochs": 3.5, "steps": 70, "wall_time_s": 1.5,
        "metrics": metrics, "num_params": 1234, "device": "cpu", "threads": 1,
        "versions": {"torch": "2.x", "qgen": "0.1.0"}})
    # post-pass records: each carries its own table columns (qgen.store.postpass)
    run_a = tmp_path / fp.run_id
    (run_a / "measures.json").write_text(json.dumps({
        "postpass": "measures", "settings_key": {"sigma_tol": 0.1},
        "values": {"pacbayes_mag_flatness": 12.5, "path_norm": "inf"},
        "columns": {"measure.pacbayes_mag_flatness": 12.5, "measure.path_norm": "inf"}}))
    (run_a / "robustness.json").write_text(json.dumps({
        "postpass": "robustness", "name": "cifar-c",
        "columns": {"robust.gaussian_noise.3.test_accuracy": 0.7,
                    "robust.gaussian_noise.3.loss_gap": 0.5}}))
    _handmade_run(tmp_path, q4, {
        "status": "diverged", "epochs": 0.2, "steps": 4, "wall_time_s": 0.1,
        "metrics": {**metrics, "train_loss": "nan", "loss_gap": "nan"}})
    result = runner.invoke(app, ["collect", str(tmp_path), "-o", str(tmp_path / "r.parquet")])
    assert result.exit_code == 0, result.output
    assert "2 rows" in result.output
    import pandas as pd

    df = pd.read_parquet(tmp_path / "r.parquet").set_index("run_id")
    a, b = df.loc[fp.run_id], df.loc[q4.run_id]
    assert a["status"] == "converged" and b["status"] == "diverged"
    assert a["gen.loss_gap"] == 0.29 and a["gen.epochs"] == 3.5 and a["gen.steps"] == 70
    assert a["measure.pacbayes_mag_flatness"] == 12.5 and a["measure.path_norm"] == float("inf")
    assert "measure.sigma_tol" not in df.columns  # settings are not measures
    assert a["robust.gaussian_noise.3.test_accuracy"] == 0.7
    assert pd.isna(b["measure.pacbayes_mag_flatness"])
    assert pd.isna(b["gen.train_loss"]) and b["gen.test_loss"] == 0.3
    assert pd.isna(a["hp.quant.w_bits"]) and a["hp.quant.label"] == "fp"
    assert b["hp.quant.w_bits"] == 4 and b["hp.quant.label"] == "w4a4"
    assert a["hp.model.depth"] == 1 and a["hp.data.name"] == "digits"
    assert str(df["hp.quant.w_bits"].dtype) == "Int64" and df["hp.train.lr"].dtype == "float64"
    assert a["meta.num_params"] == 1234
    csv = runner.invoke(app, ["collect", str(tmp_path), "-o", str(tmp_path / "r.csv")])
    assert csv.exit_code == 0 and len(pd.read_csv(tmp_path / "r.csv")) == 2
    bad = runner.invoke(app, ["collect", str(tmp_path), "-o", str(tmp_path / "r.json")])
    assert bad.exit_code == 2 and "must end in .parquet or .csv" in bad.stderr
