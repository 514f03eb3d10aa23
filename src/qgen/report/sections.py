"""The report's sections: a small registry of functions ``fn(ctx) -> Section | None``, each
registered with :func:`register_section` under a name and an order, and the content blocks
they are made of (paragraphs, key–value lists, bullet lists, tables, figures).

A section whose columns the table lacks returns :meth:`Section.omitted` with a note, so the
reader sees that it was left out and why. Robustness and theory sections are added by their
own modules, the same way, without editing this one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qgen.analysis import Analysis
from qgen.report import methods
from qgen.report.figures import Figure, all_figures
from qgen.report.tables import (
    Table,
    claims_table,
    exclusions_table,
    gap_table,
    paired_table,
    psi_cmi_table,
    tau_table,
)


# ------------------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class Paragraph:
    """Plain text (escaped when rendered)."""

    text: str


@dataclass(frozen=True)
class Items:
    """A list of (name, text) pairs under an optional heading."""

    items: tuple[tuple[str, str], ...]
    heading: str | None = None


@dataclass(frozen=True)
class Bullets:
    """A bullet list."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class TableBlock:
    """A table, also written to tables/<name>.{md,tex,csv}."""

    table: Table


@dataclass(frozen=True)
class FigureBlock:
    """A figure, embedded in the HTML and written to figures/<name>.png."""

    figure: Figure


Block = Paragraph | Items | Bullets | TableBlock | FigureBlock


@dataclass
class Section:
    """A titled part of the report; an omitted section carries only a note saying why."""

    name: str
    title: str
    blocks: list[Any] = field(default_factory=list)
    note: str | None = None
    omitted: bool = False

    @classmethod
    def omit(cls, name: str, title: str, why: str) -> Section:
        """A section left out, with the reason."""
        return cls(name, title, [], why, omitted=True)

    def tables(self) -> list[Table]:
        """The tables of this section."""
        return [b.table for b in self.blocks if isinstance(b, TableBlock)]

    def figures(self) -> list[Figure]:
        """The figures of this section."""
        return [b.figure for b in self.blocks if isinstance(b, FigureBlock)]


@dataclass
class ReportContext:
    """What sections read: the analysis (and through it the whole table) and the title;
    figures are drawn once, on first use."""

    analysis: Analysis
    title: str
    _figures: list[Figure] | None = None

    @property
    def table(self) -> Any:
        """The whole results table."""
        return self.analysis.table

    def figures(self) -> list[Figure]:
        """Every figure of the analysis (drawn on the first call)."""
        if self._figures is None:
            self._figures = all_figures(self.analysis)
        return self._figures


SectionFn = Callable[[ReportContext], "Section | None"]
_SECTIONS: dict[str, tuple[float, SectionFn]] = {}


def register_section(name: str, *, order: float) -> Callable[[SectionFn], SectionFn]:
    """Register a section function under ``name``, placed by ``order`` (built-ins use 10,
    20, …, 80; a robustness section might use 55). Registering a name again replaces it."""
    def deco(fn: SectionFn) -> SectionFn:
        _SECTIONS[name] = (order, fn)
        return fn
    return deco


def registered_sections() -> list[str]:
    """Section names in report order."""
    return [n for n, _ in sorted(_SECTIONS.items(), key=lambda kv: (kv[1][0], kv[0]))]


def build_sections(ctx: ReportContext) -> list[Section]:
    """Every registered section, in order (a function returning None is left out)."""
    out = []
    for name in registered_sections():
        section = _SECTIONS[name][1](ctx)
        if section is not None:
            out.append(section)
    return out


# ------------------------------------------------------------------------------ built-ins
@register_section("summary", order=10)
def summary_section(ctx: ReportContext) -> Section:
    """Counts, protocol and the claim verdicts at a glance."""
    a = ctx.analysis
    pairs = a.pairing.n_pairs
    labels = ", ".join(a.labels)
    text = (f"{a.n_runs} runs in the table, {a.n_analysed} analysed (bit widths: {labels}); "
            f"{pairs} quantized runs paired with a full-precision twin. Protocol: "
            f"{a.protocol}")
    if a.protocol == "equal fit":
        text += " — every analysed run reached the training cross-entropy target."
    else:
        text += (f" — {a.n_max_epochs} analysed run(s) stopped at the epoch cap, so runs "
                 "differ in fit as well as in bits; lower bits may show a smaller gap partly "
                 "because they fit less.")
    blocks: list[Any] = [Paragraph(text)]
    excluded = len(a.exclusions)
    if excluded:
        blocks.append(Paragraph(f"{excluded} run(s) were left out (see Exclusions)."))
    t = claims_table(a)
    glance = Table("verdicts", "Claim verdicts at a glance.", ["claim", "protocol", "verdict"],
                   [row[:3] for row, (_, r) in zip(t.rows, t.data.iterrows(), strict=True)
                    if not r["is_part"]], t.data[~t.data["is_part"]], badge_column=2)
    blocks.append(TableBlock(glance))
    return Section("summary", "Summary", blocks)


