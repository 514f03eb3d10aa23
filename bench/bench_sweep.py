"""Sweep throughput: runs per hour of a small grid under different executors, side by side.

Measures, in one invocation and on the same grid (8 runs on 1,000 Fashion-MNIST images, NiN
depth 2 width 1, W4A4 and FP, ``--epochs`` epochs each):

- local, 1 worker × 2 threads   vs   local, 2 workers × 1 thread;
- the compiled training path (``train.compile: true``), 2 workers × 1 thread, against the
  eager one: runs per hour with the compilation included, from a cold inductor cache (a
  fresh ``TORCHINDUCTOR_CACHE_DIR``, shared by the sweep's workers) and again with the cache
  that first sweep filled (a second sweep of the same architectures);
- what bounds 2 × 1 against 1 × 2: one training step of the grid's network timed in a
  process alone (1 and 2 threads) and in two 1-thread processes at once;
- Ray (local cluster), 2 workers × 1 thread vs the local executor with the same workers and
  threads: Ray's overhead per run, with the cluster's start-up reported on its own.

Each configuration writes a fresh run store; configurations are interleaved round by round
(``--repeats``) so that a shared machine's load drifts over all of them alike; medians are
reported. Usage::

    python bench/bench_sweep.py [--repeats 1] [--runs 8] [--epochs 20] [--no-ray] [--no-compile]
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


def make_plan(runs: int, epochs: int, compiled: bool = False):
    """A grid of ``runs`` Fashion-MNIST runs: bits {fp, 4} × learning rates × seeds."""
    from qgen.sweep.plan import expand, parse_sweep

    lrs = [0.02, 0.05, 0.1, 0.2][: max(1, runs // 4)]
    seeds = list(range(max(1, runs // (2 * len(lrs)))))
    sweep = {"name": "bench", "base": {
        "data": {"name": "fashion-mnist", "train_subset": 1000, "test_subset": 500},
        "model": {"name": "nin", "depth": 2, "width": 1},
        "train": {"max_epochs": epochs, "batch_size": 50, "target_ce": 0.0,
                  "compile": compiled}},
        "axes": {"quant.bits": ["fp", 4], "train.lr": lrs}, "seeds": seeds}
    return expand(parse_sweep(sweep))


def timed_sweep(plan, executor, root: Path, cache: Path | None = None) -> tuple[float, float]:
    """Wall seconds to run ``plan`` into a fresh store with ``executor`` (with the inductor
    cache ``cache``, else a fresh, empty one), and the compile seconds its runs recorded."""
    import json

    from qgen.config import Runtime
    from qgen.sweep.runner import run_sweep

    out = Path(tempfile.mkdtemp(dir=root, prefix="store-"))
    cache = cache or Path(tempfile.mkdtemp(dir=root, prefix="inductor-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    t0 = time.perf_counter()
    report = run_sweep(plan, Runtime(out_dir=out), executor)
    wall = time.perf_counter() - t0
    if report.failed or report.ran != len(plan.specs):
        raise RuntimeError(f"bench sweep did not finish cleanly: {report}")
    compile_s = sum(json.loads((out / rid / "result.json").read_text()).get("compile", {})
                    .get("compile_s", 0.0) for rid in plan.run_ids)
    shutil.rmtree(out, ignore_errors=True)
    return wall, compile_s


PROBE = """
import sys, time, torch, torch.nn.functional as F
torch.set_num_threads(int(sys.argv[1]))
from qgen.config import ModelSpec
from qgen.models import build_model
torch.manual_seed(0)
m = build_model(ModelSpec("nin", 2, 1), 1, 10, 28)
opt = torch.optim.SGD(m.parameters(), lr=0.01)
x, y = torch.randn(50, 1, 28, 28), torch.randint(0, 10, (50,))
def step():
    opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step()
for _ in range(5):
    step()
t = time.perf_counter()
for _ in range(150):
    step()
