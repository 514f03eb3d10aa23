"""Every bad input, as a hostile new user would type it, ends the same way (issue 14): exit
code 2, exactly one line on stderr that names what is wrong, no traceback, nothing on stdout,
and nothing created or changed on disk. Ctrl-C ends with exit code 130 and one line.

Each case runs the real command line in a process of its own, in a folder that is snapshotted
before and after (sizes, mtimes and hashes of every file, and every directory). Starting
Python and importing torch for each of 150 cases would take minutes on one core, so the cases
run in processes forked from one that has already imported qgen's command line and what its
commands import (:data:`DRIVER`): each case still gets fresh state, its own stdout/stderr
files and a real exit status. A sample of cases is also run as ``python -m qgen`` and must
end the same way, and Ctrl-C is sent to a real ``qgen train``.

The files the cases read are built once per module: two tiny trained runs (full precision
and 4-bit), damaged copies of them, config and sweep files, and datasets in their real
formats (Fashion-MNIST IDX, CIFAR-10's pickled python layout).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qgen.config import RunSpec, Runtime
from qgen.store import LOCK_FILE, store_lock, write_error

QGEN = [sys.executable, "-m", "qgen"]
HAVE_VISION = all(importlib.util.find_spec(m) for m in ("torchvision", "timm", "PIL"))
TINY = ["--dataset", "digits", "--train-subset", "100", "--model", "nin", "--depth", "1",
        "--width", "1", "--epochs", "1", "--threads", "1", "--quiet"]
TINY_TREE = {"data": {"name": "digits", "train_subset": 100},
             "model": {"name": "nin", "depth": 1, "width": 1},
             "train": {"lr": 0.05, "batch_size": 32, "max_epochs": 1, "seed": 0}}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "QGEN_DATA"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", COLUMNS="100")
    return env


# ---- the files the cases read --------------------------------------------------------------

class _Evil:
    """Pickles into a call of ``func(*args)`` on load: what a hostile CIFAR file would do."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _idx(arr_shape: tuple[int, ...], fill: int = 0) -> bytes:
    header = bytes([0, 0, 0x08, len(arr_shape)]) + b"".join(d.to_bytes(4, "big")
                                                            for d in arr_shape)
    n = 1
    for d in arr_shape:
        n *= d
    return header + bytes([fill]) * n


def _write_datasets(w: Path) -> None:
    (w / "data" / "empty").mkdir(parents=True)
    # Fashion-MNIST whose training images file is cut short
    fm = w / "data" / "fm_corrupt"
    fm.mkdir()
    files = {"train-images-idx3-ubyte.gz": _idx((4, 28, 28))[:-100],
             "train-labels-idx1-ubyte.gz": _idx((4,)),
             "t10k-images-idx3-ubyte.gz": _idx((2, 28, 28)),
             "t10k-labels-idx1-ubyte.gz": _idx((2,))}
    for name, raw in files.items():
        (fm / name).write_bytes(gzip.compress(raw, mtime=0))
    # CIFAR-10, python layout, one batch of which runs `touch <marker>` when unpickled
    import numpy as np

    cifar = w / "data" / "cifar_evil" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": [0, 1], b"data": np.zeros((2, 3072), dtype=np.uint8)}
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=2))
    (cifar / "data_batch_3").write_bytes(
        pickle.dumps(_Evil(os.system, f"touch {w / 'PWNED'}"), protocol=2))
    # image folders: one without class folders, one whose images are not images
    for split in ("train", "val"):
        (w / "data" / "folder_noclass" / split).mkdir(parents=True)
        for cls in ("cat", "dog"):
            bad = w / "data" / "folder_unreadable" / split / cls
            bad.mkdir(parents=True)
            (bad / "0.jpg").write_text("this is not a JPEG")
    # checkpoints: a safetensors file of another network, and a pickle that runs code
    from safetensors.numpy import save_file

    save_file({"conv.weight": np.zeros((2, 2), dtype=np.float32)},
              str(w / "data" / "other_net.safetensors"))
    (w / "data" / "evil.pt").write_bytes(
        pickle.dumps(_Evil(os.system, f"touch {w / 'PWNED'}"), protocol=2))


