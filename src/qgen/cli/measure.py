"""``qgen measure RUN_DIR...``: generalization measures of trained runs, stored as the
``measures`` post-pass (``measures.json``; see :mod:`qgen.measures.postpass`). ``qgen sweep
measure`` shares its options and body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from qgen.cli.common import (
    DATA_DIR_OPT,
    DEVICE_OPT,
    FORCE_OPT,
    QUIET_OPT,
    THREADS_OPT,
    check_run_options,
    console,
    parse_settings,
    postpass_progress,
    user_errors,
)
from qgen.errors import QgenError

MEASURES_OPT = typer.Option(None, "--measures", "-m",
                            help="Comma list of names or patterns, e.g. "
                                 "'pacbayes.*,sharpness.flatness' (default: all).")
PRESET_OPT = typer.Option("default", help="default, dziugaite2020 or jiang2020.")
SET_OPT = typer.Option(None, "--set", help="Override a setting: name=value "
                                           "(e.g. eval_subset=1000); repeatable.")


def parse_measure_spec(preset: str, measures: str | None, settings: list[str] | None) -> Any:
    """A MeasureSpec from a preset name, a comma list of names/patterns and name=value pairs;
    the names are checked against the catalog here, before any work."""
    from qgen.measures.registry import resolve_names
    from qgen.measures.settings import MeasureSpec

    overrides = parse_settings(settings, "MeasureSpec")
    if measures is not None:
        names = [m.strip() for m in measures.split(",") if m.strip()]
        if not names:
            raise QgenError(f"--measures {measures!r}: no measure names; give names or "
                            "patterns such as 'pacbayes.*', or leave --measures out for all")
        overrides["names"] = names
    spec = MeasureSpec.preset(preset, **overrides)
    resolve_names(spec.names)
    return spec


def check_measure_options(measures: str | None, preset: str, settings: list[str] | None,
                          data_dir: Path | None, device: str, threads: int | None) -> Any:
    """Every option of the measure commands checked, before anything is touched; returns
    the MeasureSpec."""
    check_run_options(device, threads, data_dir)
    return parse_measure_spec(preset, measures, settings)


def measure_from_options(run_dirs: list[Any], spec: Any, data_dir: Path | None, device: str,
                         threads: int | None, force: bool, quiet: bool, *,
                         strict: bool) -> dict[str, Any]:
    """The body both measure commands share once the options are checked
    (:func:`check_measure_options`): threads, the post-pass with a progress bar.
    ``strict``: the runs were named by the user, so an incomplete one is an error (inside a
    store it is skipped)."""
    import torch

    from qgen.measures.postpass import measure_runs

    if threads:
        torch.set_num_threads(threads)
    progress, on_done = postpass_progress(quiet, len(run_dirs), "measures")
    with progress:
        return measure_runs(run_dirs, spec, data_dir=data_dir, device=device, force=force,
                            strict=strict, on_done=on_done)


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
        spec = check_measure_options(measures, preset, settings, data_dir, device, threads)
        records = measure_from_options(list(run_dirs), spec, data_dir, device, threads, force,
                                       quiet, strict=True)
        for rid, rec in records.items():
            vals = ", ".join(f"{k}={v:.4g}" for k, v in list(rec["values"].items())[:6])
            more = len(rec["values"]) - 6
            console.print(f"{rid}: {escape(vals)}" + (f" … (+{more})" if more > 0 else ""),
                          highlight=False)
