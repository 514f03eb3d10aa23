"""``qgen sweep plan|run|status|measure`` and ``qgen collect``.

:data:`sweep_app` is mounted as ``qgen sweep``; :func:`collect_command` as ``qgen collect``.
Heavy imports (torch, pandas, Ray) happen inside the commands so that ``qgen --help`` stays
fast.

Exit codes: 0 done; 1 the sweep ran to the end but some planned runs have failed (their
``error.json`` says why); 2 bad input (one line on stderr).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from qgen.cli.common import (
    DATA_DIR_OPT,
    DEVICE_OPT,
    FORCE_OPT,
    QUIET_OPT,
    THREADS_OPT,
    check_file_path,
    check_run_options,
    console,
    make_progress,
    say,
    user_errors,
)
from qgen.cli.measure import (
    MEASURES_OPT,
    PRESET_OPT,
    SET_OPT,
    check_measure_options,
    measure_from_options,
)
from qgen.errors import QgenError

sweep_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Plan, run and follow sweeps of many runs (grids over spec fields).")


def _fmt_value(value: Any) -> str:
    """An axis value for a table cell ('fp' for a null bit width), markup escaped."""
    return "fp" if value is None else escape(str(value))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


@sweep_app.command("plan")
def plan_command(
    sweep: str = typer.Argument(..., help="Sweep YAML file, or a preset name (demo, …)."),
    show: int = typer.Option(5, min=0, help="How many runs to list as examples."),
) -> None:
    """Validate a sweep and show its runs: count, axes, duplicates and example specs."""
    from qgen.sweep.plan import expand, load_sweep

    with user_errors():
        sw = load_sweep(sweep)
        plan = expand(sw)
        console.print(f"sweep [bold]{escape(sw.name)}[/] ({escape(sw.source)}): "
                      f"[bold]{len(plan.specs)}[/] runs"
                      + (f" — {escape(sw.description)}" if sw.description else ""),
                      highlight=False)
        axes = dict(sw.axes)
        if sw.seeds is not None:
            axes["train.seed"] = sw.seeds
        table = Table(title="axes", title_justify="left")
        table.add_column("field")
        table.add_column("values")
        table.add_column("n", justify="right")
        for key, values in axes.items():
            table.add_row(key, ", ".join(_fmt_value(v) for v in values), str(len(values)))
        console.print(table)
        dup = len(plan.duplicates)
        console.print(f"grid: {plan.grid_size} points → {len(plan.specs)} distinct runs"
                      + (f"; {dup} point{'s' if dup != 1 else ''} repeat a run (same run id) "
                         "and are counted once" if dup else ""), highlight=False)
        for rid, point in plan.duplicates[:show]:
            console.print(f"  duplicate of {rid}: {point}", highlight=False, markup=False)
        if show:
            ex = Table(title=f"first {min(show, len(plan.specs))} runs", title_justify="left")
            ex.add_column("run id", no_wrap=True, min_width=16)
            for key in axes:
                ex.add_column(key)
            for spec, point in list(zip(plan.specs, plan.points, strict=True))[:show]:
                ex.add_row(spec.run_id, *(_fmt_value(point[k]) for k in axes))
            console.print(ex)
            console.print("first run's spec:")
            console.print_json(json.dumps(plan.specs[0].to_dict()))


def _executor(name: str, workers: int, threads: int | None, address: str | None,
              device: str, gpus: str | None, gpus_per_run: float | None,
              max_retries: int | None, quiet: bool) -> Any:
    from qgen.sweep.executors import LocalExecutor, RayExecutor

    gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    if name == "local":
        if address:
            raise QgenError("--address: only for --executor ray")
        return LocalExecutor(workers=workers, threads=threads, gpus=gpu_list,
                             max_retries=1 if max_retries is None else max_retries)
    if name == "ray":
        if gpus:
            raise QgenError("--gpus: not for --executor ray (Ray assigns GPUs); "
                            "use --gpus-per-run")
        if gpus_per_run is None:
            gpus_per_run = 1.0 if device.startswith("cuda") else 0.0
        return RayExecutor(address=address, workers=workers, threads=threads,
                           gpus_per_run=gpus_per_run,
                           max_retries=2 if max_retries is None else max_retries, quiet=quiet)
    raise QgenError(f"--executor: must be local or ray, got {name!r}")


@sweep_app.command("run")
def run_command(
    sweep: str = typer.Argument(..., help="Sweep YAML file, or a preset name (demo, …)."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Run store directory."),
    executor: str = typer.Option("local", help="local (worker processes) or ray."),
    workers: int = typer.Option(1, help="Runs at once (local: worker processes; ray: "
                                       "concurrent tasks on a local cluster)."),
    threads: int | None = typer.Option(None, help="torch threads per run (default: "
                                                     "cores / workers)."),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="Run again the runs that failed before."),
    address: str | None = typer.Option(None, help="Ray cluster address (e.g. auto or "
                                                     "host:6379); default: a local cluster."),
    data_dir: Path | None = typer.Option(None, help="Where the dataset files are (the same "
                                                       "path on every Ray node)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    gpus: str | None = typer.Option(None, help="local: GPU ids to hand out round-robin to "
                                                  "workers, e.g. 0,1 (default: all)."),
    gpus_per_run: float | None = typer.Option(None, help="ray: GPUs per run, fractional "
                                                            "to share one (default 1 on cuda)."),
    max_retries: int | None = typer.Option(None, min=0, help="Retries after a worker "
                                              "crash (default: local 1, ray 2)."),
    download: bool = typer.Option(False, help="Download a missing dataset (online only)."),
    weights: Path | None = typer.Option(
        None, help="Checkpoint every run's zoo model starts from (the same path on every Ray "
                   "node); its SHA-256 joins each spec."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run every run of a sweep that has no result yet in --out (rerun to resume)."""
    from qgen.config import Runtime
    from qgen.sweep.plan import expand, load_sweep

    with user_errors():
        check_run_options(device, threads, data_dir)
        sw = load_sweep(sweep)
        plan = expand(sw).with_weights(weights)
        ex = _executor(executor, workers, threads, address, device, gpus, gpus_per_run,
                       max_retries, quiet)
        runtime = Runtime(out_dir=out, data_dir=data_dir, device=device, quiet=True,
                          download=download, weights=weights)
        report = run_with_progress(plan, runtime, ex, retry_failed=retry_failed,
                                   check_data=address is None, quiet=quiet)
        print_report(report, quiet)
        if report.failed or report.skipped_failed:
            raise typer.Exit(1)


