"""The study's claims as testable hypotheses, each with a verdict over the paired runs.

A claim is a function ``fn(ctx) -> Claim | None`` registered with :func:`register_claim`;
:func:`evaluate_claims` runs them in registration order (None: the claim does not apply and
is left out). Other modules (robustness, theory) add their claims the same way, reading
what they need from the :class:`ClaimContext` (the runs, the pairs, and
:meth:`ClaimContext.stat` for paired statistics of any column).

Verdicts are 'supported', 'contradicted' or 'inconclusive', and every verdict names the
protocol of the runs it rests on: 'equal fit' (all reached the cross-entropy target) or
'equal budget' (some stopped at the epoch cap, so lower bits may simply fit less).
Directional claims use one rule: supported when the confidence interval of the median
paired difference lies on the claimed side of 0 and the test (Wilcoxon, or the sign test
when Wilcoxon has none) gives p < α; contradicted when both hold on the other side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from qgen.analysis.frame import EQUAL_FIT, eight_bit_label, lowest_label, quantized_labels
from qgen.analysis.paired import (
    DIFFERENCE,
    LOG_RATIO,
    LabelComparison,
    PairedStat,
    Pairing,
    differences,
    paired_stat,
)

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE)
#: equivalence margin of claim 1, as a fraction of the median full-precision gap
EQUIVALENCE_MARGIN = 0.10
MAG_FLATNESS = ("measure.pacbayes.mag.flatness", "measure.sharpness.mag.flatness")


@dataclass(frozen=True)
class Claim:
    """A claim and its verdict; ``parts`` holds per-bit-width verdicts behind an overall
    one."""

    id: str
    statement: str
    hypothesis: str
    protocol: str
    verdict: str
    evidence: dict[str, Any]
    explanation: str
    parts: tuple[Claim, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim {self.id}: verdict {self.verdict!r} is not one of "
                             f"{', '.join(VERDICTS)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        d = asdict(self)
        d["parts"] = [p.to_dict() for p in self.parts]
        return d


@dataclass
class ClaimContext:
    """What a claim can read: the analysed runs and the whole table, the pairs and their
    statistics per quantized label, the overall protocol, the gap column and the bootstrap
    settings (α = 1 − conf)."""

    runs: Any
    table: Any
    pairing: Pairing
    comparisons: dict[str, LabelComparison]
    protocol: str
    gap: str
    conf: float = 0.95
    n_boot: int = 1000
    seed: int = 0
    _extra: dict[tuple[str, str, str], PairedStat] = field(default_factory=dict)

    @property
    def alpha(self) -> float:
        """The test level, 1 − conf."""
        return 1.0 - self.conf

    @property
    def labels(self) -> list[str]:
        """The quantized labels with a comparison, by decreasing bits."""
        return quantized_labels(self.comparisons)

    def stat(self, label: str, column: str, transform: str = DIFFERENCE) -> PairedStat:
        """Paired statistics of ``column`` at ``label`` (computed once, then reused)."""
        comp = self.comparisons.get(label)
        if comp is not None and column in comp.stats and comp.stats[column].transform == transform:
            return comp.stats[column]
        key = (label, column, transform)
        if key not in self._extra:
            from qgen.analysis.estimate import rng_for

            pairs = self.pairing.pairs.get(label, [])
            d, dropped = differences(self.runs, pairs, column, transform)
            self._extra[key] = paired_stat(d, column, transform, n_boot=self.n_boot,
                                           conf=self.conf, dropped=dropped,
                                           rng=rng_for(self.seed, "paired", *key))
        return self._extra[key]


ClaimFn = Callable[[ClaimContext], "Claim | None"]
_CLAIMS: dict[str, ClaimFn] = {}


def register_claim(fn: ClaimFn) -> ClaimFn:
    """Add a claim function (keyed by its name; registering a name again replaces it)."""
    _CLAIMS[fn.__name__] = fn
    return fn


def registered_claims() -> list[str]:
    """The names of the registered claim functions, in order."""
    return list(_CLAIMS)


def evaluate_claims(ctx: ClaimContext) -> list[Claim]:
    """Every registered claim's verdict (claims that do not apply are left out)."""
    return [c for c in (fn(ctx) for fn in _CLAIMS.values()) if c is not None]


# ------------------------------------------------------------------------------ helpers
def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _stat_evidence(s: PairedStat) -> dict[str, Any]:
    return {"column": s.column, "transform": s.transform, "n_pairs": s.n, "median": s.median,
            "ci": [s.low, s.high], "conf": s.conf, "ci90": [s.low90, s.high90],
            "p_wilcoxon": s.wilcoxon_p, "p_sign": s.sign_p, "reason": s.reason}


