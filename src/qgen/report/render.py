"""Sections to text: a self-contained HTML page (inline CSS, figures as base64 data URIs,
nothing fetched from the network) and its Markdown twin (figures linked as
``figures/<name>.png``). All text is escaped for its format.
"""

from __future__ import annotations

import base64
import html
import re

from qgen.report.sections import Bullets, FigureBlock, Items, Paragraph, Section, TableBlock
from qgen.report.tables import Table

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --alt: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 28px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 36px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; }
nav { font-size: 14px; color: var(--muted); margin-bottom: 12px; }
nav a { color: #0969da; text-decoration: none; margin-right: 12px; }
p.note { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; margin: 8px 0 18px; font-size: 13px; }
caption { caption-side: top; text-align: left; color: var(--muted); padding: 4px 0; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: var(--alt); font-weight: 600; }
tr:nth-child(even) td { background: #fbfcfd; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 4px 0 12px;
  font-size: 14px; }
dt { font-family: ui-monospace, Menlo, Consolas, monospace; color: var(--muted); }
dd { margin: 0; }
figure { margin: 16px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff;
  font-size: 12px; font-weight: 600; white-space: nowrap; }
.badge.supported { background: #1a7f37; }
.badge.contradicted { background: #cf222e; }
.badge.inconclusive { background: #6e7781; }
.scroll { overflow-x: auto; }
tr td.tone-good { background: #aceebb; }
tr td.tone-bad { background: #ffcecb; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "section"


def badge(verdict: str) -> str:
    """A coloured verdict badge (supported green, contradicted red, inconclusive grey)."""
    cls = verdict if verdict in ("supported", "contradicted", "inconclusive") else "inconclusive"
    return f'<span class="badge {cls}">{_e(verdict)}</span>'


def table_html(t: Table) -> str:
    """A table as HTML, its verdict column as badges, toned cells coloured."""
    head = "".join(f"<th>{_e(h)}</th>" for h in t.header)
    body = []
    for i, row in enumerate(t.rows):
        cells = []
        for j, c in enumerate(row):
            text = badge(c) if j == t.badge_column else _e(c)
            tone = t.tone(i, j)
            cells.append(f'<td class="tone-{tone}">{text}</td>' if tone else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in t.notes)
    return (f'<div class="scroll"><table id="table-{_anchor(t.name)}"><caption>{_e(t.caption)}'
            f"</caption><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"</div>{notes}")


def _block_html(b: object) -> str:
    if isinstance(b, Paragraph):
        return f"<p>{_e(b.text)}</p>"
    if isinstance(b, Items):
        head = f"<h3>{_e(b.heading)}</h3>" if b.heading else ""
        rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in b.items)
        return f"{head}<dl>{rows}</dl>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in b.items) + "</ul>"
    if isinstance(b, TableBlock):
        return table_html(b.table)
    if isinstance(b, FigureBlock):
        f = b.figure
        data = base64.b64encode(f.png).decode("ascii")
        return (f'<figure id="figure-{_anchor(f.name)}"><img src="data:image/png;base64,{data}" '
                f'width="{f.width}" height="{f.height}" alt="{_e(f.caption)}">'
                f"<figcaption>{_e(f.caption)}</figcaption></figure>")
    raise TypeError(f"unknown report block {type(b).__name__}")


def render_html(title: str, sections: list[Section]) -> str:
    """The whole report as one self-contained HTML page."""
    nav = " ".join(f'<a href="#{_anchor(s.name)}">{_e(s.title)}</a>' for s in sections)
    parts = []
    for s in sections:
        body = (f'<p class="note">Omitted: {_e(s.note)}.</p>' if s.omitted else
                "".join(_block_html(b) for b in s.blocks)
                + (f'<p class="note">{_e(s.note)}</p>' if s.note else ""))
        parts.append(f'<section id="{_anchor(s.name)}"><h2>{_e(s.title)}</h2>{body}</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"<h1>{_e(title)}</h1>\n<nav>{nav}</nav>\n" + "\n".join(parts)
            + "\n</main>\n</body>\n</html>\n")


def _md_text(text: object) -> str:
    """Text safe in Markdown: characters that start markup escaped."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", str(text))


def _block_md(b: object) -> str:
    if isinstance(b, Paragraph):
        return _md_text(b.text) + "\n"
    if isinstance(b, Items):
        head = f"**{_md_text(b.heading)}**\n\n" if b.heading else ""
        return head + "".join(f"- `{k}`: {_md_text(v)}\n" for k, v in b.items)
    if isinstance(b, Bullets):
        return "".join(f"- {_md_text(x)}\n" for x in b.items)
    if isinstance(b, TableBlock):
        return b.table.to_markdown()
    if isinstance(b, FigureBlock):
        f = b.figure
        return f"![{_md_text(f.caption)}](figures/{f.filename})\n\n*{_md_text(f.caption)}*\n"
    raise TypeError(f"unknown report block {type(b).__name__}")


def render_markdown(title: str, sections: list[Section]) -> str:
    """The report as Markdown, figures referenced as files under figures/."""
    parts = [f"# {_md_text(title)}\n"]
    for s in sections:
        parts.append(f"## {_md_text(s.title)}\n")
        if s.omitted:
            parts.append(f"*Omitted: {_md_text(s.note)}.*\n")
            continue
        parts += [_block_md(b) for b in s.blocks]
        if s.note:
            parts.append(f"*{_md_text(s.note)}*\n")
    return "\n".join(parts)
