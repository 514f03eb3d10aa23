"""``qgen study SWEEP --out DIR`` and ``qgen demo``: every stage of a study, with progress,
and the answers printed at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress, TaskID

from qgen.cli.common import (
    QUIET_OPT,
    check_run_options,
    make_progress,
    say,
    user_errors,
)
from qgen.cli.report import print_answers


class RichObserver:
    """Draws each stage of a study as a progress bar and prints one line when it ends."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Progress = make_progress(quiet, eta=True, transient=True)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichObserver:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def start(self, stage: str, total: int | None, info: str = "") -> None:
        self.tasks[stage] = self.progress.add_task(stage, total=total, info=info)

    def advance(self, stage: str, info: str = "") -> None:
        if stage in self.tasks:
            self.progress.update(self.tasks[stage], advance=1, info=info)

    def done(self, stage: str, seconds: float, summary: str = "") -> None:
        if stage in self.tasks:
            self.progress.remove_task(self.tasks.pop(stage))
        if not self.quiet:
            self.progress.console.print(f"{stage:<10} {seconds:7.1f} s  {summary}",
                                        highlight=False, markup=False)


def run_study_command(sweep: str, out: Path, *, fast: bool, workers: int, threads: int,
                      data_dir: Path | None, device: str, quiet: bool,
                      full: bool = False, weights: Path | None = None) -> Any:
    """The body of ``qgen study`` and ``qgen demo``: run, then print the answers."""
    from qgen.study import run_study

    check_run_options(device, threads, data_dir)
    with RichObserver(quiet) as obs:
        result = run_study(sweep, out, fast=fast, full=full, workers=workers, threads=threads,
                           data_dir=data_dir, device=device, observer=obs, weights=weights)
    if not quiet:
        print_answers(result.analysis)
    say(f"report: {result.report}")
    return result


def study(
    sweep: str = typer.Argument(..., help="Sweep YAML file, or a preset name (demo, …)."),
    out: Path = typer.Option(..., "--out", "-o", help="Study folder (runs/, report/, "
                                                      "results.parquet)."),
    fast: bool = typer.Option(False, "--fast", help="The sweep's study.fast overrides: a "
                                                    "first look."),
    full: bool = typer.Option(False, "--full", help="The sweep's study.full overrides "
                                                    "(everything: the demo's is all 19 "
                                                    "corruptions)."),
    workers: int = typer.Option(2, min=1, help="Runs trained and measured side by side."),
    threads: int = typer.Option(1, help="torch threads per run (the numbers depend on it)."),
    data_dir: Path | None = typer.Option(None, help="Where the dataset files are."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    weights: Path | None = typer.Option(None, help="Checkpoint every zoo model starts from "
                                                   "(its SHA-256 joins each spec)."),
    quiet: bool = QUIET_OPT,
) -> None:
    """Plan, train, post-pass, collect, analyse and report a study (resumable)."""
    with user_errors():
        run_study_command(sweep, out, fast=fast, workers=workers, threads=threads,
                          data_dir=data_dir, device=device, quiet=quiet, full=full,
                          weights=weights)


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Study folder."),
    fast: bool = typer.Option(False, "--fast", help="A first look: 8 runs (one setting, two "
                                                    "seeds) instead of 24."),
    full: bool = typer.Option(False, "--full", help="All 19 corruptions instead of the demo's "
                                                    "6 (adds minutes)."),
    data_dir: Path | None = typer.Option(None, help="Where Fashion-MNIST is."),
    workers: int = typer.Option(2, min=1, help="Runs side by side (the numbers do not "
                                               "depend on it)."),
    threads: int = typer.Option(1, help="torch threads per run (the numbers depend on it: "
                                        "the demo's are for 1)."),
    quiet: bool = QUIET_OPT,
) -> None:
    """The main job: `qgen study` on the demo preset (Fashion-MNIST, fp/8/4/2 bits)."""
    with user_errors():
        run_study_command("demo", out, fast=fast, workers=workers, threads=threads,
                          data_dir=data_dir, device="cpu", quiet=quiet, full=full)
