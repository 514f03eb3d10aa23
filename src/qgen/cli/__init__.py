"""The ``qgen`` command line: a thin layer over the library (which never imports it).

One module per command group: ``train`` (train, export, datasets, write-folder), ``sweep`` (sweep
plan/run/status/measure, collect), ``measure``, ``demo``; ``common`` holds the one-line error
guard, progress bars and shared options. Every user error (:class:`~qgen.errors.QgenError`)
ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from qgen.cli.common import err_console
from qgen.cli.measure import measure_command
from qgen.cli.report import report_command
from qgen.cli.robustness import robustness_command
from qgen.cli.study import demo, study
from qgen.cli.sweep import collect_command, sweep_app
from qgen.cli.theory import theory_command
from qgen.cli.train import datasets, export, train, write_folder_command


def _typer_exception(name: str) -> type[Exception]:
    # typer carries its own copy of click; its exception classes are reached through the
    # public typer.BadParameter (a UsageError, a ClickException) rather than a private module
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_USAGE_ERROR = _typer_exception("UsageError")
_CLICK_EXCEPTION = _typer_exception("ClickException")


class _OneLineErrors(TyperGroup):
    """The command group with qgen's error contract for what the option parser and the user
    raise: a usage error (an unknown option, a value of the wrong type) is one line and exit
    2, not a usage box; Ctrl-C is one line saying what was kept, and exit 130."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except _USAGE_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `qgen`: show the help
                exc.show()  # type: ignore[attr-defined]
                sys.exit(0)
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "qgen"
            message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
            err_console.print(f"[bold red]error:[/] {escape(where)}: {escape(message)} "
                              f"(see {escape(where)} --help)", highlight=False, soft_wrap=True)
            sys.exit(2)
        except (typer.Abort, KeyboardInterrupt):
            err_console.print("interrupted: finished runs and records are kept (each is "
                              "written whole or not at all); run the same command again to "
                              "resume", highlight=False, soft_wrap=True)
            sys.exit(130)
        except _CLICK_EXCEPTION as exc:
            message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                              soft_wrap=True)
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, cls=_OneLineErrors,
                  help="qgen: how quantization-aware training changes generalization.")
app.command()(train)
app.command()(export)
app.command()(datasets)
app.command("write-folder")(write_folder_command)
app.command()(demo)
app.command()(study)
app.command("measure")(measure_command)
app.command("collect")(collect_command)
app.command("theory")(theory_command)
app.command("report")(report_command)
app.command("robustness")(robustness_command)
app.add_typer(sweep_app, name="sweep")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
