"""``qgen theory RUN_DIR...``: quantization-noise statistics, the implied regularizer and the
noise-conditioned bound of trained runs, stored as the ``theory`` post-pass (``theory.json``;
see :mod:`qgen.theory.postpass` and docs/theory.md)."""

from __future__ import annotations

from pathlib import Path

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

SET_OPT = typer.Option(None, "--set", help="Override a setting: name=value (e.g. "
                                           "hutchinson_probes=32); repeatable.")

#: the values shown per run (when present)
SHOWN = ("noise.var_ratio.median", "reg.ratio_uniform", "reg.ratio_rounding", "bound.value",
         "bound.observed_test_error", "bound.observed_gap", "curv.trace")


def theory_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (runs/<id>)."),
    settings: list[str] | None = SET_OPT,
    data_dir: Path | None = DATA_DIR_OPT,
    device: str = DEVICE_OPT,
    threads: int | None = THREADS_OPT,
    force: bool = FORCE_OPT,
    quiet: bool = QUIET_OPT,
) -> None:
    """Quantization noise, its regularizer and bound for trained runs; stored in theory.json."""
    with user_errors():
        check_run_options(device, threads, data_dir)
        from qgen.theory.settings import TheorySpec

        spec = TheorySpec.from_dict(parse_settings(settings, "TheorySpec"))
        import torch

        from qgen.store import Resources, run_postpass_many
        from qgen.theory.postpass import THEORY

        if threads:
            torch.set_num_threads(threads)
        resources = Resources(data_dir=data_dir, device=device)
        progress, on_done = postpass_progress(quiet, len(run_dirs), "theory")
        with progress:
            records = run_postpass_many(THEORY, list(run_dirs), spec, force=force,
                                        resources=resources, on_done=on_done, strict=True)
        for rid, rec in records.items():
            values = rec.get("values") or {}
            shown = ", ".join(f"{k}={values[k]:.4g}" for k in SHOWN if k in values)
            console.print(f"{rid}: {escape(shown)}", highlight=False, soft_wrap=True)
