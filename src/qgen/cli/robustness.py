"""``qgen robustness RUN_DIR...``: loss, accuracy and gap under distortion of trained runs on
corrupted test data, stored as the ``robustness`` post-pass (``robustness.json``; see
:mod:`qgen.robustness.postpass` and docs/robustness.md)."""

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

CORRUPTIONS_OPT = typer.Option(
    None, "--corruptions", "-c",
    help="Comma-separated corruptions or sets (all, benchmark, extra, demo, noise, blur, "
         "weather, digital); default all 19.")
SEVERITIES_OPT = typer.Option(None, "--severities", "-s",
                              help="Comma-separated severities 1..5; default all five.")
RELEASED_OPT = typer.Option(None, "--released-dir",
                            help="Folder of the released CIFAR-10-C/100-C .npy files.")
SET_OPT = typer.Option(None, "--set", help="Override a setting: name=value (e.g. "
                                           "test_examples=500); repeatable.")


def robustness_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (runs/<id>)."),
    corruptions: str | None = CORRUPTIONS_OPT,
    severities: str | None = SEVERITIES_OPT,
    released_dir: Path | None = RELEASED_OPT,
    settings: list[str] | None = SET_OPT,
    data_dir: Path | None = DATA_DIR_OPT,
    device: str = DEVICE_OPT,
    threads: int | None = THREADS_OPT,
    force: bool = FORCE_OPT,
    quiet: bool = QUIET_OPT,
) -> None:
    """Accuracy and gap under distortion (19 corruptions × 5 severities) of trained runs;
    stored in robustness.json."""
    with user_errors():
        check_run_options(device, threads, data_dir)
        from qgen.robustness.postpass import ROBUSTNESS, settings_from_dict

        fields = parse_settings(settings, "RobustnessSpec")
        if corruptions is not None:
            fields["corruptions"] = corruptions
        if severities is not None:
            fields["severities"] = severities
        if released_dir is not None:
            fields["released_dir"] = str(released_dir)
        spec = settings_from_dict(fields)
        import torch

        from qgen.store import Resources, run_postpass_many

        if threads:
            torch.set_num_threads(threads)
        resources = Resources(data_dir=data_dir, device=device)
        progress, on_done = postpass_progress(quiet, len(run_dirs), "robustness")
        with progress:
            records = run_postpass_many(ROBUSTNESS, list(run_dirs), spec, force=force,
                                        resources=resources, on_done=on_done, strict=True)
        for rid, rec in records.items():
            v = rec.get("values") or {}
            line = (f"{rid}: clean acc {v.get('clean_acc', float('nan')):.4f}, mean acc "
                    f"{v.get('mean_acc', float('nan')):.4f} over {len(rec.get('corruptions', []))}"
                    f" corruptions × {len(rec.get('severities', []))} severities, mean gap "
                    f"{v.get('mean_gap', float('nan')):.4f} ({rec.get('source')})")
            console.print(escape(line), highlight=False, soft_wrap=True)
