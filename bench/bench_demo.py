"""The demo's wall time by stage and the peak memory of the whole run.

Runs ``qgen demo`` (``--fast`` for the first look) into a fresh folder as a new user would,
samples the resident memory of the whole process tree (the CLI and its worker processes,
summed) every 0.2 s from /proc, and prints the stage timings the study records in
``study.json`` (setup = everything before the first stage: imports, plan, data check).

With ``--compare-layout`` it runs the same study twice, side by side in one run of this
script: two workers of one torch thread each (the demo's default) against one worker with
two threads, and prints the ratio of their wall times.

``--keep DIR`` keeps the first study's output (runs, results table, report) in DIR.

Usage: .venv/bin/python bench/bench_demo.py [--fast] [--compare-layout] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QGEN = [sys.executable, "-m", "qgen"]


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            ppid, resident = int(parts[1]), int(parts[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = resident * page
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


#: the order of the stages in a study.json written before it recorded "stages"
STAGE_ORDER = ("setup", "train", "measures", "robustness", "theory", "collect", "analysis",
               "report")


def run_demo(args: list[str], keep: Path | None = None) -> dict:
    """Run ``qgen demo ARGS`` in a fresh folder; wall time, peak tree RSS, stage timings.
    With ``keep``, the output is moved there afterwards (which must not exist)."""
    out = Path(tempfile.mkdtemp(prefix="qgen-bench-demo-")) / "demo-out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([*QGEN, "demo", "--out", str(out), "--quiet", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"qgen demo {' '.join(args)} failed ({proc.returncode}): "
                         f"{stderr.strip()[-500:]}")
    study = json.loads((out / "study.json").read_text())
    timings = study["timings_s"]
    timings = {"setup": wall - sum(timings.values()), **timings}
    order = ["setup", *study.get("stages", STAGE_ORDER[1:])]
    timings = {name: timings[name] for name in order if name in timings}
    if keep is not None:
        shutil.move(str(out), str(keep))
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"args": args, "wall_s": wall, "peak_rss_gib": peak[0] / 2 ** 30,
            "timings_s": timings, "runs": len(study["runs"]), "workers": study["workers"],
            "threads": study["threads"]}


def _print(r: dict) -> None:
    print(f"qgen demo {' '.join(r['args'])}: {r['runs']} runs, {r['workers']} worker(s) × "
          f"{r['threads']} thread(s)")
    for stage, s in r["timings_s"].items():
        print(f"  {stage:<12} {s:8.1f} s")
    print(f"  {'total':<12} {r['wall_s']:8.1f} s   peak memory {r['peak_rss_gib']:.2f} GiB "
          "(whole process tree)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fast", action="store_true", help="the first look (qgen demo --fast)")
    ap.add_argument("--compare-layout", action="store_true",
                    help="also run 1 worker × 2 threads and print the ratio")
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep the (first) study's output in this new folder")
    opts = ap.parse_args()
    import torch

    import qgen

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, torch {torch.__version__}, "
          f"qgen {qgen.__version__}, load {os.getloadavg()[0]:.2f}")
    base = ["--fast"] if opts.fast else []
    if opts.keep is not None and opts.keep.exists():
        raise SystemExit(f"--keep {opts.keep}: already exists; name a new folder")
    a = run_demo(base + ["--workers", "2"], keep=opts.keep)
    _print(a)
    if opts.compare_layout:
        b = run_demo(base + ["--workers", "1", "--threads", "2"])
        _print(b)
        print(f"ratio (1 worker × 2 threads) / (2 workers × 1 thread): "
              f"{b['wall_s'] / a['wall_s']:.2f}")


if __name__ == "__main__":
    main()
