"""Shared pieces of the command line: consoles, the user-error guard, progress bars.

Kept apart from :mod:`qgen.cli` so that sub-apps (``qgen.sweep.cli``) can use them without
importing the module that mounts them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


def make_progress(quiet: bool) -> Progress:
    """A rich progress bar on stderr (disabled with --quiet)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                    console=err_console, disable=quiet, transient=True)
