"""The main job: a small but real QGen study on Fashion-MNIST.

Runs the ``demo`` sweep preset (``qgen/configs/demo.yaml``: NiN depth 2 width 2 on a seeded
Fashion-MNIST subset, full precision and LSQ at 8, 4 and 2 bits) with the sweep engine,
computes the PAC-Bayes and sharpness measures of every model (plain and magnitude-aware, the
``default`` measure preset: latent weights perturbed with the quantizers active), collects
the results table (Parquet and CSV beside the runs) and prints the generalization gaps and
flatness of each bit width side by side. Rerunning resumes: finished work is reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgen.config import Runtime

DEMO_PRESET = "demo"
#: the measures the demo computes: one σ/α search per family feeds .init, .orig, .flatness
DEMO_MEASURES = ("pacbayes.*", "sharpness.*")
#: the order in which bit widths are shown
LABEL_ORDER = ("fp", "w8a8", "w4a4", "w3a3", "w2a2")


def _label_key(label: str) -> tuple[int, str]:
    return (LABEL_ORDER.index(label) if label in LABEL_ORDER else len(LABEL_ORDER), label)


#: torch threads per run: pinned, because thread count changes float sums and so the numbers
DEMO_THREADS = 1


def run_demo(out: Path, *, data_dir: Path | None = None, workers: int = 2,
             quiet: bool = False) -> Any:
    """Run the demo sweep into ``out``, write ``results.parquet``/``.csv`` there, return them.

    Every run trains and is measured with ``DEMO_THREADS`` torch thread, so the printed
    numbers are the same on any machine with the same torch build; ``workers`` runs train
    side by side (at most one per core). Returns the collected pandas DataFrame, one row per
    run, sorted by bit width.
    """
    import torch

    from qgen.measures import MeasureSpec
    from qgen.measures.cli import measure_with_progress
    from qgen.sweep.cli import print_report, run_with_progress
    from qgen.sweep.executors import LocalExecutor, cpu_cores
    from qgen.sweep.plan import expand, load_sweep
    from qgen.sweep.results import collect, write_table

    plan = expand(load_sweep(DEMO_PRESET))
    runtime = Runtime(out_dir=out, data_dir=data_dir, quiet=True)
    workers = max(1, min(workers, cpu_cores() // DEMO_THREADS, len(plan.specs)))
    report = run_with_progress(plan, runtime,
                               LocalExecutor(workers=workers, threads=DEMO_THREADS),
                               quiet=quiet)
    print_report(report, quiet)
    torch.set_num_threads(DEMO_THREADS)
    run_dirs = [Path(out) / rid for rid in plan.run_ids]
    measure_with_progress(run_dirs, MeasureSpec.preset("default", names=list(DEMO_MEASURES)),
                          data_dir=data_dir, device="cpu", force=False, quiet=quiet)
    df = collect(out)
    df = df.iloc[sorted(range(len(df)), key=lambda i: _label_key(str(df["hp.quant.label"][i])))]
    write_table(df, Path(out) / "results.parquet")
    write_table(df, Path(out) / "results.csv")
    return df.reset_index(drop=True)