def direction_verdict(s: PairedStat, sign: int, alpha: float) -> tuple[str, str]:
    """(verdict, why) for the hypothesis "the median paired difference is < 0" (sign −1)
    or "> 0" (sign +1), by the rule in the module docstring."""
    if s.median is None:
        return INCONCLUSIVE, s.reason or "no paired differences"
    if s.low is None or s.high is None:
        return INCONCLUSIVE, "no confidence interval (" + (s.reason or "bootstrap off") + ")"
    p = s.p_value
    test = "Wilcoxon" if s.wilcoxon_p is not None else "sign test"
    ci = f"median {_fmt(s.median)}, {s.conf:.0%} CI [{_fmt(s.low)}, {_fmt(s.high)}]"
    if p is None:
        return INCONCLUSIVE, f"{ci}; no test (every difference is zero)"
    below, above = s.high < 0, s.low > 0
    ptxt = f"{test} p = {p:.3g}"
    if p < alpha and (below if sign < 0 else above):
        return SUPPORTED, f"{ci}, {ptxt}"
    if p < alpha and (above if sign < 0 else below):
        return CONTRADICTED, f"{ci}, {ptxt}: the opposite direction"
    return INCONCLUSIVE, f"{ci}, {ptxt}: not clearly on either side of 0 at α = {alpha:.2g}"


def _no_pairs(cid: str, statement: str, hypothesis: str, ctx: ClaimContext, why: str) -> Claim:
    return Claim(cid, statement, hypothesis, ctx.protocol, INCONCLUSIVE, {"reason": why},
                 f"Inconclusive: {why}.")


def _pairs_of(ctx: ClaimContext, label: str) -> LabelComparison | None:
    comp = ctx.comparisons.get(label)
    return comp if comp is not None and comp.n_pairs else None


def _overall(cid: str, statement: str, hypothesis: str, ctx: ClaimContext,
             parts: list[Claim]) -> Claim:
    """An overall claim that takes the verdict of its lowest-bit part."""
    low = lowest_label(ctx.labels)
    part = next((p for p in parts if p.evidence.get("label") == low), None)
    if part is None:
        return _no_pairs(cid, statement, hypothesis, ctx, "no pairs of quantized and "
                                                          "full-precision runs")
    return Claim(cid, statement, hypothesis, part.protocol, part.verdict,
                 {"decided_by": low, **part.evidence},
                 f"At the lowest bit width ({low}): {part.explanation}", tuple(parts))


# ------------------------------------------------------------------------------ claims
@register_claim
def eight_bit_like_fp(ctx: ClaimContext) -> Claim:
    """Claim 1: 8-bit generalizes like full precision (equivalence within ±δ)."""
    cid = "eight_bit_like_fp"
    statement = "8-bit generalizes like full precision."
    hyp = (f"The median paired difference of the gap ({ctx.gap}, w8a8 − fp) lies within "
           f"±δ, δ = {EQUIVALENCE_MARGIN:.0%} of the median full-precision gap (90% CI "
           "inside [−δ, δ]).")
    label = eight_bit_label(ctx.labels)
    comp = _pairs_of(ctx, label) if label else None
    if comp is None:
        return _no_pairs(cid, statement, hyp, ctx, "no pairs of 8-bit (w8a8) and "
                                                    "full-precision runs")
    s = ctx.stat(label, ctx.gap)
    delta = None if comp.fp_median_gap is None else abs(comp.fp_median_gap) * EQUIVALENCE_MARGIN
    ev = {"label": label, "delta": delta, "fp_median_gap": comp.fp_median_gap,
          "n_max_epochs": comp.n_max_epochs, **_stat_evidence(s)}
    if s.median is None or s.low90 is None or s.high90 is None or not delta:
        why = s.reason or ("the margin δ is zero" if not delta else "no 90% interval")
        return Claim(cid, statement, hyp, comp.protocol, INCONCLUSIVE, ev,
                     f"Inconclusive at {label} ({comp.protocol}): {why}.")
    ci = (f"median difference {_fmt(s.median)}, 90% CI [{_fmt(s.low90)}, {_fmt(s.high90)}] "
          f"against ±δ = ±{_fmt(delta)} ({s.n} pairs, {comp.protocol})")
    if -delta <= s.low90 and s.high90 <= delta:
        verdict, how = SUPPORTED, "the whole interval lies inside the margin"
    elif s.high90 < -delta or s.low90 > delta:
        verdict, how = CONTRADICTED, "the whole interval lies outside the margin"
    else:
        verdict, how = INCONCLUSIVE, "the interval straddles the margin"
    return Claim(cid, statement, hyp, comp.protocol, verdict, ev,
                 f"{verdict.capitalize()}: {ci}; {how}.")


