"""What every command shares: consoles, the one-line error guard, progress bars, the options
that several commands take, and reading ``--set name=value`` overrides."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
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


#: what Ctrl-C leaves: every writer publishes whole files and run directories, or nothing
INTERRUPTED = ("interrupted: finished runs and records are kept (each is written whole or not "
               "at all); run the same command again to resume")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a QgenError into one line on stderr and exit code 2, and Ctrl-C into one line
    saying what was kept and exit code 130 (typer would turn it into a silent exit 130)."""
    try:
        yield
    except QgenError as exc:
        # escaped: messages hold brackets ("pip install 'qgen[ray]'") that rich reads as markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                          soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        say(INTERRUPTED, err=True)
        raise typer.Exit(130) from None


def say(text: str, *, err: bool = False) -> None:
    """Print plain text (no markup, no highlighting)."""
    (err_console if err else console).print(text, highlight=False, markup=False,
                                            soft_wrap=True)


def make_progress(quiet: bool, eta: bool = False, transient: bool = True) -> Progress:
    """A rich progress bar on stderr (disabled with --quiet).

    A transient bar is also off when stderr is not a terminal: there it would show nothing
    and rich ends it with an empty line, which would precede an error's one line."""
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    if eta:
        columns.append(TimeRemainingColumn())
    off = quiet or (transient and not err_console.is_interactive)
    return Progress(*columns, console=err_console, disable=off, transient=transient)


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


def check_data_dir(data_dir: Path | None) -> Path | None:
    """``--data-dir``: None, or a folder (one that does not exist yet is left to the dataset,
    which says where it looked or downloads into it)."""
    if data_dir is not None and data_dir.exists() and not data_dir.is_dir():
        raise QgenError(f"--data-dir: {data_dir} is a file, not a folder of datasets")
    return data_dir


def check_run_options(device: str, threads: int | None, data_dir: Path | None) -> None:
    """The options every command that loads runs or data shares: ``--device``,
    ``--threads`` and ``--data-dir`` (each as its own check says)."""
    check_device(device)
    check_threads(threads)
    check_data_dir(data_dir)


def check_file_path(path: Path, option: str, example: str) -> Path:
    """A file to write: not a folder, in a folder that exists and is writable (nothing is
    created here). ``example`` is a file name to suggest when ``path`` is a folder."""
    import os

    if path.is_dir():
        raise QgenError(f"{option}: {path} is a directory; give a file name such as "
                        f"{path / example}")
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists() and not folder.is_dir():
            raise QgenError(f"{option}: {folder} is a file, not a folder, so {path} cannot be "
                            "written")
    if not parent.is_dir():
        raise QgenError(f"{option}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise QgenError(f"{option}: no permission to write in {parent}")
    return path


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
