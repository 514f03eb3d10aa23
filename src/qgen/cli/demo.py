"""``qgen demo``: the main job, with progress and its tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from qgen.cli.common import QUIET_OPT, console, postpass_progress, say, user_errors
from qgen.cli.sweep import print_report, run_with_progress


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Run store directory."),
    data_dir: Path | None = typer.Option(None, help="Where Fashion-MNIST is."),
    workers: int = typer.Option(2, min=1, help="Runs trained side by side (each on one "
                                               "thread: the numbers do not depend on it)."),
    quiet: bool = QUIET_OPT,
) -> None:
    """The main job: a small real study on Fashion-MNIST (fp, 8, 4, 2 bits), as a table."""
    from qgen.demo import run_demo

    with user_errors():
        progress, on_measured = postpass_progress(quiet, 4, "measures")

        def sweep_fn(plan: Any, runtime: Any, executor: Any) -> Any:
            report = run_with_progress(plan, runtime, executor, quiet=quiet)
            print_report(report, quiet)
            return report

        with progress:
            _, df = run_demo(out, data_dir=data_dir, workers=workers, run_sweep_fn=sweep_fn,
                             on_measured=on_measured)
        for table in demo_tables(df):
            console.print(table)
        say(f"runs and results.parquet/.csv are in {out}/")


def _frame_table(df: Any, title: str, cols: list[tuple[str, str, str]]) -> Table:
    """A compact rich table of DataFrame columns (header, column, format)."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for name, _, _ in cols:
        left = name in ("bits", "status")
        table.add_column(name, justify="left" if left else "right", no_wrap=left,
                         min_width={"bits": 4, "status": 10}.get(name))
    for _, row in df.iterrows():
        cells = []
        for _, col, fmt in cols:
            v = row.get(col)
            try:
                cell = fmt.format(v)
            except (TypeError, ValueError):
                cell = str(v)
            family = col.removeprefix("measure.").removesuffix(".flatness")
            if row.get(f"meta.saturated.{family}") is True:
                cell += " (sat.)"
            if col == "status" and row.get("meta.healthy") is False:
                cell += " UNHEALTHY"
            cells.append(cell)
        table.add_row(*cells)
    return table


def demo_tables(df: Any) -> list[Table]:
    """Per bit width: the gaps; then the flatness measures, when measured."""
    gen = [("bits", "hp.quant.label", "{}"), ("status", "status", "{}"),
           ("train loss", "gen.train_loss", "{:.3f}"), ("test loss", "gen.test_loss", "{:.3f}"),
           ("loss gap", "gen.loss_gap", "{:.3f}"),
           ("train acc", "gen.train_accuracy", "{:.1%}"),
           ("test acc", "gen.test_accuracy", "{:.1%}"), ("acc gap", "gen.acc_gap", "{:.1%}")]
    tables = [_frame_table(df, "generalization gap by bit width (NiN 2x2, Fashion-MNIST "
                               "subset)", gen)]
    flat = [(c.removeprefix("measure.").removesuffix(".flatness"), c, "{:.4g}")
            for c in DEMO_MEASURE_COLUMNS if c in df.columns]
    if flat:
        title = ("flatness: 1/σ² (pacbayes), 1/α'² (sharpness); larger = sharper; "
                 "(sat.) = the search hit a bound")
        tables.append(_frame_table(df, title, [gen[0]] + flat))
    return tables


DEMO_MEASURE_COLUMNS = ("measure.pacbayes.flatness", "measure.pacbayes.mag.flatness",
                        "measure.sharpness.flatness", "measure.sharpness.mag.flatness")
