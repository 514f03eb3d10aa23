"""The run store has one owner: RunDir reads a run once, old stores still load, measure and
collect, reading a store does not import torch, and post-passes follow one contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qgen.errors import QgenError
from qgen.store import PostPass, Resources, RunDir, run_dirs, run_postpass

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1"
COLLECTED_V1 = Path(__file__).parent / "fixtures" / "store_v1_collected.csv"


@pytest.fixture
def old_store(tmp_path):
    """A copy of a store written by qgen before spec version 2 (two runs and a failure)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "store"))


def test_rundir_states_and_reading_once(old_store, tmp_path):
    runs = {r.run_id: r for r in run_dirs(old_store)}
    assert sorted(r.state for r in runs.values()) == ["complete", "complete", "failed"]
    done = next(r for r in runs.values() if r.state == "complete")
    assert done.spec.quant.step_positivity == "clamp"  # version 1: the old step rule
    assert done.spec.train.bn_recalibration == "off"
    assert done.result is done.result  # read once
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "spec.json").write_text("{}")
    half = RunDir(tmp_path / "half")
    assert half.state == "partial" and "result.json is missing" in half.why_incomplete()
    with pytest.raises(QgenError, match="not a complete run directory"):
        half.require_complete()
    assert RunDir(tmp_path / "nope").state == "missing"
    with pytest.raises(QgenError, match="no such run store"):
        run_dirs(tmp_path / "nope")


def _plain(value):
    """A cell as a comparable plain value (CSV and the frame spell types differently)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, (bool,)) or str(value) in ("True", "False"):
        return str(value) == "True"
    try:
        return pytest.approx(float(value), rel=1e-12)
    except (TypeError, ValueError):
        return str(value)


def test_an_old_store_collects_as_before(old_store):
    from qgen.results import collect

    new = collect(old_store).set_index("run_id").sort_index()
    old = pd.read_csv(COLLECTED_V1).set_index("run_id").sort_index()
    assert list(new.index) == list(old.index)
    # every column the old code wrote is there with the same values; the new columns are
    # the spec fields added since (step rules, BatchNorm re-estimation, model options,
    # mixed precision, the compiled path)
    assert set(old.columns) <= set(new.columns)
    added = set(new.columns) - set(old.columns)
    assert added == {"hp.quant.step_positivity", "hp.quant.step_lr_scale",
                     "hp.quant.step_momentum", "hp.quant.step_max_rel_change",
                     "hp.train.bn_recalibration", "hp.model.options",
                     "hp.train.precision", "hp.train.compile"}
    for col in old.columns:
        assert [_plain(v) for v in old[col]] == [_plain(v) for v in new[col]], col
    assert (new.loc[new["status"] != "failed", "measure.norm.l2"] > 0).all()


def test_an_old_store_loads_and_measures(old_store):
    from qgen.measures import MeasureSpec
    from qgen.measures.postpass import measure_run
    from qgen.train import evaluate, load_run_data, load_run_model

    run = next(r for r in run_dirs(old_store) if r.is_complete)
    model = load_run_model(run)
    splits = load_run_data(run, Resources())
    m = evaluate(model, splits.test)
    assert m.loss == pytest.approx(run.result["metrics"]["test_loss"], abs=1e-6)
    spec = MeasureSpec(names=("norm.l2", "norm.params"), eval_subset=100)
    with pytest.raises(QgenError, match="other settings"):  # stored with other settings
        measure_run(run.path, spec)
    rec = measure_run(run.path, spec, force=True)
    assert rec["values"]["norm.l2"] > 0 and rec["columns"]["measure.norm.l2"] > 0


def test_collecting_imports_no_torch(old_store):
    code = ("import sys; from qgen.results import collect; df = collect(sys.argv[1]); "
            "assert len(df) == 3; assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(old_store)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_qgen_collect_command_imports_no_torch(old_store, tmp_path):
    out = tmp_path / "t.csv"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "qgen", "collect",
                           str(old_store), "-o", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    assert "pandas" in imported and "torch" not in imported
    assert len(pd.read_csv(out)) == 3


def test_postpass_contract(old_store):
    """A post-pass supplies only its compute function: the framework refuses incomplete and
    diverged runs, stores the record with its columns, reuses it, and refuses other
    settings unless forced."""
    calls = []

    def compute(run, settings, previous, resources):
        calls.append(run.run_id)
        return {"values": {"double": 2 * settings["x"]}, "note": "hi"}

    toy = PostPass(name="toy", prefix="toy", settings_key=lambda s: dict(s), compute=compute,
                   columns=lambda rec: {"meta.toy.note": rec["note"]})
    run = next(r for r in run_dirs(old_store) if r.is_complete)
    rec = run_postpass(toy, run, {"x": 3})
    assert rec["values"] == {"double": 6} and rec["columns"] == {
        "toy.double": 6, "meta.toy.note": "hi"}
    assert (run.path / "toy.json").is_file()
    again = run_postpass(toy, RunDir(run.path), {"x": 3})
    assert again["reused"] and calls == [run.run_id]
    with pytest.raises(QgenError, match="other settings"):
        run_postpass(toy, RunDir(run.path), {"x": 4})
    assert run_postpass(toy, RunDir(run.path), {"x": 4}, force=True)["values"]["double"] == 8
    failed = next(r for r in run_dirs(old_store) if r.state == "failed")
    with pytest.raises(QgenError, match="not a complete run directory"):
        run_postpass(toy, failed, {"x": 1})
    from qgen.results import collect

    df = collect(old_store).set_index("run_id")
    assert df.loc[run.run_id, "toy.double"] == 8 and df.loc[run.run_id, "meta.toy.note"] == "hi"
