"""The ``qgen`` command line: a thin layer over the library (which never imports it).

One module per command group: ``train`` (train, export, datasets), ``sweep`` (sweep
plan/run/status/measure, collect), ``measure``, ``demo``; ``common`` holds the one-line error
guard, progress bars and shared options. Every user error (:class:`~qgen.errors.QgenError`)
ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from qgen.cli.demo import demo
from qgen.cli.measure import measure_command
from qgen.cli.sweep import collect_command, sweep_app
from qgen.cli.train import datasets, export, train

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="qgen: how quantization-aware training changes generalization.")
app.command()(train)
app.command()(export)
app.command()(datasets)
app.command()(demo)
app.command("measure")(measure_command)
app.command("collect")(collect_command)
app.add_typer(sweep_app, name="sweep")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