def run_with_progress(plan: Any, runtime: Any, ex: Any, *, retry_failed: bool = False,
                      check_data: bool = True, quiet: bool = False) -> Any:
    """Run a planned sweep with a live progress bar (none with ``quiet``); return its report."""
    from qgen.sweep.runner import run_sweep

    name = plan.sweep.name
    progress = make_progress(quiet, eta=True, transient=False)
    state: dict[str, Any] = {}

    def on_start(to_run: int, done: int) -> None:
        # said once the data is found and the store locked, so a refusal is the only line
        if not quiet:
            say(f"sweep {name}: {len(plan.specs)} runs → {runtime.out_dir} ({ex.name}, "
                f"{ex.concurrency} × {ex.threads} threads, {runtime.device})", err=True)
        state["task"] = progress.add_task(f"sweep {name}", total=to_run,
                                          info=f"{done} already done")
        progress.start()

    def on_done(outcome: Any) -> None:
        progress.update(state["task"], advance=1, info=f"{outcome.run_id} {outcome.status}")

    try:
        return run_sweep(plan, runtime, ex, retry_failed=retry_failed, check_data=check_data,
                         on_start=on_start, on_done=on_done)
    finally:
        if "task" in state:  # a bar that never started draws nothing, not even a blank line
            progress.stop()


def print_report(report: Any, quiet: bool) -> None:
    """One line on what a sweep did, then its failures."""
    ran = report.ran - len(report.failed)
    line = (f"{report.planned} planned: {report.already_done} already done, ran {report.ran} "
            f"({ran} finished: {report.converged} converged, {report.max_epochs} max_epochs, "
            f"{report.diverged} diverged; {len(report.failed)} failed)")
    if report.skipped_failed:
        line += (f"; {len(report.skipped_failed)} failed before and skipped "
                 "(--retry-failed runs them again)")
    console.print(line, highlight=False, markup=False)
    if report.duplicates and not quiet:
        console.print(f"{report.duplicates} grid points repeated a run and were counted once",
                      highlight=False, markup=False)
    for rid, message in report.failed[:10]:
        first = message.splitlines()[0] if message else ""
        console.print(f"  failed {rid}: {first} (see {report.out_dir / rid / 'error.json'})",
                      highlight=False, soft_wrap=True, markup=False)
    if len(report.failed) > 10:
        console.print(f"  … and {len(report.failed) - 10} more", highlight=False, markup=False)