def _write_configs(w: Path) -> None:
    c = w / "cfg"
    c.mkdir()
    (c / "binary.yaml").write_bytes(bytes(range(256)))
    (c / "latin1.yaml").write_bytes("data: {name: caf\xe9}\n".encode("latin-1"))
    (c / "nul.yaml").write_bytes(b"data: {name: digits}\n\x00\n")
    (c / "model_list.yaml").write_text("model: [nin]\n")
    (c / "python_tag.yaml").write_text(f"!!python/object/apply:os.system [touch {w}/PWNED]\n")
    (c / "top_list.yaml").write_text("- data\n- model\n")
    (c / "empty.yaml").write_text("")
    (c / "unknown_field.yaml").write_text("train: {lr: 0.1, colour: red}\n")
    (c / "syntax.yaml").write_text("train: {lr: [\n")
    (c / "mixed_keys.yaml").write_text("data: {1: 2, name: digits}\n")
    (c / "spec_version.yaml").write_text("spec_version: 9\ndata: {name: digits}\n")
    t = w / "tables"
    t.mkdir()
    (t / "garbage.parquet").write_bytes(b"garbage")
    (t / "empty.csv").write_text("")
    (t / "columns.csv").write_text("a,b\n1,2\n")


def _write_sweeps(w: Path) -> None:
    s = w / "sweeps"
    s.mkdir()
    base = {"data": {"name": "digits", "train_subset": 50},
            "model": {"name": "nin", "depth": 1, "width": 1}, "train": {"max_epochs": 1}}
    files = {
        "ok": {"name": "ok", "base": base, "axes": {"quant.bits": ["fp", 4]}},
        "fm": {"name": "fm", "base": {**base, "data": {"name": "fashion-mnist",
                                                       "train_subset": 50}},
               "axes": {"quant.bits": ["fp", 4]}},
        "unknown_key": {"base": base, "axez": {"quant.bits": ["fp"]}},
        "bits_9": {"base": base, "axes": {"quant.bits": ["fp", 9]}},
        "axis_field": {"base": base, "axes": {"model.colour": [1, 2]}},
        "axis_empty": {"base": base, "axes": {"model.width": []}},
        "axis_scalar": {"base": base, "axes": {"model.width": 3}},
        "axis_lr": {"base": base, "axes": {"train.lr": [0.1, -1]}},
        "seed_negative": {"base": base, "seeds": [0, -1]},
        "seed_twice": {"base": base, "seeds": [0], "axes": {"train.seed": [1]}},
        "base_dataset": {"base": {**base, "data": {"name": "mnist9"}}},
        "base_list": {"base": [base]},
        "base_section": {"base": {**base, "optim": {"lr": 1}}},
        "base_field": {"base": {**base, "model": {"depht": 2}}},
        "study_list": {"base": base, "study": [1]},
    }
    for name, content in files.items():
        (s / f"{name}.yaml").write_text(json.dumps(content))  # JSON is YAML
    (s / "binary.yaml").write_bytes(bytes(range(256)))
    (s / "python_tag.yaml").write_text(f"!!python/object/apply:os.system [touch {w}/PWNED]\n")


def _damaged_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(edit(data)))