@register_claim
def fewer_bits_smaller_gap(ctx: ClaimContext) -> Claim:
    """Claim 2: fewer bits → smaller generalization gap (per label; overall at the lowest)."""
    cid = "fewer_bits_smaller_gap"
    statement = "Fewer bits give a smaller generalization gap."
    hyp = (f"The median paired difference of the gap ({ctx.gap}, quantized − fp) is < 0 "
           f"({ctx.conf:.0%} CI below 0 and p < {ctx.alpha:.2g}).")
    parts = []
    for label in ctx.labels:
        comp = _pairs_of(ctx, label)
        if comp is None:
            continue
        s = ctx.stat(label, ctx.gap)
        verdict, why = direction_verdict(s, -1, ctx.alpha)
        parts.append(Claim(f"{cid}.{label}", f"{label} has a smaller gap than fp.", hyp,
                           comp.protocol, verdict,
                           {"label": label, "n_max_epochs": comp.n_max_epochs,
                            **_stat_evidence(s)},
                           f"{verdict.capitalize()} at {label} ({comp.protocol}, {s.n} "
                           f"pairs): {why}."))
    return _overall(cid, statement, hyp, ctx, parts)


@register_claim
def fewer_bits_higher_train_loss(ctx: ClaimContext) -> Claim:
    """Claim 3: fewer bits → higher training loss; at equal fit, more epochs to the target."""
    cid = "fewer_bits_higher_train_loss"
    statement = "Fewer bits give a higher training loss."
    hyp = ("At equal fit (training loss equal by design): the median paired difference of "
           "gen.epochs (epochs to the target) is > 0; at equal budget: that of "
           f"gen.train_loss is > 0 ({ctx.conf:.0%} CI above 0 and p < {ctx.alpha:.2g}).")
    parts = []
    for label in ctx.labels:
        comp = _pairs_of(ctx, label)
        if comp is None:
            continue
        col = "gen.epochs" if comp.protocol == EQUAL_FIT else "gen.train_loss"
        s = ctx.stat(label, col)
        verdict, why = direction_verdict(s, +1, ctx.alpha)
        note = ("equal fit, so the training loss is equal by design and the extra epochs to "
                "the target are tested instead" if col == "gen.epochs"
                else f"{comp.protocol}: the training loss is tested")
        parts.append(Claim(f"{cid}.{label}", f"{label} has a higher training loss than fp.",
                           hyp, comp.protocol, verdict,
                           {"label": label, "tested": col, "n_max_epochs": comp.n_max_epochs,
                            **_stat_evidence(s)},
                           f"{verdict.capitalize()} at {label} ({note}; {s.n} pairs): {why}."))
    return _overall(cid, statement, hyp, ctx, parts)


@register_claim
def quantized_flatter_mag(ctx: ClaimContext) -> Claim:
    """Claim 4: quantized minima are flatter by the magnitude-aware measures."""
    cid = "quantized_flatter_mag"
    statement = "Quantized minima are flatter by the magnitude-aware measures."
    hyp = ("At the lowest bit width the median paired log ratio log(μ_q/μ_fp) of both "
           "pacbayes.mag.flatness and sharpness.mag.flatness is < 0 (flatter), each with its "
           f"{ctx.conf:.0%} CI below 0 and p < {ctx.alpha:.2g}.")
    missing = [c for c in MAG_FLATNESS if c not in ctx.runs.columns]
    if missing:
        return _no_pairs(cid, statement, hyp, ctx,
                         f"the table has no {', '.join(missing)} column")
    low = lowest_label(ctx.labels)
    comp = _pairs_of(ctx, low) if low else None
    if comp is None:
        return _no_pairs(cid, statement, hyp, ctx, "no pairs of quantized and "
                                                    "full-precision runs")
    results = {c: (ctx.stat(low, c, LOG_RATIO),
                   *direction_verdict(ctx.stat(low, c, LOG_RATIO), -1, ctx.alpha))
               for c in MAG_FLATNESS}
    verdicts = {v for _, v, _ in results.values()}
    verdict = verdicts.pop() if len(verdicts) == 1 and verdicts <= {SUPPORTED, CONTRADICTED} \
        else INCONCLUSIVE
    ev = {"label": low, "n_max_epochs": comp.n_max_epochs,
          "measures": {c: {**_stat_evidence(s), "verdict": v} for c, (s, v, _) in
                       results.items()}}
    why = "; ".join(f"{c.removeprefix('measure.')}: {v} ({w})"
                    for c, (_, v, w) in results.items())
    return Claim(cid, statement, hyp, comp.protocol, verdict, ev,
                 f"{verdict.capitalize()} at {low} ({comp.protocol}, log ratios): {why}.")
