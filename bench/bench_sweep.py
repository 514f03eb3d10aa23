"""Sweep throughput: runs per hour of a small grid under different executors, side by side.

Measures, in one invocation and on the same grid (8 runs on scikit-learn's digits, NiN depth 2
width 1, a few seconds each):

- local, 1 worker × 2 threads   vs   local, 2 workers × 1 thread;
- Ray (local cluster), 2 workers × 1 thread vs the local executor with the same workers and
  threads: Ray's overhead per run, with the cluster's start-up reported on its own.

Each configuration writes a fresh run store; configurations are interleaved round by round
(``--repeats``) so that a shared machine's load drifts over all of them alike; medians are
reported. Usage::

    python bench/bench_sweep.py [--repeats 1] [--runs 8] [--epochs 3] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import cpu_name  # bench/ is on sys.path when run as a script


def make_plan(runs: int, epochs: int):
    """A grid of ``runs`` digits runs: learning rates × seeds."""
    from qgen.sweep.plan import expand, parse_sweep

    lrs = [0.02, 0.05, 0.1, 0.2][: max(1, runs // 2)]
    seeds = list(range(max(1, runs // len(lrs))))
    sweep = {"name": "bench", "base": {
        "data": {"name": "digits"},
        "model": {"name": "nin", "depth": 2, "width": 1},
        "train": {"max_epochs": epochs, "batch_size": 32, "target_ce": 0.0}},
        "axes": {"train.lr": lrs}, "seeds": seeds}
    return expand(parse_sweep(sweep))


def timed_sweep(plan, executor, root: Path) -> float:
    """Wall seconds to run ``plan`` into a fresh store with ``executor``."""
    from qgen.config import Runtime
    from qgen.sweep.runner import run_sweep

    out = Path(tempfile.mkdtemp(dir=root, prefix="store-"))
    t0 = time.perf_counter()
    report = run_sweep(plan, Runtime(out_dir=out), executor)
    wall = time.perf_counter() - t0
    if report.failed or report.ran != len(plan.specs):
        raise RuntimeError(f"bench sweep did not finish cleanly: {report}")
    shutil.rmtree(out, ignore_errors=True)
    return wall


def main() -> None:
    """Run the comparison and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()

    import torch

    import qgen
    from qgen.sweep.executors import LocalExecutor, RayExecutor, cpu_cores

    plan = make_plan(args.runs, args.epochs)
    n = len(plan.specs)
    cores = cpu_cores()
    configs = {
        "local 1×2": lambda: LocalExecutor(workers=1, threads=min(2, cores)),
        "local 2×1": lambda: LocalExecutor(workers=2, threads=1, check_cores=False),
    }
    ray_version, ray_start = None, None
    if not args.no_ray:
        try:
            import ray
        except ImportError:
            print("ray not installed: skipping the Ray comparison (pip install 'qgen[ray]')")
        else:
            ray_version = ray.__version__
            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            ray_start = time.perf_counter() - t0
            configs["ray 2×1"] = lambda: RayExecutor(workers=2, threads=1, quiet=True)

    print(f"machine: {cpu_name()}, {cores} usable cores, {platform.machine()}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, "
          f"qgen {qgen.__version__}" + (f", ray {ray_version}" if ray_version else ""))
    print(f"grid: {n} runs on digits (1,437 train images), NiN depth 2 width 1, "
          f"{args.epochs} epochs, batch 32; {args.repeats} round(s), medians")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    walls: dict[str, list[float]] = {k: [] for k in configs}
    root = Path(tempfile.mkdtemp(prefix="qgen-bench-sweep-"))
    try:
        for _ in range(args.repeats):
            for name, make in configs.items():
                walls[name].append(timed_sweep(plan, make(), root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if ray_start is not None:
            import ray

            ray.shutdown()
    print(f"load average at end:   {os.getloadavg()[0]:.2f}")
    print()
    print(f"{'executor':<12} {'wall s':>8} {'s/run':>7} {'runs/hour':>10}")
    med = {k: statistics.median(v) for k, v in walls.items()}
    for name, wall in med.items():
        print(f"{name:<12} {wall:8.1f} {wall / n:7.2f} {3600 * n / wall:10.0f}")
    print()
    a, b = med["local 1×2"], med["local 2×1"]
    print(f"2 workers × 1 thread vs 1 worker × 2 threads: {a / b:.2f}× the runs per hour")
    if "ray 2×1" in med:
        r = med["ray 2×1"]
        print(f"Ray vs local (both 2 workers × 1 thread): {r / b:.2f}× the wall time, "
              f"{(r - b) / n:+.2f} s per run; cluster start-up {ray_start:.1f} s "
              "(once per sweep, not included above)")
    print("(each wall time includes starting the worker processes: ~2-4 s of imports here)")


if __name__ == "__main__":
    main()
