"""Sweeps with real training in real processes (scikit-learn digits, a tiny NiN, ~1 s a run):
kill -9 and resume, failing and diverging runs, a crashed worker, status and collect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from qgen import store
from qgen.config import Runtime
from qgen.io import read_json
from qgen.results import collect
from qgen.store import RunDir
from qgen.sweep import status
from qgen.sweep.executors import LocalExecutor
from qgen.sweep.plan import expand, load_sweep, parse_sweep
from qgen.sweep.runner import run_sweep

pytest.importorskip("sklearn")  # the digits dataset

TINY = {"data": {"name": "digits", "train_subset": 300},
        "model": {"name": "nin", "depth": 1, "width": 1},
        "train": {"max_epochs": 1, "batch_size": 50, "lr": 0.05}}
CLI = [sys.executable, "-m", "qgen.cli"]


def write_sweep(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def assert_store_clean(out: Path, planned: list[str]) -> None:
    """Every planned run complete, nothing else: no temp dirs, no partial files."""
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if ".tmp" in n or ".old-" in n], names
    for rid in planned:
        assert _complete(out / rid), rid
        assert not (out / rid / store.ERROR_FILE).exists()
        assert sorted(p.name for p in (out / rid).iterdir()) == sorted(store.RUN_FILES)


def test_kill_minus_9_mid_sweep_then_resume_finishes_every_run_once(tmp_path):
    f = write_sweep(tmp_path / "s.yaml", {"name": "killme", "base": TINY,
                                          "axes": {"train.lr": [0.02, 0.05, 0.1]},
                                          "seeds": [0, 1]})
    planned = expand(load_sweep(f)).run_ids
    out = tmp_path / "out"
    cmd = CLI + ["sweep", "run", str(f), "--out", str(out), "--threads", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        done: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            done = [r for r in planned if _complete(out / r)]
            if done:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        live = status.store_status(out)  # while it runs: the lock says so, and an ETA
        workers = _spawned_children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 1 <= len(done) < len(planned)
    assert live.running is not None and f"pid {proc.pid}" in live.running
    assert live.eta_s is not None and live.eta_s > 0 and live.planned == len(planned)
    # the kernel released the lock with the process, and its worker died with it
    assert store.lock_holder(out) is None
    assert len(workers) == 1
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers), "orphaned worker still running"
    st = status.store_status(out)
    assert st.running is None and st.pending == len(planned) - st.done and st.done >= 1

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert f"{len(planned)} planned: " in again.stdout and "0 failed" in again.stdout
    assert_store_clean(out, planned)
    df = collect(out)
    assert sorted(df["run_id"]) == sorted(planned)  # each planned run exactly once
    assert df["status"].isin(["converged", "max_epochs"]).all()
    assert df["gen.test_accuracy"].notna().all()
    st = status.store_status(out)
    assert (st.planned, st.done, st.pending, st.failed) == (6, 6, 0, 0)
    manifest = read_json(out / status.MANIFEST_FILE)
    assert manifest["run_ids"] == planned and manifest["workers"] == 1
    assert "finished_at" in manifest


def test_failing_and_diverging_runs_are_recorded_and_do_not_stop_the_sweep(tmp_path):
    # 5,000 training images do not exist in digits (1,437): those runs fail when data loads.
    # SGD at lr 10 with weight decay 1 multiplies BN scales by -9 a step: that run diverges.
    base = {**TINY, "train": {**TINY["train"], "weight_decay": 1.0, "batch_size": 10}}
    f = write_sweep(tmp_path / "m.yaml", {"name": "mixed", "base": base,
                                          "axes": {"data.train_subset": [300, 5000],
                                                   "train.lr": [0.05, 10.0]}})
    plan = expand(load_sweep(f))
    by = {(s.data.train_subset, s.train.lr): s.run_id for s in plan.specs}
    out = tmp_path / "out"
    proc = subprocess.run(CLI + ["sweep", "run", str(f), "--out", str(out), "--threads", "1",
                                 "--quiet"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr  # finished, but with failed runs
    assert "2 failed" in proc.stdout and "is larger than the digits train set" in proc.stdout

    diverged = read_json(out / by[(300, 10.0)] / "result.json")
    assert diverged["status"] == "diverged"
    assert _complete(out / by[(300, 10.0)])
    assert read_json(out / by[(300, 0.05)] / "result.json")["status"] in ("converged",
                                                                           "max_epochs")
    for key in ((5000, 0.05), (5000, 10.0)):
        run_dir = out / by[key]
        assert not _complete(run_dir)
        err = read_json(run_dir / "error.json")
        assert err["error_type"] == "qgen.errors.QgenError" and err["user_error"] is True
        assert "train_subset: 5000 is larger" in err["message"]
        assert "Traceback (most recent call last)" in err["traceback"]
        assert "load_data" in err["traceback"]
        assert err["spec"]["data"]["train_subset"] == 5000 and err["run_id"] == by[key]
        assert err["versions"]["torch"] and err["time"]

    df = collect(out).set_index("run_id")
    assert df.loc[by[(300, 10.0)], "status"] == "diverged"
    assert df.loc[by[(5000, 0.05)], "status"] == "failed"
    assert "is larger" in df.loc[by[(5000, 10.0)], "error"]
    st = status.store_status(out)
    assert (st.done, st.diverged, st.failed, st.pending) == (2, 1, 2, 0)

    # Rerunning skips the failed runs (and reports them) unless --retry-failed.
    rt = Runtime(out_dir=out, threads=1)
    ex = LocalExecutor(workers=1, threads=1, in_process=True)
    report = run_sweep(plan, rt, ex)
    assert report.ran == 0 and report.already_done == 2
    assert sorted(report.skipped_failed) == sorted([by[(5000, 0.05)], by[(5000, 10.0)]])
    before = read_json(out / by[(5000, 0.05)] / "error.json")["time"]
    time.sleep(1.1)  # error records carry a time stamp in seconds
    report = run_sweep(plan, rt, ex, retry_failed=True)
    assert report.ran == 2 and len(report.failed) == 2 and report.already_done == 2
    assert read_json(out / by[(5000, 0.05)] / "error.json")["time"] != before


def _spawned_children(parent: int | None = None) -> list[int]:
    """Live pids of ``parent``'s multiprocessing 'spawn' children (default: this process's),
    leaving out the resource tracker and zombies."""
    parent = os.getpid() if parent is None else parent
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and fields[0] != "Z" and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_worker_killed_mid_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    plan = expand(parse_sweep({"base": TINY, "seeds": [0, 1]}))
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_first_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = _spawned_children()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.01)

    t = threading.Thread(target=kill_first_worker)
    t.start()
    report = run_sweep(plan, Runtime(out_dir=out), LocalExecutor(workers=1, threads=1,
                                                                  max_retries=0))
    t.join()
    assert killed
    # the worker held the first run from its start; no retries allowed, so it is failed
    first, second = plan.run_ids
    assert [rid for rid, _ in report.failed] == [first]
    err = json.loads((out / first / "error.json").read_text())
    assert err["error_type"] == "WorkerCrashed" and "killed by signal 9" in err["message"]
    assert _complete(out / second)
    # retried, the same sweep now completes
    report = run_sweep(plan, Runtime(out_dir=out),
                       LocalExecutor(workers=1, threads=1, in_process=True), retry_failed=True)
    assert report.complete and report.ran == 1
    assert_store_clean(out, plan.run_ids)


def _complete(path) -> bool:
    return RunDir(path).is_complete