print((time.perf_counter() - t) / 150)
"""


def scaling_probe() -> dict[str, float]:
    """Seconds per training step of the grid's network (NiN d2 w1, batch 50, 28 px) in a
    process alone with 1 thread, with 2 threads, and in two 1-thread processes at once: the
    ceiling of what 2 workers × 1 thread can gain over 1 × 2 here, without any run overhead."""
    import subprocess
    import sys

    def start(threads: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", PROBE, str(threads)],
                                stdout=subprocess.PIPE, text=True)

    def wait(p: subprocess.Popen) -> float:
        return float(p.communicate()[0])

    alone = wait(start(1))
    two = wait(start(2))
    pair = [start(1), start(1)]
    together = [wait(p) for p in pair]
    return {"1 thread alone": alone, "2 threads": two, "1 thread, 2 processes at once":
            statistics.mean(together), "ceiling": (2 / statistics.mean(together)) / (1 / two)}


def main() -> None:
    """Run the comparison and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()

    import torch

    import qgen
    from qgen.sweep.executors import LocalExecutor, RayExecutor, cpu_cores

    plan = make_plan(args.runs, args.epochs)
    compiled_plan = make_plan(args.runs, args.epochs, compiled=True)
    n = len(plan.specs)
    cores = cpu_cores()
    configs = {
        "local 1×2": (plan, lambda: LocalExecutor(workers=1, threads=min(2, cores))),
        "local 2×1": (plan, lambda: LocalExecutor(workers=2, threads=1, check_cores=False)),
    }
    if not args.no_compile:
        configs["compiled 2×1"] = (compiled_plan, lambda: LocalExecutor(
            workers=2, threads=1, check_cores=False))
        # the same sweep again with the inductor cache the cold one filled
        configs["compiled, warm"] = (compiled_plan, lambda: LocalExecutor(
            workers=2, threads=1, check_cores=False))
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
            configs["ray 2×1"] = (plan, lambda: RayExecutor(workers=2, threads=1, quiet=True))

    print(f"machine: {cpu_name()}, {cores} usable cores, {platform.machine()}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, "
          f"qgen {qgen.__version__}" + (f", ray {ray_version}" if ray_version else ""))
    print(f"grid: {n} runs (fp and W4A4) on Fashion-MNIST (1,000 train images), NiN depth 2 "
          f"width 1, {args.epochs} epochs, batch 50; {args.repeats} round(s), medians")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    walls: dict[str, list[float]] = {k: [] for k in configs}
    compiles: dict[str, list[float]] = {k: [] for k in configs}
    root = Path(tempfile.mkdtemp(prefix="qgen-bench-sweep-"))
    try:
        for _ in range(args.repeats):
            warm: Path | None = None
            for name, (grid, make) in configs.items():
                cache = None
                if name == "compiled 2×1":
                    cache = warm = Path(tempfile.mkdtemp(dir=root, prefix="inductor-"))
                elif name == "compiled, warm":
                    cache = warm
                wall, compile_s = timed_sweep(grid, make(), root, cache)
                walls[name].append(wall)
                compiles[name].append(compile_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if ray_start is not None:
            import ray

            ray.shutdown()
    print(f"load average at end:   {os.getloadavg()[0]:.2f}")
    print()
    print(f"{'executor':<13} {'wall s':>8} {'s/run':>7} {'runs/hour':>10} {'compile s':>10}")
    med = {k: statistics.median(v) for k, v in walls.items()}
    for name, wall in med.items():
        comp = statistics.median(compiles[name])
        print(f"{name:<13} {wall:8.1f} {wall / n:7.2f} {3600 * n / wall:10.0f} {comp:10.1f}")
    print()
    a, b = med["local 1×2"], med["local 2×1"]
    print(f"2 workers × 1 thread vs 1 worker × 2 threads: {a / b:.2f}× the runs per hour")
    probe = scaling_probe()
    print("  what bounds it, one training step of the grid's network without any run "
          "overhead: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in probe.items()
                                   if k != "ceiling")
          + f" → at most {probe['ceiling']:.2f}× from 2 × 1 over 1 × 2")
    if "compiled 2×1" in med:
        c, w = med["compiled 2×1"], med["compiled, warm"]
        print(f"compiled vs eager (both 2 workers × 1 thread, compilation included): "
              f"{b / c:.2f}× the runs per hour from a cold inductor cache, {b / w:.2f}× "
              "with the cache a first sweep filled")
    if "ray 2×1" in med:
        r = med["ray 2×1"]
        print(f"Ray vs local (both 2 workers × 1 thread): {r / b:.2f}× the wall time, "
              f"{(r - b) / n:+.2f} s per run; cluster start-up {ray_start:.1f} s "
              "(once per sweep, not included above)")
    print("(each wall time includes starting the worker processes: ~2-4 s of imports here)")


if __name__ == "__main__":
    main()
