"""Resuming a killed run: the state saved at epoch boundaries continues training bit for bit.

Every test compares against a run trained without interruption in another store: the final
and initial weights must be byte-identical and result.json identical except for the wall
time and the resume marker. The model has dropout, so the global RNG state matters, and is
quantized (LSQ flags, step tracker, the steps' own optimizer group).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qgen.config import RunSpec, Runtime
from qgen.store import run_dirs
from qgen.store.rundir import resume_file
from qgen.train import execute_run

#: result.json entries that may differ between a resumed and an uninterrupted run
VOLATILE = ("wall_time_s", "resumed_from_epoch")


def tree(optimizer: str = "sgd", **train) -> dict:
    """A 4-bit NiN with dropout on 200 Fashion-MNIST images, four full epochs (the target is
    out of reach, so the stop rule never ends a run early)."""
    lr = 0.05 if optimizer == "sgd" else 0.003
    return {"data": {"name": "fashion-mnist", "train_subset": 200, "test_subset": 100},
            "model": {"name": "nin", "depth": 2, "width": 1, "dropout": 0.2},
            "quant": {"bits": 4},
            "train": {"optimizer": optimizer, "lr": lr, "batch_size": 32, "max_epochs": 4,
                      "target_ce": 1e-6, **train}}


@pytest.fixture(scope="module")
def splits():
    from qgen import data

    if not data.dataset_available("fashion-mnist")[0]:
        pytest.skip("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)")
    return data.load_data(RunSpec.from_dict(tree()).data)


@pytest.fixture(scope="module")
def reference(splits, tmp_path_factory):
    """The uninterrupted run of a spec (trained once per module), as its run directory."""
    store = tmp_path_factory.mktemp("reference")
    done: dict[str, Path] = {}

    def get(spec: RunSpec) -> Path:
        if spec.run_id not in done:
            execute_run(spec, Runtime(out_dir=store, threads=1), splits=splits)
            done[spec.run_id] = store / spec.run_id
        return done[spec.run_id]
    return get


def stop_after(epoch: int):
    """An ``on_epoch`` that interrupts training (as Ctrl-C would) after ``epoch`` epochs."""
    def on_epoch(record: dict) -> None:
        if record["epoch"] == epoch:
            raise KeyboardInterrupt
    return on_epoch


def assert_same_run(resumed: Path, reference: Path) -> dict:
    """Byte-identical weights and the same result.json but for VOLATILE; returns the
    resumed run's result."""
    for name in ("model.safetensors", "init.safetensors"):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    a = json.loads((resumed / "result.json").read_text())
    b = json.loads((reference / "result.json").read_text())
    assert {k: v for k, v in a.items() if k not in VOLATILE} == \
        {k: v for k, v in b.items() if k not in VOLATILE}
    assert b["resumed_from_epoch"] is None
    return a


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_interrupted_run_resumes_exactly(tmp_path, splits, reference, optimizer):
    spec = RunSpec.from_dict(tree(optimizer))
    runtime = Runtime(out_dir=tmp_path, threads=1)
    with pytest.raises(KeyboardInterrupt):
        execute_run(spec, runtime, splits=splits, on_epoch=stop_after(2))
    state = resume_file(tmp_path, spec.run_id)
    assert state.is_file()
    assert run_dirs(tmp_path) == []  # the hidden folder is not a run

    epochs = []
    result = execute_run(spec, runtime, splits=splits, on_epoch=lambda r: epochs.append(r["epoch"]))
    assert epochs == [3, 4]  # only the remaining epochs ran
    assert result["resumed_from_epoch"] == 2
    stored = assert_same_run(tmp_path / spec.run_id, reference(spec))
    assert stored["resumed_from_epoch"] == 2 and len(stored["history"]) == 4
    # the state is gone with its folder once the run is published
    assert not state.exists() and not state.parent.exists()
    assert [p.name for p in tmp_path.iterdir()] == [spec.run_id]


def test_bf16_run_resumes_exactly(tmp_path, splits, reference):
    spec = RunSpec.from_dict(tree(precision="bf16"))
    runtime = Runtime(out_dir=tmp_path, threads=1)
    with pytest.raises(KeyboardInterrupt):
        execute_run(spec, runtime, splits=splits, on_epoch=stop_after(1))
    result = execute_run(spec, runtime, splits=splits)
    assert result["resumed_from_epoch"] == 1
    assert_same_run(tmp_path / spec.run_id, reference(spec))


CHILD = """
import json, sys
from qgen.config import RunSpec, Runtime
from qgen.train import execute_run

def on_epoch(record):
    if record["epoch"] == 2:  # the state of epoch 2 is saved before on_epoch runs
        print("saved", flush=True)
        sys.stdin.read()  # wait here to be killed

spec = RunSpec.from_dict(json.loads(sys.argv[1]))
execute_run(spec, Runtime(out_dir=sys.argv[2], threads=1), on_epoch=on_epoch)
"""


def test_sigkilled_process_resumes_exactly(tmp_path, splits, reference):
    spec = RunSpec.from_dict(tree())
    err = tmp_path / "child.err"
    store = tmp_path / "store"
    with open(err, "w") as err_fh:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(spec.to_dict()), str(store)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err_fh, text=True)
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line == "saved\n", err.read_text()
        assert resume_file(store, spec.run_id).is_file()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        child.stdin.close()  # type: ignore[union-attr]
    assert child.returncode == -signal.SIGKILL
    assert not (store / spec.run_id).exists()

    result = execute_run(spec, Runtime(out_dir=store, threads=1), splits=splits)
    assert result["resumed_from_epoch"] == 2
    assert_same_run(store / spec.run_id, reference(spec))
    assert not resume_file(store, spec.run_id).exists()