@register_section("methods", order=20)
def methods_section(ctx: ReportContext) -> Section:
    """What was trained and measured, and how the statistics were computed."""
    a, df = ctx.analysis, ctx.table
    blocks: list[Any] = [Paragraph("Everything below is read from the settings the runs "
                                   "recorded; a value that differs between runs is marked "
                                   "(varied).")]
    for section, heading in methods.SECTIONS:
        items = methods.hp_items(df, section)
        if items:
            blocks.append(Items(tuple(items), heading))
    settings, warn = methods.measure_settings(df)
    if settings:
        blocks.append(Items(tuple(settings), "Measure settings"))
    else:
        blocks.append(Paragraph("No measure settings were recorded (no meta.measure_settings "
                                "column)."))
    if warn:
        blocks.append(Paragraph(f"Warning: {warn}."))
    blocks.append(Items(tuple(methods.runs_items(a)), "Runs"))
    blocks.append(Items(tuple(methods.statistics_items(a)), "Statistics"))
    return Section("methods", "Methods", blocks)


@register_section("gaps", order=30)
def gaps_section(ctx: ReportContext) -> Section:
    """The generalization gap and the fit per bit width."""
    return Section("gaps", "Generalization gap by bit width", [TableBlock(gap_table(ctx.analysis))])


@register_section("claims", order=40)
def claims_section(ctx: ReportContext) -> Section:
    """Each claim's verdict with its evidence."""
    a = ctx.analysis
    blocks: list[Any] = []
    if not a.pairing.n_pairs:
        blocks.append(Paragraph("No pairs: no quantized run has a full-precision twin, so "
                                "every claim is inconclusive."))
    blocks.append(TableBlock(claims_table(a)))
    blocks.append(Bullets(tuple(f"{c.statement} Hypothesis: {c.hypothesis}" for c in a.claims)))
    return Section("claims", "Claim verdicts", blocks)


@register_section("paired", order=50)
def paired_section(ctx: ReportContext) -> Section:
    """Paired differences of quantized runs and their full-precision twins."""
    a = ctx.analysis
    if not a.pairing.n_pairs:
        return Section("paired", "Paired comparisons", [Paragraph(
            "No pairs: no quantized run has a full-precision twin with the same "
            "hyperparameters and seed.")])
    blocks: list[Any] = []
    capped = {lab: c.n_max_epochs for lab, c in a.comparisons.items() if c.n_max_epochs}
    if capped:
        blocks.append(Paragraph("Not equal fit: runs in the pairs stopped at the epoch cap ("
                                + ", ".join(f"{k}: {v}" for k, v in capped.items()) + ")."))
    blocks.append(TableBlock(paired_table(a)))
    return Section("paired", "Paired comparisons", blocks)


@register_section("measures", order=60)
def measures_section(ctx: ReportContext) -> Section:
    """How well each measure ranks the gap: τ, τ-b, Ψ and CMI."""
    a = ctx.analysis
    if not a.measures:
        return Section.omit("measures", "Measures vs gap",
                            "the table has no measure.* columns (run qgen sweep measure, "
                            "then collect again)")
    return Section("measures", "Measures vs gap", [
        Paragraph("Larger flatness values mean a sharper minimum; a measure that predicts "
                  "generalization has τ > 0 with the gap."),
        TableBlock(tau_table(a, "tau")), TableBlock(tau_table(a, "tau_b")),
        TableBlock(psi_cmi_table(a))])


@register_section("figures", order=70)
def figures_section(ctx: ReportContext) -> Section:
    """Every figure."""
    blocks: list[Any] = [FigureBlock(f) for f in ctx.figures()]
    if not any(f.name.startswith("measure_") for f in ctx.figures()):
        blocks.append(Paragraph("No flatness measure in the table, so no measure-vs-gap "
                                "figure."))
    return Section("figures", "Figures", blocks)


@register_section("exclusions", order=80)
def exclusions_section(ctx: ReportContext) -> Section:
    """Every run left out or unpaired, counted and listed."""
    a = ctx.analysis
    counts = a.exclusion_counts()
    if not counts:
        return Section("exclusions", "Exclusions", [Paragraph(
            "None: every run was analysed and every run has a partner.")])
    return Section("exclusions", "Exclusions", [
        Bullets(tuple(f"{k}: {v}" for k, v in counts.items())),
        TableBlock(exclusions_table(a))])
