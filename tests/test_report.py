"""The report: every section and file from a small collected table, one-line errors for
tables it cannot use, "too few runs" instead of numbers, and the HTML opened in a real
headless browser (Debian's chromium) whose screenshot shows the figures."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qgen.errors import QgenError
from qgen.report import build_report
from qgen.results import write_table

SECTIONS = ("Summary", "Methods", "Generalization gap by bit width", "Claim verdicts",
            "Paired comparisons", "Measures vs gap", "Figures", "Exclusions")
TABLES = ("gaps_by_bits", "claims", "paired", "tau", "tau_b", "psi_cmi", "verdicts")
FIGURES = ("gap_by_bits", "train_vs_test_loss", "tau_heatmap", "paired_differences",
           "measure_pacbayes_mag_flatness")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from conftest import synthetic_table

    out = tmp_path_factory.mktemp("rep") / "report"
    build_report(synthetic_table(), out, n_boot=200, title="test report")
    return out


def test_report_has_every_section_and_file(report: Path):
    html = (report / "report.html").read_text(encoding="utf-8")
    md = (report / "report.md").read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f">{title}</h2>" in html
        assert f"## {title}" in md
    for t in TABLES:
        for ext in ("md", "tex", "csv"):
            assert (report / "tables" / f"{t}.{ext}").stat().st_size > 0
    for f in FIGURES:
        png = (report / "figures" / f"{f}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{f}.png" in md
    # self-contained: figures embedded, nothing fetched from the network
    assert html.count('src="data:image/png;base64,') >= len(FIGURES)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "\\begin{tabular}" in (report / "tables" / "tau.tex").read_text()
    for tex in (report / "tables").glob("*.tex"):  # no character pdflatex cannot typeset
        assert tex.read_text().isascii(), tex.name
    assert "supported" in html and (report / "analysis.json").is_file()


def test_report_is_deterministic(tmp_path: Path):
    from conftest import synthetic_table

    a = build_report(synthetic_table(), tmp_path / "a", n_boot=50)
    b = build_report(synthetic_table(), tmp_path / "b", n_boot=50)
    assert a.read_bytes() == b.read_bytes()


def test_too_few_runs_say_so(tmp_path: Path):
    from conftest import synthetic_table

    df = synthetic_table(seeds=1, lrs=(0.1,), widths=(2,))
    html = build_report(df, tmp_path / "r", n_boot=50).read_text(encoding="utf-8")
    assert "too few runs" in html or "too few pairs" in html


def test_rebuild_replaces_only_a_report(tmp_path: Path):
    from conftest import synthetic_table

    out = tmp_path / "r"
    build_report(synthetic_table(), out, n_boot=20)
    build_report(synthetic_table(), out, n_boot=20)  # a report is replaced whole
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(QgenError, match="holds no qgen report"):
        build_report(synthetic_table(), other, n_boot=20)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unusable_tables_are_errors(tmp_path: Path):
    from conftest import synthetic_table

    df = synthetic_table()
    with pytest.raises(QgenError, match="no pairs"):
        build_report(df[df["hp.quant.label"] != "fp"], tmp_path / "a", n_boot=10)
    with pytest.raises(QgenError, match="no runs"):
        build_report(df.iloc[:0], tmp_path / "b", n_boot=10)
    with pytest.raises(QgenError, match="lacks the column"):
        build_report(df.drop(columns=["hp.quant.label"]), tmp_path / "c", n_boot=10)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["empty", "no_pairs", "missing_column", "not_a_table"])
def test_cli_report_errors_are_one_line(tmp_path: Path, case: str):
    from conftest import synthetic_table

    df = synthetic_table()
    table = tmp_path / "results.csv"
    if case == "empty":
        write_table(df.iloc[:0], table)
    elif case == "no_pairs":
        write_table(df[df["hp.quant.label"] != "fp"], table)
    elif case == "missing_column":
        write_table(df.drop(columns=["gen.loss_gap"]), table)
    else:
        table = tmp_path / "results.parquet"
        table.write_bytes(b"not parquet")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = subprocess.run([sys.executable, "-m", "qgen", "report", str(table), "-o",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_report_writes_the_report(tmp_path: Path):
    from conftest import synthetic_table

    table = write_table(synthetic_table(), tmp_path / "results.parquet")
    r = subprocess.run([sys.executable, "-m", "qgen", "report", str(table), "-o",
                        str(tmp_path / "rep"), "--n-boot", "50"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "report.html").is_file()


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_browser() is None and not os.environ.get("QGEN_REQUIRE_BROWSER"),
                    reason="no chromium here (scripts/test.sh installs it)")
def test_report_renders_in_a_headless_browser(report: Path, tmp_path: Path):
    """Chromium opens the HTML from disk (network off) and its screenshot shows the
    figures: every embedded image decodes at its stated size and is not blank."""
    from PIL import Image

    browser = _browser()
    assert browser, "QGEN_REQUIRE_BROWSER is set but chromium is not installed"
    shot = tmp_path / "shot.png"
    html = (report / "report.html").read_text(encoding="utf-8")
    # render only the figures, at 1:1, so each sits at a known place in the screenshot
    imgs = re.findall(r'<img src="(data:image/png;base64,[^"]+)" width="(\d+)" '
                      r'height="(\d+)"', html)
    assert len(imgs) >= len(FIGURES)
    w, h = int(imgs[0][1]), int(imgs[0][2])
    page = tmp_path / "figures.html"
    body = "".join(f'<img src="{src}" width="{iw}" height="{ih}" style="display:block">'
                   for src, iw, ih in imgs[:3])
    page.write_text(f"<html><body style='margin:0;background:#fff'>{body}</body></html>")
    r = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", "--force-device-scale-factor=1",
                        "--proxy-server=127.0.0.1:9", f"--window-size={w},{3 * h}",
                        f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (3 * h, w)
    for k in range(3):
        tile = img[k * h:(k + 1) * h]
        assert tile.std() > 5, f"figure {k} rendered blank"
        assert (tile < 128).mean() > 0.005, f"figure {k} has no dark ink (axes, text)"
    # and the full report renders too
    full = tmp_path / "full.png"
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--proxy-server=127.0.0.1:9",
                    "--window-size=1280,2400", f"--screenshot={full}",
                    (report / "report.html").as_uri()], capture_output=True, timeout=120)
    page_img = np.asarray(Image.open(full).convert("L"), dtype=float)
    assert page_img.shape == (2400, 1280) and page_img.std() > 5


def test_table_cell_tones_colour_the_html_only():
    import pandas as pd

    from qgen.report.render import table_html
    from qgen.report.tables import Table

    t = Table("t", "c", ["a", "b"], [["x", "1 (q better)"], ["y", "2"]], pd.DataFrame(),
              cell_tones=[["", "good"], ["", "bad"]])
    html = table_html(t)
    assert '<td class="tone-good">1 (q better)</td>' in html
    assert '<td class="tone-bad">2</td>' in html and "<td>x</td>" in html
    assert "tone" not in t.to_markdown() and "tone" not in t.to_latex()
    with pytest.raises(ValueError, match="shape"):
        Table("t", "c", ["a"], [["x"]], pd.DataFrame(), cell_tones=[["", ""]])
    with pytest.raises(ValueError, match="unknown cell tone 'blue'"):
        Table("t", "c", ["a"], [["x"]], pd.DataFrame(), cell_tones=[["blue"]])


def test_latex_escape_writes_every_symbol_the_report_uses_in_ascii():
    from qgen.report.tables import latex_escape

    text = "L̂(Q) + √(KL/(2(m−1))), ‖w‖² σ′ ½ ¼ Σ ε ω τ Ψ ψ ± ≤ ≥ δ μ α × … — – Δ · ↳ ≈ ∅ → ∞"
    out = latex_escape(text)
    assert out.isascii()
    assert "$\\hat{L}$" in out and "$\\surd$" in out and "$\\|$" in out