def test_damaged_resume_file_starts_over(tmp_path, splits, reference, capfd):
    spec = RunSpec.from_dict(tree())
    path = resume_file(tmp_path, spec.run_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    result = execute_run(spec, Runtime(out_dir=tmp_path, threads=1), splits=splits)
    warning = capfd.readouterr().err.strip()
    assert warning.startswith("warning: ") and "\n" not in warning
    assert "unusable resume state" in warning and "from scratch" in warning
    assert result["resumed_from_epoch"] is None
    assert_same_run(tmp_path / spec.run_id, reference(spec))
    assert not path.exists()


def test_resume_state_of_another_run_is_not_used(tmp_path, splits, reference, capfd):
    """A state copied from another run (another id), or saved under this run's id for another
    model (other shapes), is reported and discarded; the run trains from the start."""
    spec = RunSpec.from_dict(tree())
    other = RunSpec.from_dict({**tree(), "model": {**tree()["model"], "width": 2}})
    with pytest.raises(KeyboardInterrupt):
        execute_run(other, Runtime(out_dir=tmp_path, threads=1), splits=splits,
                    on_epoch=stop_after(1))
    capfd.readouterr()
    theirs, ours = resume_file(tmp_path, other.run_id), resume_file(tmp_path, spec.run_id)
    ours.write_bytes(theirs.read_bytes())
    with pytest.raises(KeyboardInterrupt):
        execute_run(spec, Runtime(out_dir=tmp_path, threads=1), splits=splits,
                    on_epoch=stop_after(1))
    assert "not '" + spec.run_id in capfd.readouterr().err  # another run's id: refused
    # the same state relabelled with this run's id: the shapes give it away
    from qgen.checkpoint import load_tensors, read_metadata, save_tensors

    meta = read_metadata(theirs)
    save_tensors(ours, load_tensors(theirs), {**meta, "run_id": spec.run_id})
    result = execute_run(spec, Runtime(out_dir=tmp_path, threads=1), splits=splits)
    warning = capfd.readouterr().err.strip()
    assert "does not fit this run" in warning and "\n" not in warning, warning
    assert result["resumed_from_epoch"] is None
    assert_same_run(tmp_path / spec.run_id, reference(spec))
    assert theirs.is_file()  # the other run's state is left alone


def test_force_ignores_and_resume_off_skips_the_state(tmp_path, splits, reference):
    spec = RunSpec.from_dict(tree())
    path = resume_file(tmp_path, spec.run_id)
    with pytest.raises(KeyboardInterrupt):
        execute_run(spec, Runtime(out_dir=tmp_path, threads=1), splits=splits,
                    on_epoch=stop_after(3))
    assert path.is_file()
    seen = []
    result = execute_run(spec, Runtime(out_dir=tmp_path, threads=1, force=True), splits=splits,
                         on_epoch=lambda r: seen.append(r["epoch"]))
    assert seen == [1, 2, 3, 4] and result["resumed_from_epoch"] is None
    assert_same_run(tmp_path / spec.run_id, reference(spec))
    assert not path.exists()

    # resume=False: nothing is saved while training
    store = tmp_path / "off"
    with pytest.raises(KeyboardInterrupt):
        execute_run(spec, Runtime(out_dir=store, threads=1, resume=False), splits=splits,
                    on_epoch=stop_after(2))
    assert not (store / ".resume").exists()


def test_store_listing_ignores_the_resume_folder(tmp_path, splits):
    from qgen.results import collect
    from qgen.store import remove_stale
    from qgen.sweep.status import store_status

    spec = RunSpec.from_dict(tree())
    with pytest.raises(KeyboardInterrupt):
        execute_run(spec, Runtime(out_dir=tmp_path, threads=1), splits=splits,
                    on_epoch=stop_after(1))
    st = store_status(tmp_path)
    assert (st.done, st.failed, st.pending) == (0, 0, None)
    assert len(collect(tmp_path)) == 0
    remove_stale(tmp_path)  # what a sweep does under its lock: the state survives it
    assert resume_file(tmp_path, spec.run_id).is_file()


def test_step_tracker_state_round_trip():
    from qgen.config import QuantSpec
    from qgen.errors import QgenError
    from qgen.quant import quantize_model
    from qgen.quant.steps import StepTracker

    model = quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 3)),
                           QuantSpec(w_bits=4, first_last="same"))
    tracker = StepTracker(model)
    assert tracker.state_dict() == {"init": None, "max_rel": None, "updates": 0, "clipped": 0}
    tracker.before_update()
    with torch.no_grad():
        model[0].w_quant.step.mul_(1.25)
    tracker.after_update(torch.optim.SGD(model.parameters(), lr=0.1))
    state = tracker.state_dict()
    again = StepTracker(model)
    again.load_state_dict(state)
    assert again.report() == tracker.report() and again.summary() == tracker.summary()
    with pytest.raises(QgenError, match="elements"):
        again.load_state_dict({**state, "init": torch.ones(5)})