@sweep_app.command("measure")
def measure_store_command(
    out: Path = typer.Argument(..., help="Run store directory of a sweep."),
    measures: str | None = MEASURES_OPT,
    preset: str = PRESET_OPT,
    settings: list[str] | None = SET_OPT,
    data_dir: Path | None = DATA_DIR_OPT,
    device: str = DEVICE_OPT,
    threads: int | None = THREADS_OPT,
    force: bool = FORCE_OPT,
    quiet: bool = QUIET_OPT,
) -> None:
    """Measure every finished run of a store (resumable post-pass; diverged runs skipped)."""
    from qgen.measures.postpass import MEASURES
    from qgen.store import run_dirs, store_lock

    with user_errors():
        dirs = run_dirs(out)
        spec = check_measure_options(measures, preset, settings, data_dir, device, threads)
        require_usable_runs(out, dirs, MEASURES, "measure")
        with store_lock(out):
            records = measure_from_options(dirs, spec, data_dir, device, threads, force,
                                           quiet, strict=False)
        console.print(f"{len(records)} runs measured in {out}", highlight=False)


def require_usable_runs(out: Path, dirs: list[Any], postpass: Any, what: str) -> None:
    """A store with nothing to ``what`` is an error (one line, the first reason): empty, or
    every run incomplete, damaged or diverged. Inside a store such runs are skipped, but a
    store where all are is most likely the wrong folder."""
    from qgen.store import check_postpass_input

    if not dirs:
        raise QgenError(f"{out}: no runs to {what} (the store is empty)")
    first = None
    for run in dirs:
        try:
            check_postpass_input(postpass, run)
            return
        except QgenError as exc:
            first = first or str(exc)
    n = len(dirs)
    raise QgenError(f"{out}: no runs to {what}: {'the' if n == 1 else 'all'} {n} run "
                    f"director{'y is' if n == 1 else 'ies are'} incomplete, damaged or "
                    f"diverged ({first})")


@sweep_app.command("status")
def status_command(
    out: Path = typer.Argument(..., help="Run store directory of a sweep."),
) -> None:
    """Done / failed / diverged / pending counts of a store, and an ETA while it runs."""
    from qgen.store import run_dirs
    from qgen.sweep.status import store_status

    with user_errors():
        st = store_status(out)
        if st.manifest is None and not run_dirs(out):
            raise QgenError(f"{out}: not a run store (no sweep.json and no run directories)")
        name = (st.manifest or {}).get("name", "?")
        table = Table(title=f"sweep {name} in {out}", title_justify="left")
        table.add_column("runs")
        table.add_column("count", justify="right")
        if st.planned is not None:
            table.add_row("planned", str(st.planned))
        table.add_row("done", str(st.done))
        table.add_row("  converged", str(st.converged))
        table.add_row("  max_epochs", str(st.max_epochs))
        table.add_row("  diverged", str(st.diverged))
        table.add_row("failed", str(st.failed))
        table.add_row("pending", "?" if st.pending is None else str(st.pending))
        if st.extra:
            table.add_row("not in sweep.json", str(st.extra))
        console.print(table)
        if st.planned is None:
            console.print("no sweep.json here: pending runs are unknown", highlight=False)
        if st.running:
            console.print(f"running ({st.running}); ETA {_duration(st.eta_s)}",
                          highlight=False, markup=False)
        elif st.manifest and st.pending:
            console.print("not running; `qgen sweep run` with the same sweep finishes it",
                          highlight=False, markup=False)
        if st.failed_ids:
            console.print(f"failed runs: {', '.join(st.failed_ids[:5])}"
                          + (" …" if len(st.failed_ids) > 5 else "")
                          + " (error.json in each)", highlight=False, markup=False)


def collect_command(
    out: Path = typer.Argument(..., help="Run store directory."),
    output: Path = typer.Option(Path("results.parquet"), "--output", "-o",
                                help="Table to write: .parquet or .csv."),
) -> None:
    """One tidy row per run (hp.*, gen.*, measure.*, robust.*, theory.*) as Parquet or CSV."""
    from qgen.results import collect, summarize, write_table

    with user_errors():
        if output.suffix.lower() not in (".parquet", ".csv"):
            raise QgenError(f"--output: {output} must end in .parquet or .csv")
        check_file_path(output, "--output", "results.parquet")
        df = collect(out)
        skipped = df.attrs.get("skipped", [])
        if df.empty:
            if not skipped:
                raise QgenError(f"{out}: no runs to collect (the store is empty)")
            rid, why = skipped[0]
            n = len(skipped)
            raise QgenError(f"{out}: no runs to collect: {'the' if n == 1 else 'all'} {n} "
                            f"run director{'y is' if n == 1 else 'ies are'} damaged "
                            f"({out / rid}: {why})")
        for rid, why in skipped:
            say(f"warning: {out / rid}: not collected ({why})", err=True)
        write_table(df, output)
        counts = ", ".join(f"{v} {k}" for k, v in summarize(df).items()) or "no runs"
        say(f"wrote {len(df)} rows × {len(df.columns)} columns ({counts}) to {output}")
