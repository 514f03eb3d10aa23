"""`qgen study` end to end on a tiny real study (digits), its variants and its resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qgen.errors import QgenError
from qgen.study import apply_variant, run_study
from qgen.sweep.plan import load_sweep

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

SWEEP = {
    "name": "tiny",
    "base": {"data": {"name": "digits", "train_subset": 200, "test_subset": 200},
             "model": {"name": "nin", "depth": 1, "width": 1},
             "train": {"batch_size": 32, "max_epochs": 3}},
    "axes": {"quant.bits": ["fp", 4], "train.lr": [0.05, 0.1]},
    "seeds": [0],
    "study": {
        "measures": {"names": ["pacbayes.flatness"], "eval_subset": 100,
                     "mc_eval_examples": None, "mc_stderr": 0.05, "mc_draws": 20,
                     "bisect_rel_width": 0.2},
        "robustness": {"corruptions": ["gaussian_noise"], "severities": [1, 5],
                       "test_examples": 50},
        "theory": {"eval_subset": 100, "test_subset": 50, "hutchinson_probes": 2,
                   "uniform_draws": 2, "bound_draws": 2},
        "report": {"n_boot": 50},
        "fast": {"axes": {"train.lr": [0.05]}},
        "full": {"robustness": {"corruptions": ["gaussian_noise", "contrast"]}},
    },
}


def _write(tmp_path: Path, sweep: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(sweep))  # JSON is YAML
    return path


def test_variants_replace_axes_and_merge_settings(tmp_path: Path) -> None:
    sw = load_sweep(_write(tmp_path, SWEEP))
    fast = apply_variant(sw, "fast")
    assert fast.axes["train.lr"] == [0.05] and fast.axes["quant.bits"] == ["fp", 4]
    assert fast.name == "tiny-fast" and "fast" not in fast.study
    full = apply_variant(sw, "full")
    assert full.study["robustness"]["corruptions"] == ["gaussian_noise", "contrast"]
    assert full.study["robustness"]["severities"] == [1, 5]  # merged, not replaced
    both = apply_variant(apply_variant(sw, "fast"), "full")
    assert both.name == "tiny-fast-full" and both.axes["train.lr"] == [0.05]


@pytest.mark.parametrize(("study", "message"), [
    ({"fast": {"colour": 1}}, "unknown key 'colour'"),
    ({"fast": {"axes": {"model.depth": [2]}}}, "not an axis"),
    ({}, "needs a study.fast section"),
])
def test_variant_errors(tmp_path: Path, study: dict, message: str) -> None:
    sw = load_sweep(_write(tmp_path, {**SWEEP, "study": study}))
    with pytest.raises(QgenError, match=message):
        apply_variant(sw, "fast")


def test_study_runs_every_stage_and_resumes(tmp_path: Path) -> None:
    sweep = _write(tmp_path, SWEEP)
    out = tmp_path / "study"
    res = run_study(sweep, out, fast=True, full=True, workers=1, threads=1)
    record = json.loads((out / "study.json").read_text())
    assert set(record["timings_s"]) == set(record["stages"])
    assert record["stages"] == ["train", "measures", "robustness", "theory",
                                          "collect", "analysis", "report"]
    assert record["fast"] and record["full"] and len(record["runs"]) == 2
    assert record["postpasses"]["robustness"]["corruptions"] == ["gaussian_noise", "contrast"]
    df = res.frame
    assert len(df) == 2 and set(df["hp.quant.label"]) == {"fp", "w4a4"}
    assert df["measure.pacbayes.flatness"].notna().all()
    assert any(c.startswith("robust.") and "contrast" in c for c in df.columns)
    assert any(c.startswith("theory.") for c in df.columns)
    html = (out / "report" / "report.html").read_text()
    assert "tiny-fast-full" in html
    assert (out / "results.parquet").is_file() and (out / "results.csv").is_file()
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*.json")}

    # resumed: every run and every post-pass record is reused, nothing is rewritten
    res2 = run_study(sweep, out, fast=True, full=True, workers=1, threads=1)
    assert res2.sweep_report.ran == 0 and res2.sweep_report.already_done == 2
    assert "2 reused" in res2.summaries["measures"]
    after = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*.json")}
    assert after == before