def _write_runs(w: Path) -> None:
    from qgen.train import execute_run

    store = w / "store"
    fp = RunSpec.from_dict(TINY_TREE)
    q4 = RunSpec.from_dict({**TINY_TREE, "quant": {"bits": 4}})
    for spec in (fp, q4):
        execute_run(spec, Runtime(out_dir=store, quiet=True, threads=1))
    fp_dir, q4_dir = store / fp.run_id, store / q4.run_id
    (w / "fp").symlink_to(fp_dir.relative_to(w))
    (w / "q4").symlink_to(q4_dir.relative_to(w))

    d = w / "runs"
    d.mkdir()
    (d / "empty").mkdir()
    (_damaged_copy(fp_dir, d / "no_spec") / "spec.json").unlink()
    (_damaged_copy(fp_dir, d / "no_result") / "result.json").unlink()
    trunc = _damaged_copy(fp_dir, d / "truncated_result") / "result.json"
    trunc.write_text(trunc.read_text()[:100])
    (_damaged_copy(fp_dir, d / "spec_list") / "spec.json").write_text("[1, 2]")
    _edit_json(_damaged_copy(fp_dir, d / "spec_bad_lr") / "spec.json",
               lambda s: {**s, "train": {**s["train"], "lr": -1}})
    _edit_json(_damaged_copy(fp_dir, d / "spec_version") / "spec.json",
               lambda s: {**s, "spec_version": 9})
    _edit_json(_damaged_copy(fp_dir, d / "metrics_list") / "result.json",
               lambda r: {**r, "metrics": [1, 2]})
    _edit_json(_damaged_copy(fp_dir, d / "diverged") / "result.json",
               lambda r: {**r, "status": "diverged"})
    _edit_json(_damaged_copy(q4_dir, d / "q4_no_data") / "result.json",
               lambda r: {k: v for k, v in r.items() if k != "data"})
    shutil.copy(fp_dir / "model.safetensors", _damaged_copy(q4_dir, d / "fp_in_q4"))
    shutil.copy(q4_dir / "model.safetensors", _damaged_copy(fp_dir, d / "q4_in_fp"))
    shutil.copy(fp_dir / "init.safetensors", _damaged_copy(q4_dir, d / "init_mismatch"))
    model = _damaged_copy(q4_dir, d / "truncated_model") / "model.safetensors"
    model.write_bytes(model.read_bytes()[:200])
    (_damaged_copy(q4_dir, d / "garbage_model") / "model.safetensors").write_bytes(b"x" * 64)
    (_damaged_copy(fp_dir, d / "other_settings") / "measures.json").write_text(json.dumps(
        {"postpass": "measures", "settings_key": {"preset_name": "someone-else"},
         "values": {"norm.l2": 1.0}}))
    write_error(d, fp, {"error_type": "X", "message": "boom", "traceback": ""})
    (d / fp.run_id).rename(d / "failed")

    stores = w / "stores"
    stores.mkdir()
    (stores / "empty").mkdir()
    shutil.copytree(d / "truncated_result", stores / "corrupt_only" / "0123456789abcdef")
    locked = stores / "locked"
    locked.mkdir()
    (locked / LOCK_FILE).write_text("")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The folder every case runs in (its working directory) and reads from."""
    w = tmp_path_factory.mktemp("world")
    _write_datasets(w)
    _write_configs(w)
    _write_sweeps(w)
    _write_runs(w)
    (w / "afile").write_text("a file, not a folder\n")
    (w / "adir").mkdir()
    (w / "adir.csv").mkdir()
    return w


# ---- running a case and checking the contract ---------------------------------------------

def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: directories and links by kind, files by size, mtime and
    content hash."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                st = p.stat()
                out[rel] = ("file", st.st_size, st.st_mtime_ns,
                            hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def diff(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    keys = sorted(set(before) | set(after))
    return [f"{k}: {before.get(k)} -> {after.get(k)}" for k in keys
            if before.get(k) != after.get(k)]


@dataclass(frozen=True)
class Case:
    """One bad input: the arguments after ``qgen`` (``{W}`` is the world folder) and a
    fragment the error line must contain."""

    id: str
    args: tuple[str, ...]
    fragment: str
    needs_no_cuda: bool = False
    needs_vision: bool = False


def C(id: str, args: str | list[str], fragment: str, **kw: bool) -> Case:  # noqa: N802
    return Case(id, tuple(args.split() if isinstance(args, str) else args), fragment, **kw)


#: Reads one JSON job per line ({"args", "cwd", "stdout", "stderr"}), forks, runs the command
#: line in the child exactly as ``python -m qgen`` would (``qgen.cli.main``, SystemExit turned
#: into the exit status, an uncaught exception printed as a traceback with status 1) and
#: answers the child's pid, then its exit status. It imports what the commands import first;
#: a module that fails to import is left for the child to import (and fail) itself.
DRIVER = r"""
import importlib, json, os, sys, traceback
for name in ("qgen.cli", "qgen.train", "qgen.measures.postpass", "qgen.results",
             "qgen.sweep.plan", "qgen.sweep.runner", "qgen.sweep.executors",
             "qgen.theory.postpass", "qgen.study", "pandas", "sklearn.datasets"):
    try:
        importlib.import_module(name)
    except Exception:
        pass
sys.stdout.flush()
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(job["cwd"])
            for fd, name in ((1, job["stdout"]), (2, job["stderr"])):
                f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = ["qgen", *job["args"]]
            try:
                from qgen.cli import main
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Forker:
    """The driver process: runs one command line per call in a fresh forked process."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=_env(), bufsize=0)
        self.n = 0
        self.pending = b""  # read from the driver, not yet answered

    def _answer(self, timeout: float) -> dict:
        """The driver's next JSON line, or {} after ``timeout`` seconds (read unbuffered, so
        that a second line that came with the first is not hidden from select)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return {}
            chunk = os.read(fd, 4096)
            if not chunk:
                return {}
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def run(self, cwd: Path, argv: list[str]) -> subprocess.CompletedProcess:
        self.n += 1
        out, err = self.scratch / f"{self.n}.out", self.scratch / f"{self.n}.err"
        assert self.proc.stdin is not None
        job = {"args": argv, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(job).encode() + b"\n")
        pid = self._answer(300)["pid"]  # the first job waits for the driver's imports
        done = self._answer(120)
        if not done:  # a case that hangs is a failure, not a hung suite
            os.kill(pid, signal.SIGKILL)
            done = self._answer(30)
            pytest.fail(f"qgen {' '.join(argv)} ran for more than 120 s")
        return subprocess.CompletedProcess(argv, done["rc"], out.read_text(), err.read_text())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def forker(tmp_path_factory) -> Iterator[Forker]:
    f = Forker(tmp_path_factory.mktemp("outputs"))
    yield f
    f.close()


