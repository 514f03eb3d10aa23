"""Measures of stored runs: measures.json, resuming, settings guard, CLI and collect."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qgen.cli import app
from qgen.config import RunSpec, Runtime
from qgen.errors import QgenError
from qgen.measures import MeasureSpec
from qgen.measures.postpass import measure_run, read_measures
from qgen.results import collect
from qgen.train import execute_run

CHEAP = ["norm.l2", "norm.l2_dist", "pacbayes.flatness"]


@pytest.fixture
def one_run(tmp_path, tiny_tree):
    tree = dict(tiny_tree, quant={"bits": 4})
    spec = RunSpec.from_dict(tree)
    execute_run(spec, Runtime(out_dir=tmp_path / "runs", threads=1))
    return tmp_path / "runs" / spec.run_id


def _spec(**kw):
    return MeasureSpec.preset("default", names=CHEAP, eval_subset=200, mc_draws=3,
                              bisect_steps=6, **kw)


def test_measures_are_stored_and_resumed(one_run):
    rec = measure_run(one_run, _spec())
    assert set(CHEAP) <= set(rec["values"])
    stored = read_measures(one_run)
    assert stored["values"] == rec["values"]
    assert stored["measure_spec"]["preset_name"] == "default"
    assert stored["settings"]["eval_subset_size"] == 200
    # asking again computes nothing new and leaves the file as it was
    before = (one_run / "measures.json").read_bytes()
    again = measure_run(one_run, _spec())
    assert again["values"] == rec["values"] and again["reused"] is True
    assert (one_run / "measures.json").read_bytes() == before
    # the same seed gives the same numbers when recomputed from scratch
    fresh = measure_run(one_run, _spec(), force=True)
    assert fresh["values"] == rec["values"]


def test_other_settings_need_force(one_run):
    measure_run(one_run, _spec())
    with pytest.raises(QgenError, match="other settings"):
        measure_run(one_run, _spec(seed=1))
    rec = measure_run(one_run, _spec(seed=1), force=True)
    assert rec["measure_spec"]["seed"] == 1


def test_incomplete_run_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "spec.json").write_text("{}")
    with pytest.raises(QgenError, match="not a complete run directory"):
        measure_run(tmp_path / "half", _spec())


def test_cli_measure_and_collect(one_run):
    runner = CliRunner()
    res = runner.invoke(app, ["measure", str(one_run), "-m", ",".join(CHEAP), "--set",
                              "eval_subset=200", "--set", "mc_draws=3", "--set",
                              "bisect_steps=6", "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    values = json.loads((one_run / "measures.json").read_text())["values"]
    df = collect(one_run.parent)
    assert df.loc[0, "measure.pacbayes.flatness"] == pytest.approx(values["pacbayes.flatness"])
    assert df.loc[0, "meta.measure_preset"] == "default"
    stored = json.loads((one_run / "measures.json").read_text())["diagnostics"]
    assert df.loc[0, "meta.saturated.pacbayes"] == stored["search.pacbayes"]["saturated"]


def test_cli_measure_bad_input(one_run):
    runner = CliRunner()
    res = runner.invoke(app, ["measure", str(one_run), "--preset", "nope"])
    assert res.exit_code == 2 and "dziugaite2020" in res.output
    res = runner.invoke(app, ["measure", str(one_run), "--set", "mc_draws"])
    assert res.exit_code == 2 and "name=value" in res.output
    res = runner.invoke(app, ["measure", str(one_run), "--set", "mc_draws=-3"])
    assert res.exit_code == 2 and "mc_draws" in res.output


def test_sweep_measure_post_pass_is_resumable(one_run):
    store = one_run.parent
    args = ["sweep", "measure", str(store), "-m", ",".join(CHEAP), "--set", "eval_subset=200",
            "--set", "mc_draws=3", "--set", "bisect_steps=6", "--threads", "1", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "1 runs measured" in res.output
    first = (one_run / "measures.json").read_bytes()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and (one_run / "measures.json").read_bytes() == first
    res = CliRunner().invoke(app, ["sweep", "measure", str(store / "nope")])
    assert res.exit_code == 2 and "no such run store" in res.output
