"""Collecting a results table from a large run store: ``qgen collect`` on 1,000 small fake runs.

Writes a store of ``--runs`` run directories in the exact store format (spec.json,
result.json with metrics and health, a measures post-pass record with its columns, and
placeholder weight files, which collecting never reads), then times, each in a fresh
interpreter so that imports count, side by side and alternating:

- ``qgen``: ``qgen.results.collect`` + ``write_table`` to Parquet (checks that torch was
  not imported);
- ``baseline``: a plain loop that ``json.load``s the same spec, result and measures files
  and builds a pandas DataFrame from flat dicts (no typing, no columns conventions).

The ratio qgen / baseline is the price of qgen's table logic over reading the JSON at all.
Usage::

    python bench/bench_collect.py [--runs 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_name  # bench/ is on sys.path when run as a script

QGEN = """
import sys, time
t = time.perf_counter()
from qgen.results import collect, write_table
df = collect(sys.argv[1])
write_table(df, sys.argv[2])
assert 'torch' not in sys.modules, 'collect imported torch'
print(len(df), len(df.columns), time.perf_counter() - t)
"""

BASELINE = """
import sys, json, time
from pathlib import Path
t = time.perf_counter()
import pandas as pd
rows = []
for d in sorted(Path(sys.argv[1]).iterdir()):
    if not d.is_dir():
        continue
    spec = json.loads((d / "spec.json").read_text())
    result = json.loads((d / "result.json").read_text())
    row = {"run_id": d.name, "status": result["status"]}
    for sec, fields in spec.items():
        if isinstance(fields, dict):
            row.update({f"hp.{sec}.{k}": str(v) for k, v in fields.items()})
    row.update({f"gen.{k}": v for k, v in result["metrics"].items()})
    m = d / "measures.json"
    if m.is_file():
        row.update(json.loads(m.read_text())["columns"])
    rows.append(row)
pd.DataFrame(rows).to_parquet(sys.argv[2], index=False)
print(len(rows), 0, time.perf_counter() - t)
"""


def make_store(root: Path, runs: int) -> None:
    """``runs`` fake runs in the store format."""
    from qgen.config import RunSpec

    metrics = {"train_loss": 0.05, "test_loss": 0.41, "loss_gap": 0.36, "train_accuracy": 0.99,
               "test_accuracy": 0.86, "acc_gap": 0.13, "train_n": 500, "test_n": 2000,
               "train_margin_p10": 1.5, "test_margin_p10": -0.2}
    for i in range(runs):
        spec = RunSpec.from_dict({"data": {"name": "fashion-mnist", "train_subset": 500},
                                  "model": {"name": "nin", "depth": 3, "width": 2},
                                  "quant": {"bits": [None, 8, 4, 2][i % 4]},
                                  "train": {"lr": 0.05 + 0.001 * (i // 4), "seed": i % 7}})
        d = root / spec.run_id
        d.mkdir()
        (d / "spec.json").write_text(json.dumps(spec.to_dict()))
        (d / "result.json").write_text(json.dumps({
            "run_id": spec.run_id, "status": "converged", "epochs": 12.5, "steps": 200,
            "wall_time_s": 20.0, "metrics": metrics, "num_params": 60000, "device": "cpu",
            "threads": 1, "versions": {"qgen": "0.1.0", "torch": "2.13.0"},
            "health": {"healthy": True, "flags": [], "max_ce_rise": 0.9,
                       "max_step_decades": 0.3}}))
        values = {f"pacbayes.{k}": 1.0 + i for k in ("init", "orig", "flatness")}
        (d / "measures.json").write_text(json.dumps({
            "postpass": "measures", "values": values, "settings_key": {"seed": 0},
            "columns": {**{f"measure.{k}": v for k, v in values.items()},
                        "meta.measure_preset": "default",
                        "meta.saturated.pacbayes": False}}))
        for name in ("model.safetensors", "init.safetensors"):
            (d / name).write_bytes(b"")


def timed(code: str, store: Path, out: Path) -> tuple[float, float, str]:
    """(wall seconds of the whole process, seconds the code measured itself, its output)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(store), str(out)],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    rows, cols, inner = proc.stdout.split()
    return wall, float(inner), f"{rows} rows x {cols} columns"


def main() -> None:
    """Build the store, time both sides alternately, print medians and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import pandas
    import pyarrow

    print(f"python {platform.python_version()}, pandas {pandas.__version__}, pyarrow "
          f"{pyarrow.__version__}; {cpu_name()}")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        make_store(store, args.runs)
        walls: dict[str, list[float]] = {"qgen": [], "baseline": []}
        inner: dict[str, list[float]] = {"qgen": [], "baseline": []}
        for _ in range(args.repeats):
            for name, code in (("qgen", QGEN), ("baseline", BASELINE)):
                w, i, shape = timed(code, store, Path(tmp) / f"{name}.parquet")
                walls[name].append(w)
                inner[name].append(i)
                if name == "qgen":
                    qgen_shape = shape
        q, b = statistics.median(walls["qgen"]), statistics.median(walls["baseline"])
        print(f"{args.runs} runs; qgen table: {qgen_shape}; torch imported: no")
        print(f"qgen collect + write, whole process: median {q:.2f} s "
              f"(min {min(walls['qgen']):.2f}, max {max(walls['qgen']):.2f}); "
              f"in-process {statistics.median(inner['qgen']):.2f} s")
        print(f"baseline json loop + DataFrame, whole process: median {b:.2f} s "
              f"(min {min(walls['baseline']):.2f}, max {max(walls['baseline']):.2f}); "
              f"in-process {statistics.median(inner['baseline']):.2f} s")
        print(f"ratio qgen / baseline (whole process): {q / b:.2f}")


if __name__ == "__main__":
    main()