def _argv(world: Path, args: tuple[str, ...]) -> list[str]:
    return [a.replace("{W}", str(world)) for a in args]


def run_qgen(world: Path, args: tuple[str, ...]) -> subprocess.CompletedProcess:
    """``python -m qgen ARGS`` in ``world``, in a new interpreter."""
    return subprocess.run(QGEN + _argv(world, args), cwd=world, env=_env(),
                          capture_output=True, text=True, timeout=120)


def check_one_line(proc: subprocess.CompletedProcess, fragment: str) -> str:
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both, both
    assert proc.returncode == 2, both
    assert proc.stdout.strip() == "", proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    assert fragment in lines[0], lines[0]
    return lines[0]


# ---- the table -----------------------------------------------------------------------------

T = " ".join(TINY)
TF = " ".join(a for a in TINY if a not in ("--train-subset", "100"))  # for image folders
TZ = "--dataset digits --train-subset 100 --epochs 1 --threads 1 --quiet"  # for zoo models
OUT = "--out {W}/new_runs"  # must never appear

CASES = [
    # train: config files (bytes, encoding, YAML, types)
    C("train-config-binary", f"train -c cfg/binary.yaml {OUT}", "not a YAML text file"),
    C("train-config-latin1", f"train -c cfg/latin1.yaml {OUT}", "invalid UTF-8"),
    C("train-config-nul", f"train -c cfg/nul.yaml {OUT}", "NUL bytes"),
    C("train-config-model-list", f"train -c cfg/model_list.yaml {OUT}",
      "section 'model' must be a mapping"),
    C("train-config-python-tag", f"train -c cfg/python_tag.yaml {OUT}", "not valid YAML"),
    C("train-config-top-list", f"train -c cfg/top_list.yaml {OUT}", "must hold a mapping"),
    C("train-config-empty", f"train -c cfg/empty.yaml {OUT}", "an empty file"),
    C("train-config-unknown-field", f"train -c cfg/unknown_field.yaml {OUT}",
      "unknown field 'colour'"),
    C("train-config-syntax", f"train -c cfg/syntax.yaml {OUT}", "not valid YAML"),
    C("train-config-mixed-keys", f"train -c cfg/mixed_keys.yaml {OUT}", "unknown field 1"),
    C("train-config-spec-version", f"train -c cfg/spec_version.yaml {OUT}", "spec_version"),
    C("train-config-missing", f"train -c cfg/nope.yaml {OUT}", "file not found"),
    C("train-config-directory", f"train -c cfg {OUT}", "is a directory"),
    # train: flags and --set
    C("train-threads-negative", f"train {T} --threads -4 {OUT}", "--threads"),
    C("train-threads-zero", f"train {T} --threads 0 {OUT}", "--threads"),
    C("train-device-foo", f"train {T} --device foo {OUT}", "--device"),
    C("train-device-cuda", f"train {T} --device cuda {OUT}", "no CUDA", needs_no_cuda=True),
    C("train-epochs-not-int", f"train {T} --epochs x {OUT}", "--epochs"),
    C("train-lr-nan", f"train {T} --lr nan {OUT}", "train.lr"),
    C("train-momentum", f"train {T} --momentum 2 {OUT}", "train.momentum"),
    C("train-batch-size", f"train {T} --batch-size 0 {OUT}", "train.batch_size"),
    C("train-bits-9", f"train {T} --bits 9 {OUT}", "2..8 or 'fp'"),
    C("train-w-bits-word", f"train {T} --w-bits x {OUT}", "--w-bits"),
    C("train-dataset", f"train {T} --dataset mnist9 {OUT}", "unknown dataset 'mnist9'"),
    C("train-model", f"train {T} --model alexnet {OUT}", "unknown model 'alexnet'"),
    C("train-set-no-equals", f"train {T} --set nope {OUT}", "name=value"),
    C("train-set-unknown", f"train {T} --set data.colour=1 {OUT}",
      "unknown spec field 'data.colour'"),
    C("train-set-bad-value", f"train {T} --set data.name=[a {OUT}", "not a plain value"),
    C("train-set-overrides", f"train {T} --set quant.overrides=5 {OUT}", "quant.overrides"),
    C("train-set-options", f"train {T} --set model.options=3 {OUT}", "model.options"),
    C("train-unknown-option", f"train {T} --bogus {OUT}", "No such option"),
    C("train-extra-argument", f"train {T} extra {OUT}", "unexpected extra argument"),
    # train: paths, and errors found late (after the data or the model) leave no --out
    C("train-out-is-file", f"train {T} --out afile", "afile exists and is not a directory"),
    C("train-out-under-file", f"train {T} --out afile/runs", "afile is a file"),
    C("train-data-dir-is-file", f"train {T} --data-dir afile {OUT}", "--data-dir"),
    C("train-subset-too-large", f"train {T} --train-subset 100000 {OUT}", "larger than"),
    C("train-resnet-depth-7", f"train {T} --model resnet --depth 7 {OUT}", "model.depth"),
    C("train-missing-dataset", f"train --dataset fashion-mnist --data-dir data/empty -q {OUT}",
      "fashion-mnist not found"),
    C("train-corrupt-dataset", f"train --dataset fashion-mnist --data-dir data/fm_corrupt -q "
      f"{OUT}", "IDX size mismatch"),
    C("train-malicious-pickle", f"train --dataset cifar10 --data-dir data/cifar_evil -q {OUT}",
      "only arrays and builtin containers are allowed"),
    # export
    C("export-out-existing-dir", "export q4 --out adir", "adir is a directory"),
    C("export-out-under-dev-null", "export q4 --out /dev/null/x.safetensors",
      "/dev/null is a file"),
    C("export-out-missing-folder", "export q4 --out nowhere/x.safetensors", "does not exist"),
    C("export-fp-run", "export fp", "full-precision run"),
    C("export-no-such-run", "export nope/abc", "not a complete run directory"),
    C("export-fp-weights-in-4bit-run", "export runs/fp_in_q4 --out x.safetensors",
      "weights do not match"),
    C("export-result-without-data", "export runs/q4_no_data --out x.safetensors",
      "no 'data' entry"),
    C("export-garbage-checkpoint", "export runs/garbage_model --out x.safetensors",
      "corrupt or unreadable"),
    C("export-missing-argument", "export", "Missing argument"),
    # datasets
    C("datasets-data-dir-is-file", "datasets --data-dir afile", "--data-dir"),
    # measure: run directories named on the command line must be complete runs
    C("measure-no-such-dir", "measure nope/abc", "no such directory"),
    C("measure-empty-dir", "measure runs/empty", "spec.json is missing"),
    C("measure-no-spec", "measure runs/no_spec", "spec.json is missing"),
    C("measure-no-result", "measure runs/no_result", "result.json is missing"),
    C("measure-truncated-result", "measure runs/truncated_result",
      "result.json is unreadable"),
    C("measure-metrics-not-mapping", "measure runs/metrics_list", "result.json is unreadable"),
    C("measure-spec-list", "measure runs/spec_list -m norm.l2", "not a run spec"),
    C("measure-spec-bad-field", "measure runs/spec_bad_lr -m norm.l2", "train.lr"),
    C("measure-spec-version", "measure runs/spec_version -m norm.l2", "spec_version"),
    C("measure-failed-run", "measure runs/failed", "the run failed"),
    C("measure-diverged-run", "measure runs/diverged -m norm.l2", "diverged"),
    C("measure-fp-weights-in-4bit-run", "measure runs/fp_in_q4 -m norm.l2",
      "weights do not match"),
    C("measure-4bit-weights-in-fp-run", "measure runs/q4_in_fp -m norm.l2",
      "weights do not match"),
    C("measure-init-weights-mismatch", "measure runs/init_mismatch -m norm.l2",
      "init.safetensors: weights do not match"),
    C("measure-truncated-checkpoint", "measure runs/truncated_model -m norm.l2",
      "corrupt or unreadable"),
    C("measure-other-settings", "measure runs/other_settings -m norm.l2",
      "already computed with other settings"),
    C("measure-good-then-bad", "measure fp runs/no_result -m norm.l2",
      "result.json is missing"),
    # measure: options
    C("measure-unknown-name", "measure fp -m norm.nope", "matches no measure"),
    C("measure-empty-names", ["measure", "fp", "-m", ""], "no measure names"),
    C("measure-only-commas", "measure fp -m ,,", "no measure names"),
    C("measure-preset", "measure fp --preset nope", "dziugaite2020"),
    C("measure-set-unknown", "measure fp --set bogus=1", "unknown field 'bogus'"),
    C("measure-set-range", "measure fp --set eval_subset=-3", "eval_subset"),
    C("measure-set-no-value", "measure fp --set mc_draws", "name=value"),
    C("measure-threads", "measure fp --threads 0", "--threads"),
    C("measure-device", "measure fp --device foo", "--device"),
    # collect
    C("collect-output-existing-dir", "collect store -o adir.csv", "adir.csv is a directory"),
    C("collect-output-suffix", "collect store -o table.xlsx", "must end in .parquet or .csv"),
    C("collect-output-under-dev-null", "collect store -o /dev/null/x.csv",
      "/dev/null is a file"),
    C("collect-output-missing-folder", "collect store -o nowhere/x.csv", "does not exist"),
    C("collect-empty-store", "collect stores/empty -o x.csv", "the store is empty"),
    C("collect-only-run-corrupt", "collect stores/corrupt_only -o x.csv", "damaged"),
    C("collect-no-such-store", "collect nope -o x.csv", "no such run store"),
    C("collect-store-is-file", "collect afile -o x.csv", "no such run store"),
    # sweep plan: the sweep file
    C("plan-unknown-key", "sweep plan sweeps/unknown_key.yaml", "unknown key 'axez'"),
    C("plan-bits-9", "sweep plan sweeps/bits_9.yaml", "axes.quant.bits[1] = 9"),
    C("plan-axis-field", "sweep plan sweeps/axis_field.yaml", "unknown spec field 'model.colour'"),
    C("plan-axis-empty", "sweep plan sweeps/axis_empty.yaml", "empty list"),
    C("plan-axis-scalar", "sweep plan sweeps/axis_scalar.yaml", "values must be a non-empty"),
    C("plan-axis-lr", "sweep plan sweeps/axis_lr.yaml", "axes.train.lr[1] = -1"),
    C("plan-seed-negative", "sweep plan sweeps/seed_negative.yaml", "seeds"),
    C("plan-seed-twice", "sweep plan sweeps/seed_twice.yaml", "keep one of them"),
    C("plan-base-dataset", "sweep plan sweeps/base_dataset.yaml", "unknown dataset 'mnist9'"),
    C("plan-base-list", "sweep plan sweeps/base_list.yaml", "base must be a mapping"),
    C("plan-base-section", "sweep plan sweeps/base_section.yaml", "unknown section 'optim'"),
    C("plan-base-field", "sweep plan sweeps/base_field.yaml", "unknown field 'depht'"),
    C("plan-study-list", "sweep plan sweeps/study_list.yaml", "study must be a mapping"),
    C("plan-no-such-preset", "sweep plan nosuchpreset", "no such sweep file or preset"),
    C("plan-directory", "sweep plan sweeps", "is a directory"),
    C("plan-binary", "sweep plan sweeps/binary.yaml", "not a YAML text file"),
    C("plan-python-tag", "sweep plan sweeps/python_tag.yaml", "not valid YAML"),
    C("plan-show-negative", "sweep plan sweeps/ok.yaml --show -1", "--show"),
    # sweep run
    C("run-missing-data-new-store", "sweep run sweeps/fm.yaml --data-dir data/empty "
      "--out {W}/new_store -q", "fashion-mnist"),
    C("run-missing-data-existing-store", "sweep run sweeps/fm.yaml --data-dir data/empty "
      "--out stores/empty", "fashion-mnist"),
    C("run-executor", f"sweep run sweeps/ok.yaml --executor foo {OUT}", "must be local or ray"),
    C("run-address-local", f"sweep run sweeps/ok.yaml --address auto {OUT}", "--address"),
    C("run-gpus-ray", f"sweep run sweeps/ok.yaml --executor ray --gpus 0 {OUT}", "--gpus"),
    C("run-workers", f"sweep run sweeps/ok.yaml --workers 0 {OUT}", "--workers"),
    C("run-threads", f"sweep run sweeps/ok.yaml --threads 0 {OUT}", "--threads"),
    C("run-device", f"sweep run sweeps/ok.yaml --device foo {OUT}", "--device"),
    C("run-out-is-file", "sweep run sweeps/ok.yaml --out afile", "not a directory"),
    C("run-max-retries", f"sweep run sweeps/ok.yaml --max-retries -1 {OUT}", "--max-retries"),
    C("run-bad-sweep", f"sweep run sweeps/bits_9.yaml {OUT}", "axes.quant.bits[1] = 9"),
    # sweep status / sweep measure
    C("status-no-such-store", "sweep status nope", "no such run store"),
    C("status-empty-dir", "sweep status adir", "not a run store"),
    C("status-file", "sweep status afile", "no such run store"),
    C("sweep-measure-no-such-store", "sweep measure nope", "no such run store"),
    C("sweep-measure-empty-store", "sweep measure stores/empty", "the store is empty"),
    C("sweep-measure-only-run-corrupt", "sweep measure stores/corrupt_only", "no runs to measure"),
    C("sweep-measure-unknown-name", "sweep measure store -m norm.nope", "matches no measure"),
    C("sweep-measure-preset", "sweep measure store --preset nope", "dziugaite2020"),
    C("sweep-measure-threads", "sweep measure store --threads 0", "--threads"),
    # theory (the post-pass contract and the CLI helpers it shares)
    C("theory-no-such-dir", "theory nope/abc", "no such directory"),
    C("theory-data-dir-file", "theory q4 --data-dir afile", "is a file, not a folder"),
    C("robustness-data-dir-file", "robustness q4 --data-dir afile", "is a file, not a folder"),
    C("study-data-dir-file", "study sweeps/ok.yaml --out {W}/new_study --data-dir afile",
      "is a file, not a folder"),
    C("theory-empty-dir", "theory runs/empty", "spec.json is missing"),
    C("theory-spec-list", "theory runs/spec_list", "not a run spec"),
    C("theory-fp-weights-in-4bit-run", "theory runs/fp_in_q4", "weights do not match"),
    C("theory-set-unknown", "theory q4 --set bogus=1", "unknown field 'bogus'"),
    C("theory-threads", "theory q4 --threads 0", "--threads"),
    C("theory-device", "theory q4 --device foo", "--device"),
    # study and demo: the checks they do before any work
    C("study-no-such-preset", "study nosuchpreset --out {W}/new_study", "no such sweep file"),
    C("study-unknown-key", "study sweeps/unknown_key.yaml --out {W}/new_study", "unknown key"),
    C("study-binary", "study sweeps/binary.yaml --out {W}/new_study", "not a YAML text file"),
    C("study-out-is-file", "study sweeps/ok.yaml --out afile", "afile"),
    C("study-threads", "study sweeps/ok.yaml --out {W}/new_study --threads 0", "--threads"),
    C("study-device", "study sweeps/ok.yaml --out {W}/new_study --device foo", "--device"),
    C("study-workers", "study sweeps/ok.yaml --out {W}/new_study --workers 0", "--workers"),
    C("study-missing-data", "study sweeps/fm.yaml --out {W}/new_study --data-dir data/empty",
      "fashion-mnist"),
    C("demo-missing-data", "demo --out {W}/new_demo --data-dir data/empty", "fashion-mnist"),
    C("demo-workers", "demo --out {W}/new_demo --workers 0", "--workers"),
    # report
    C("report-no-such-table", "report nope.parquet --out {W}/new_report", "no such results"),
    C("report-no-suffix", "report afile --out {W}/new_report", "unknown table format"),
    C("report-empty-csv", "report tables/empty.csv --out {W}/new_report",
      "not a readable results table"),
    C("report-garbage-parquet", "report tables/garbage.parquet --out {W}/new_report",
      "not a readable results table"),
    C("report-missing-columns", "report tables/columns.csv --out {W}/new_report",
      "lacks the column"),
    C("report-empty-store", "report stores/empty --out {W}/new_report", "no runs"),
    C("report-only-run-corrupt", "report stores/corrupt_only --out {W}/new_report", "no runs"),
    C("report-out-is-file", "report store --out afile", "not a directory"),
    C("report-gap", "report store --out {W}/new_report --gap foo", "--gap"),
    C("report-n-boot", "report store --out {W}/new_report --n-boot -1", "--n-boot"),
    # image folders, zoo models, start checkpoints, mixed precision, the compiled path
    C("train-folder-no-classes", f"train {TF} --dataset folder:{{W}}/data/folder_noclass {OUT}",
      "no class folders"),
    C("train-folder-unreadable", f"train {TF} --dataset folder:{{W}}/data/folder_unreadable "
      f"--set data.input_size=8 {OUT}", "cannot decode the image"),
    C("train-folder-missing", f"train {TF} --dataset folder:{{W}}/data/nope {OUT}", "nope"),
    C("train-imagenet-missing", f"train {TF} --dataset imagenet --data-dir {{W}}/data/empty "
      f"{OUT}", "imagenet"),
    C("train-zoo-unknown", f"train {T} --model tv:resnet19 {OUT}", "tv:resnet19 is not a "
      "torchvision classification architecture", needs_vision=True),
    C("train-zoo-prefix-unknown", f"train {T} --model keras:resnet18 {OUT}",
      "unknown model 'keras:resnet18'"),
    C("train-zoo-weights-mismatch", f"train {TZ} --model tv:resnet18 --set data.channels=3 "
      f"--set data.input_size=32 --weights {{W}}/data/other_net.safetensors {OUT}",
      "does not match tv:resnet18", needs_vision=True),
    C("train-weights-not-checkpoint", f"train {T} --weights cfg/binary.yaml {OUT}",
      "does not read as safetensors"),
    C("train-weights-pickle", f"train {T} --weights {{W}}/data/evil.pt {OUT}",
      "does not read as a torch state_dict"),
    C("train-weights-missing", f"train {T} --weights {{W}}/data/nope.pt {OUT}",
      "is not a file"),
    C("train-precision-fp16-cpu", f"train {T} --set train.precision=fp16 {OUT}",
      "needs a CUDA device", needs_no_cuda=True),
    C("train-precision-unknown", f"train {T} --set train.precision=int8 {OUT}",
      "train.precision"),
    C("train-compile-not-bool", f"train {T} --set train.compile=maybe {OUT}",
      "train.compile: must be true or false"),
    C("write-folder-exists", "write-folder digits cfg", "already exists"),
    C("write-folder-unknown-dataset", "write-folder nodata {W}/new_folder", "unknown dataset"),
    # the command itself
    C("no-such-command", "nosuchcommand", "No such command"),
]


