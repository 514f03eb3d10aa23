"""The study's report: a results table in, a self-contained HTML page and its Markdown twin
out, with every table as Markdown, LaTeX and CSV and every figure as PNG.

:func:`build_report` analyses the table (unless given an :class:`~qgen.analysis.Analysis`),
builds the registered sections (:mod:`qgen.report.sections`; the robustness and theory
sections register themselves from their own packages, imported here), renders them and
publishes the folder whole: it is built beside the target and renamed into place, so a
failed build never leaves a half-written report and a previous report is replaced only by a
complete one::

    <dir>/report.html     self-contained (inline CSS, figures embedded), no network needed
    <dir>/report.md       the Markdown twin; its figures are linked from figures/
    <dir>/figures/*.png   every figure
    <dir>/tables/*.md|tex|csv  every table in three formats
    <dir>/analysis.json   every statistic behind the tables

Imports no torch.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qgen.errors import QgenError

#: modules outside this package that register report sections (and claims) on import
SECTION_MODULES = ("qgen.robustness.report", "qgen.theory.report")

REPORT_FILES = ("report.html", "report.md", "analysis.json")


def load_section_modules() -> list[str]:
    """Import every module of :data:`SECTION_MODULES` that exists, so its sections and
    claims are registered; return the names imported."""
    loaded = []
    for name in SECTION_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            # the module (or its package) is absent: skip it; a module that exists but
            # lacks something it imports is an error
            if not (name == missing or name.startswith(missing + ".")) or \
                    not missing.startswith("qgen."):
                raise
            continue
        loaded.append(name)
    return loaded


def check_reportable(df: Any, gap: str = "loss") -> None:
    """Raise a one-line QgenError when a table cannot make a report: no rows, missing
    columns (see :func:`qgen.analysis.frame.check_table`), or no quantized run with a
    full-precision twin (nothing to compare)."""
    from qgen.analysis.frame import check_table

    check_table(df, gap)


def build_report(df: Any, out_dir: str | Path, *, analysis: Any = None,
                 title: str = "qgen report", n_boot: int = 1000, seed: int = 0,
                 gap: str = "loss", require_pairs: bool = True) -> Path:
    """Analyse ``df`` (or use ``analysis``), write the report folder ``out_dir`` (see the
    module docstring) and return the path of ``report.html``.

    QgenError (one line) for a table without runs or required columns, and, when
    ``require_pairs``, for a table where no quantized run has a full-precision twin.
    """
    from qgen.analysis import analyze
    from qgen.io import check_can_create_dir, dumps_json
    from qgen.report.figures import require_matplotlib
    from qgen.report.render import render_html, render_markdown
    from qgen.report.sections import FigureBlock, ReportContext, TableBlock, build_sections

    require_matplotlib()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QgenError(f"{out}: exists and is not a directory; the report is a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.html").is_file():
        raise QgenError(f"{out}: a non-empty folder that holds no qgen report; choose a new "
                        "or empty folder (nothing there is replaced)")
    check_can_create_dir(out)
    load_section_modules()
    if analysis is None:
        check_reportable(df, gap)
        analysis = analyze(df, gap=gap, n_boot=n_boot, seed=seed)
    if require_pairs and not analysis.pairing.n_pairs:
        raise QgenError("no pairs: no quantized run has a full-precision twin with the same "
                        "hyperparameters and seed, so no claim can be tested; add the fp "
                        "runs (bits: fp) to the sweep")
    ctx = ReportContext(analysis=analysis, title=title)
    sections = build_sections(ctx)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "figures").mkdir()
        (tmp / "tables").mkdir()
        for s in sections:
            for b in s.blocks:
                if isinstance(b, FigureBlock):
                    (tmp / "figures" / b.figure.filename).write_bytes(b.figure.png)
                elif isinstance(b, TableBlock):
                    t = b.table
                    (tmp / "tables" / f"{t.name}.md").write_text(t.to_markdown(),
                                                                 encoding="utf-8")
                    (tmp / "tables" / f"{t.name}.tex").write_text(t.to_latex(),
                                                                  encoding="utf-8")
                    (tmp / "tables" / f"{t.name}.csv").write_text(t.to_csv(),
                                                                  encoding="utf-8")
        (tmp / "report.html").write_text(render_html(title, sections), encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(title, sections), encoding="utf-8")
        (tmp / "analysis.json").write_text(dumps_json(analysis.to_dict()), encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "report.html"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``: a rename, or, when a previous report is
    there, swap it aside first and delete it only after the new one is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old.{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["REPORT_FILES", "SECTION_MODULES", "build_report", "check_reportable",
           "load_section_modules"]
