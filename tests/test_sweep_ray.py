"""The Ray executor on a local 2-CPU cluster (one per module): runs, a failing run, and the
same numbers as the local executor run by run."""

from __future__ import annotations

import hashlib
import sys

import pytest
import yaml
from typer.testing import CliRunner

from qgen.cli import app
from qgen.config import Runtime
from qgen.errors import QgenError
from qgen.io import read_json
from qgen.results import collect
from qgen.store import RunDir
from qgen.sweep.executors import LocalExecutor, RayExecutor, import_ray
from qgen.sweep.plan import expand, parse_sweep
from qgen.sweep.runner import run_sweep

pytest.importorskip("sklearn")  # the digits dataset

SWEEP = {
    "name": "ray-vs-local",
    "base": {"data": {"name": "digits", "train_subset": 300},
             "model": {"name": "nin", "depth": 1, "width": 1},
             "train": {"max_epochs": 2, "batch_size": 50, "lr": 0.05}},
    # 4 runs that train, and 1 whose subset is larger than the dataset (fails at load)
    "axes": {"data.train_subset": [300, 400, 5000], "train.lr": [0.05, 0.1]},
}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ray_matches_local_run_by_run(ray_cluster, tmp_path):
    plan = expand(parse_sweep(SWEEP))
    assert len(plan.specs) == 6
    failing = {s.run_id for s in plan.specs if s.data.train_subset == 5000}
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    # threads=1 in both: CPU training is deterministic for a given spec and thread count
    ray_report = run_sweep(plan, Runtime(out_dir=ray_out),
                           RayExecutor(workers=2, threads=1, quiet=True))
    local_report = run_sweep(plan, Runtime(out_dir=local_out), LocalExecutor(workers=1,
                                                                             threads=1))
    for report in (ray_report, local_report):
        assert report.ran == 6
        assert {rid for rid, _ in report.failed} == failing
        assert all("is larger than the digits train set" in m for _, m in report.failed)
    assert ray_cluster.is_initialized()  # the executor left the module's cluster running

    a = collect(ray_out).set_index("run_id").sort_index()
    b = collect(local_out).set_index("run_id").sort_index()
    assert list(a.index) == sorted(plan.run_ids) == list(b.index)
    assert (a["status"] == b["status"]).all()
    assert (a.loc[sorted(failing), "status"] == "failed").all()
    gen = [c for c in a.columns if c.startswith("gen.") and c != "gen.wall_time_s"]
    assert "gen.test_loss" in gen and "gen.loss_gap" in gen
    ok = a.index.difference(sorted(failing))
    assert len(ok) == 4
    for col in gen:
        assert a.loc[ok, col].tolist() == b.loc[ok, col].tolist(), col
    for rid in ok:
        assert _complete(ray_out / rid)
        assert _sha(ray_out / rid / "model.safetensors") == _sha(
            local_out / rid / "model.safetensors")
    for rid in failing:
        err = read_json(ray_out / rid / "error.json")
        assert err["error_type"] == "qgen.errors.QgenError"
        assert "Traceback" in err["traceback"] and err["spec"]["data"]["train_subset"] == 5000
    # nothing half-written: only run directories, sweep.json and the lock
    assert not [p.name for p in ray_out.iterdir() if ".tmp" in p.name]


def test_missing_ray_is_a_clear_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like
    with pytest.raises(QgenError, match=r"pip install 'qgen\[ray\]'"):
        import_ray()
    with pytest.raises(QgenError, match="needs Ray"):
        RayExecutor()
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(SWEEP))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", "run", str(f), "--out", str(out),
                                      "--executor", "ray", "--quiet"])
    assert result.exit_code == 2 and "pip install 'qgen[ray]'" in result.stderr
    assert not out.exists()  # refused before touching the store


def _complete(path) -> bool:
    return RunDir(path).is_complete