def test_the_table_is_large_and_its_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 60
    commands = {c.args[0] if c.args[0] != "sweep" else " ".join(c.args[:2]) for c in CASES}
    assert {"train", "export", "datasets", "measure", "collect", "sweep plan", "sweep run",
            "sweep status", "sweep measure", "theory", "study", "demo", "report"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, forker, case):
    if case.needs_no_cuda:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    if case.needs_vision and not HAVE_VISION and not os.environ.get("QGEN_REQUIRE_VISION"):
        pytest.skip("the vision extra (torchvision, timm) is not installed")
    before = snapshot(world)
    proc = forker.run(world, _argv(world, case.args))
    check_one_line(proc, case.fragment)
    assert diff(before, snapshot(world)) == []
    assert not (world / "PWNED").exists()


#: cases from the issue, also run as ``python -m qgen`` in a new interpreter
REAL_PROCESS = ["train-config-binary", "train-threads-negative", "train-epochs-not-int",
                "measure-spec-list", "export-out-existing-dir", "collect-only-run-corrupt",
                "train-malicious-pickle"]


@pytest.mark.parametrize("case_id", REAL_PROCESS)
def test_a_new_interpreter_ends_the_same_way(world, forker, case_id):
    case = next(c for c in CASES if c.id == case_id)
    before = snapshot(world)
    line = check_one_line(run_qgen(world, case.args), case.fragment)
    assert diff(before, snapshot(world)) == []
    forked = check_one_line(forker.run(world, _argv(world, case.args)), case.fragment)
    # the parser names the program as it was started: `python -m qgen` or `qgen`
    assert line.replace("python -m qgen", "qgen") == forked


