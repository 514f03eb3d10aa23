"""The main job: a small but real QGen study on Fashion-MNIST.

Runs the ``demo`` sweep preset (``qgen/configs/demo.yaml``: NiN depth 2 width 2 on a seeded
Fashion-MNIST subset, full precision and LSQ at 8, 4 and 2 bits) with the sweep engine,
computes the PAC-Bayes and sharpness measures of every model (plain and magnitude-aware, the
``default`` measure preset: latent weights perturbed with the quantizers active) and collects
the results table (Parquet and CSV beside the runs). Rerunning resumes: finished work is
reused. Progress is reported through callbacks; :mod:`qgen.cli` draws it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgen.config import Runtime

DEMO_PRESET = "demo"
#: the measures the demo computes: one σ/α search per family feeds .init, .orig, .flatness
DEMO_MEASURES = ("pacbayes.*", "sharpness.*")
#: the order in which bit widths are shown
LABEL_ORDER = ("fp", "w8a8", "w4a4", "w3a3", "w2a2")
#: torch threads per run: pinned, because thread count changes float sums and so the numbers
DEMO_THREADS = 1


def _label_key(label: str) -> tuple[int, str]:
    return (LABEL_ORDER.index(label) if label in LABEL_ORDER else len(LABEL_ORDER), label)


def run_demo(out: Path, *, data_dir: Path | None = None, workers: int = 2,
             run_sweep_fn: Callable[..., Any] | None = None,
             on_measured: Callable[..., None] | None = None) -> tuple[Any, Any]:
    """Run the demo sweep into ``out``, write ``results.parquet``/``.csv`` there; return the
    sweep report and the collected DataFrame (one row per run, sorted by bit width).

    Every run trains and is measured with ``DEMO_THREADS`` torch thread, so the numbers are
    the same on any machine with the same torch build; ``workers`` runs train side by side
    (at most one per core). ``run_sweep_fn(plan, runtime, executor)`` runs the sweep (default
    :func:`qgen.sweep.runner.run_sweep`; the CLI passes one that draws progress);
    ``on_measured(run, record, skipped)`` is called per measured run.
    """
    import torch

    from qgen.measures import MeasureSpec
    from qgen.measures.postpass import measure_runs
    from qgen.results import collect, write_table
    from qgen.sweep.executors import LocalExecutor, cpu_cores
    from qgen.sweep.plan import expand, load_sweep
    from qgen.sweep.runner import run_sweep

    plan = expand(load_sweep(DEMO_PRESET))
    runtime = Runtime(out_dir=out, data_dir=data_dir, quiet=True)
    workers = max(1, min(workers, cpu_cores() // DEMO_THREADS, len(plan.specs)))
    executor = LocalExecutor(workers=workers, threads=DEMO_THREADS)
    report = (run_sweep_fn or run_sweep)(plan, runtime, executor)
    torch.set_num_threads(DEMO_THREADS)
    measure_runs([Path(out) / rid for rid in plan.run_ids],
                 MeasureSpec.preset("default", names=list(DEMO_MEASURES)), data_dir=data_dir,
                 on_done=on_measured)
    df = collect(out)
    df = df.iloc[sorted(range(len(df)), key=lambda i: _label_key(str(df["hp.quant.label"][i])))]
    df = df.reset_index(drop=True)
    write_table(df, Path(out) / "results.parquet")
    write_table(df, Path(out) / "results.csv")
    return report, df
