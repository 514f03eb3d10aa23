"""What every command shares: consoles, the one-line error guard, progress bars, the options
that several commands take, and reading ``--set name=value`` overrides."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from qgen.errors import QgenError

console = Console()
err_console = Console(stderr=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a QgenError into one line on stderr and exit code 2."""
    try:
        yield
    except QgenError as exc:
        # escaped: messages hold brackets ("pip install 'qgen[ray]'") that rich reads as markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(2) from None


def say(text: str, *, err: bool = False) -> None:
    """Print plain text (no markup, no highlighting)."""
    (err_console if err else console).print(text, highlight=False, markup=False,
                                            soft_wrap=True)


def make_progress(quiet: bool, eta: bool = False, transient: bool = True) -> Progress:
    """A rich progress bar on stderr (disabled with --quiet)."""
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    if eta:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=err_console, disable=quiet, transient=transient)


def parse_settings(items: list[str] | None, what: str) -> dict[str, Any]:
    """``--set name=value`` pairs as a dict; values are read as YAML scalars (so ``4``,
    ``0.1``, ``true``, ``null`` and ``fp`` mean what they look like)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise QgenError(f"--set {item!r}: must look like name=value (a {what} field)")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise QgenError(f"--set {item!r}: the value is not a plain value") from None
    return out


def check_threads(threads: int | None) -> int | None:
    """``--threads``: None (default) or an integer >= 1."""
    if threads is not None and threads < 1:
        raise QgenError(f"--threads: must be an integer >= 1, got {threads}")
    return threads


def check_device(device: str) -> str:
    """``--device``: cpu, cuda or cuda:N, and a CUDA device must exist here."""
    import re

    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise QgenError(f"--device: must be cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise QgenError(f"--device {device}: no CUDA GPU is available here "
                            "(this torch build or machine has none); use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise QgenError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                            "device(s) here")
    return device


# Options shared by several commands (typer accepts one OptionInfo as the default of many).
DATA_DIR_OPT = typer.Option(None, help="Where the runs' datasets are.")
DEVICE_OPT = typer.Option("cpu", help="cpu, cuda or cuda:N.")
THREADS_OPT = typer.Option(None, help="torch threads (>= 1).")
FORCE_OPT = typer.Option(False, help="Recompute, replacing stored results.")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="No progress output.")


def postpass_progress(quiet: bool, total: int, label: str
                      ) -> tuple[Progress, Callable[..., None]]:
    """A progress bar over runs for a post-pass, and the ``on_done(run, record, skipped)``
    callback that advances it and prints one line per run."""
    progress = make_progress(quiet)
    task = progress.add_task(label, total=total, info="")

    def on_done(run: Any, record: dict[str, Any] | None, skipped: str | None) -> None:
        progress.update(task, advance=1, info=run.run_id)
        if quiet:
            return
        if skipped:
            say(f"{run.run_id}: skipped ({skipped})", err=True)
        elif record is not None and record.get("reused"):
            say(f"{run.run_id}: {label} already stored", err=True)
        elif record is not None:
            say(f"{run.run_id}: {label} ({record.get('wall_time_s', 0.0):.1f} s)", err=True)

    return progress, on_done