def test_a_locked_store_is_refused_and_left_alone(world, forker):
    store = world / "stores" / "locked"
    with store_lock(store):  # another sweep holds it (flock: per open file description)
        before = snapshot(world)
        proc = forker.run(world, ["sweep", "run", "sweeps/ok.yaml", "--out", str(store)])
        after = snapshot(world)
    check_one_line(proc, "another sweep is writing to this store")
    assert diff(before, after) == []


def test_ctrl_c_says_what_was_kept_and_exits_130(tmp_path):
    out = tmp_path / "runs"
    # A shell that starts a job in the background (as CI runners may) makes SIGINT ignored
    # for it and everything it starts, and Python then installs no KeyboardInterrupt handler;
    # a user at a terminal has the default disposition, so the command starts with it.
    proc = subprocess.Popen(QGEN + ["train", "--dataset", "digits", "--model", "nin",
                                    "--depth", "1", "--width", "1", "--epochs", "100000",
                                    "--target-ce", "0", "--threads", "1", "--quiet",
                                    "--out", str(out)],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # Wait until the command is past its imports: torch is imported inside the command,
        # then the digits loader imports scikit-learn (whose compiled modules appear in the
        # process's memory map); an interrupt that lands inside a library's import can be
        # swallowed by that library, so the signal is sent once training has started.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                maps = Path(f"/proc/{proc.pid}/maps").read_text()
                if "libtorch" in maps and "sklearn" in maps:
                    break
            except OSError:  # it has just ended: the assertion below says how
                break
            time.sleep(0.05)
        time.sleep(1.0)  # into the training loop
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted"), stderr
    assert "kept" in lines[0] and "again to resume" in lines[0]
    # nothing half-written: no run directory and no temporary one
    assert not out.exists() or list(out.iterdir()) == []


def test_collect_reports_damaged_runs_beside_usable_ones(world, forker, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(world / "store", store)
    shutil.copytree(world / "runs" / "truncated_result", store / "0123456789abcdef")
    proc = forker.run(tmp_path, ["collect", str(store), "-o", "t.csv"])
    assert proc.returncode == 0, proc.stderr
    (warning,) = proc.stderr.splitlines()
    assert warning.startswith("warning:") and "0123456789abcdef" in warning
    assert "result.json is unreadable" in warning
    assert "wrote 2 rows" in proc.stdout and (tmp_path / "t.csv").is_file()
