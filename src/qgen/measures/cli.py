"""Command line for measures: ``qgen measure RUN_DIR...`` and ``qgen sweep measure DIR``.

Both store ``measures.json`` in each run directory (see :mod:`qgen.measures.store`); both
are resumable: measures already stored with the same settings are not computed again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from qgen.cliutil import console, err_console, make_progress, user_errors
from qgen.errors import QgenError


def parse_measure_spec(preset: str, measures: str | None, settings: list[str] | None) -> Any:
    """A MeasureSpec from a preset name, a comma list of names/patterns and key=value pairs."""
    import yaml

    from qgen.measures.settings import MeasureSpec

    overrides: dict[str, Any] = {}
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise QgenError(f"--set {item!r}: must look like name=value (a MeasureSpec field)")
        overrides[key.strip()] = yaml.safe_load(value)
    if measures:
        overrides["names"] = [m.strip() for m in measures.split(",") if m.strip()]
    return MeasureSpec.preset(preset, **overrides)


def measure_with_progress(run_dirs: list[Path], spec: Any, *, data_dir: Path | None,
                          device: str, force: bool, quiet: bool) -> dict[str, Any]:
    """Measure each run with a progress bar; print one line per run; return the records."""
    from qgen.measures.store import measure_runs

    with make_progress(quiet) as progress:
        task = progress.add_task("measures", total=len(run_dirs), info="")

        def on_done(d: Path, rec: dict[str, Any] | None, skipped: str | None) -> None:
            progress.update(task, advance=1, info=d.name)
            if quiet:
                return
            if skipped:
                err_console.print(f"{d.name}: skipped ({skipped})", highlight=False,
                                  markup=False)
            elif rec is not None and rec.get("reused"):
                err_console.print(f"{d.name}: {len(rec['values'])} measures already stored",
                                  highlight=False, markup=False)
            elif rec is not None:
                err_console.print(f"{d.name}: {len(rec['values'])} measures "
                                  f"({rec.get('wall_time_s', 0.0):.1f} s)",
                                  highlight=False, markup=False)

        return measure_runs(run_dirs, spec, data_dir=data_dir, device=device, force=force,
                            on_done=on_done)


# Options shared by `qgen measure` and `qgen sweep measure` (typer accepts one OptionInfo
# as the default of several commands).
MEASURES_OPT = typer.Option(None, "--measures", "-m",
                            help="Comma list of names or patterns, e.g. "
                                 "'pacbayes.*,sharpness.flatness' (default: all).")
PRESET_OPT = typer.Option("default", help="default, dziugaite2020 or jiang2020.")
SET_OPT = typer.Option(None, "--set", help="Override a setting: name=value "
                                           "(e.g. eval_subset=1000); repeatable.")
DATA_DIR_OPT = typer.Option(None, help="Where the runs' datasets are.")
DEVICE_OPT = typer.Option("cpu", help="cpu or cuda.")
THREADS_OPT = typer.Option(None, help="torch threads.")
FORCE_OPT = typer.Option(False, help="Recompute, replacing stored measures.")
QUIET_OPT = typer.Option(False, "--quiet", "-q")


def measure_from_options(run_dirs: list[Path], measures: str | None, preset: str,
                         settings: list[str] | None, data_dir: Path | None, device: str,
                         threads: int | None, force: bool, quiet: bool) -> dict[str, Any]:
    """The body both measure commands share: threads, spec, measuring with progress."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    spec = parse_measure_spec(preset, measures, settings)
    return measure_with_progress(run_dirs, spec, data_dir=data_dir, device=device,
                                 force=force, quiet=quiet)


def measure_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (runs/<id>)."),
    measures: str | None = MEASURES_OPT,
    preset: str = PRESET_OPT,
    settings: list[str] | None = SET_OPT,
    data_dir: Path | None = DATA_DIR_OPT,
    device: str = DEVICE_OPT,
    threads: int | None = THREADS_OPT,
    force: bool = FORCE_OPT,
    quiet: bool = QUIET_OPT,
) -> None:
    """Compute generalization measures of trained runs; store them in measures.json."""
    with user_errors():
        records = measure_from_options(list(run_dirs), measures, preset, settings, data_dir,
                                       device, threads, force, quiet)
        for rid, rec in records.items():
            vals = ", ".join(f"{k}={v:.4g}" for k, v in list(rec["values"].items())[:6])
            more = len(rec["values"]) - 6
            console.print(f"{rid}: {escape(vals)}" + (f" … (+{more})" if more > 0 else ""),
                          highlight=False)
