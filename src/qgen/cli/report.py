"""``qgen report RESULTS -o DIR``: the HTML/Markdown report of a results table (or of a run
store, collected first), and the console summary that ``qgen study`` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from qgen.cli.common import QUIET_OPT, say, user_errors


def load_results(results: Path) -> Any:
    """A results table from a Parquet/CSV file, or collected from a run store folder."""
    from qgen.errors import QgenError
    from qgen.results import collect, read_table

    if results.is_dir():
        if not (results / "runs").is_dir() and not any(results.glob("*/spec.json")):
            raise QgenError(f"{results}: a folder with no runs; give a results table "
                            "(.parquet or .csv) or a run store")
        store = results / "runs" if (results / "runs").is_dir() else results
        return collect(store)
    if not results.exists():
        raise QgenError(f"{results}: no such results table or run store")
    return read_table(results)


def _cell(x: Any, pct: bool = False) -> str:
    if x is None or x != x:
        return "—"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _paired_cell(s: Any) -> str:
    from qgen.report.tables import fmt

    if s is None or s.median is None:
        return "—" if s is None else (s.reason or "—")
    if s.low is None or s.high is None:
        return fmt(s.median)
    return f"{fmt(s.median)} [{fmt(s.low)}, {fmt(s.high)}]"


def console_tables(analysis: Any) -> list[Any]:
    """Rich tables of the headline answers: the gap by bit width, the paired differences
    against full precision, the claim verdicts and τ of each measure."""
    from rich.table import Table

    from qgen.report.tables import fmt_estimate, short_measure

    out: list[Any] = []
    t = Table(title="generalization gap by bit width (mean over runs)", title_justify="left")
    for h in ("bits", "runs", "train loss", "test acc", "loss gap", "acc gap", "epochs"):
        t.add_column(h, justify="left" if h == "bits" else "right")
    for label, qs in analysis.summary.items():
        def m(q: str, qs: dict[str, Any] = qs) -> Any:
            return (qs.get(q) or {}).get("mean")
        t.add_row(label, str(qs["n"]["n"]), _cell(m("gen.train_loss")),
                  _cell(m("gen.test_accuracy"), True), _cell(m("gen.loss_gap")),
                  _cell(m("gen.acc_gap"), True),
                  "—" if m("gen.epochs") is None else f"{m('gen.epochs'):.1f}")
    out.append(t)
    if analysis.comparisons:
        t = Table(title="paired with the full-precision twin: median difference [95% CI]",
                  title_justify="left")
        cols = [analysis.gap_column, "gen.train_loss", "gen.test_accuracy"]
        t.add_column("bits")
        t.add_column("pairs", justify="right")
        for c in cols:
            t.add_column(f"Δ {c.removeprefix('gen.')}", justify="right")
        for label, comp in analysis.comparisons.items():
            cells = []
            for c in cols:
                s = comp.stats.get(c)
                cells.append(_paired_cell(s))
            t.add_row(label, str(comp.n_pairs), *cells)
        out.append(t)
    t = Table(title="claims", title_justify="left")
    t.add_column("claim")
    t.add_column("verdict")
    colour = {"supported": "green", "contradicted": "red", "inconclusive": "yellow"}
    for c in analysis.claims:
        t.add_row(c.statement, f"[{colour.get(c.verdict, 'white')}]{c.verdict}[/]")
    out.append(t)
    if analysis.correlations:
        t = Table(title=f"Kendall τ of each flatness measure with {analysis.gap_column} "
                        "[95% CI] (all measures: the report)",
                  title_justify="left")
        t.add_column("measure")
        for g in analysis.tau_groups():
            t.add_column(g, justify="right")
        from qgen.analysis.frame import is_flatness

        for name, corr in analysis.correlations.items():
            if not is_flatness(name):
                continue
            cells = [fmt_estimate(corr.tau)]
            for g in analysis.tau_groups()[1:]:
                cells.append(fmt_estimate(corr.tau_by.get("hp.quant.label", {}).get(g)))
            t.add_row(short_measure(name), *cells)
        out.append(t)
    return out


def print_answers(analysis: Any) -> None:
    """Print :func:`console_tables` to stdout."""
    from qgen.cli.common import console

    for t in console_tables(analysis):
        console.print(t)


def report_command(
    results: Path = typer.Argument(..., help="A results table (.parquet/.csv from qgen "
                                             "collect) or a run store to collect."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (report.html, "
                                                      "report.md, figures/, tables/)."),
    gap: str = typer.Option("loss", help="The gap the measures are ranked against: loss or "
                                         "acc."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for every interval (0: "
                                          "none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    title: str = typer.Option("qgen report", help="The report's title."),
    quiet: bool = QUIET_OPT,
) -> None:
    """A self-contained HTML report (and its Markdown twin) of a results table."""
    with user_errors():
        from qgen.errors import QgenError
        from qgen.report import build_report

        if gap not in ("loss", "acc"):
            raise QgenError(f"--gap: must be loss or acc, got {gap!r}")
        if n_boot < 0:
            raise QgenError(f"--n-boot: must be an integer >= 0, got {n_boot}")
        df = load_results(results)
        path = build_report(df, out, title=title, n_boot=n_boot, seed=seed, gap=gap)
        if not quiet:
            say(f"report: {path}")
