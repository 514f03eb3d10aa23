"""Searches for the largest perturbation scale whose deviation stays at the target.

Both flatness families look for a threshold: the largest σ (PAC-Bayes) or α (sharpness)
whose train-error (or loss) increase is ``target`` (0.1). The deviation grows with the scale,
so a bracket [lower, upper] with deviation(lower) ≤ target < deviation(upper) can be narrowed
until it pins the threshold down. Two searches do that:

- :func:`threshold_search` (qgen's default): narrows the bracket until it is ``rel_width``
  (1%) of the value, in log scale (the thresholds of different models span decades), taking
  regula-falsi steps with the Illinois correction once both ends have a measured deviation
  (the Monte-Carlo draws are common to every scale, so the deviation curve is smooth and
  interpolation converges in a few steps), and reports the value interpolated inside the
  final bracket. An optional ``refine`` pass re-measures the bracket ends more precisely
  (more Monte-Carlo draws) and moves the bracket if the threshold moved. Values are not
  confined to a grid, so two models tie only if their thresholds agree to ~1%.
- :func:`bisect` (the reference codes' search, for the ``jiang2020``/``dziugaite2020``
  presets): plain bisection that stops at the first midpoint whose deviation is within
  ``tolerance`` of the target. Its answers are dyadic fractions of the interval, 12–15%
  apart at the demo's scales, so different models often tie.

The search keeps everything needed to judge its answer (measures.md, "keep the search
trace"): every scale tried with its deviation and raw samples, the final bracket, whether the
tolerance was met, and a saturation flag when the bracket never left one of its initial
ends (every scale tried was too destructive → 'lower', or never destructive enough →
'upper'), since a saturated search reports a bound of the interval rather than a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SearchResult:
    """Outcome of one bisection.

    ``value``: the scale that met the tolerance, or the midpoint of the final bracket when
    none did; ``bracket``: final (lower, upper); ``trace``: one dict per scale tried
    (``x``, ``deviation`` and whatever the deviation function recorded); ``converged``:
    the tolerance was met; ``saturation``: None, 'lower' or 'upper' (see module doc).
    """

    value: float
    bracket: tuple[float, float]
    trace: list[dict[str, Any]] = field(default_factory=list)
    converged: bool = False
    saturation: str | None = None
    steps: int = 0
    reference: float | None = None
    method: str = "bisect"
    #: deviations measured at the final bracket ends (None where not measured)
    bracket_deviation: tuple[float | None, float | None] = (None, None)
    #: Monte-Carlo standard error of ``value`` (PAC-Bayes with ``refine``), else None
    value_stderr: float | None = None

    @property
    def saturated(self) -> bool:
        """True when the search ended at a bound of its initial interval."""
        return self.saturation is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the trace included)."""
        out = asdict(self)
        out["bracket"] = list(self.bracket)
        out["bracket_deviation"] = list(self.bracket_deviation)
        out["saturated"] = self.saturated
        return out


def decided(dev_min: float, dev_max: float, target: float, tolerance: float) -> bool:
    """True when every deviation in [dev_min, dev_max] makes :func:`bisect` take the same
    step without converging (so the remaining draws at this scale cannot change the search)."""
    return dev_min >= target + tolerance or dev_max <= target - tolerance


def deviation(value: float, base: float, metric: str, kind: str) -> float:
    """The deviation of a perturbed ``value`` of ``metric`` ('accuracy' or 'loss') from the
    unperturbed ``base``: 'increase' is the increase of the error (base − value for accuracy,
    value − base for loss: negative when noise helps); 'absolute' is |value − base| (the
    reference codes', which lets gains and losses cancel)."""
    if kind == "absolute":
        return abs(value - base)
    return base - value if metric == "accuracy" else value - base


def deviation_range(mean_lo: float, mean_hi: float, base: float, metric: str = "accuracy",
                    kind: str = "absolute") -> tuple[float, float]:
    """The range of :func:`deviation` over a mean anywhere in [mean_lo, mean_hi]."""
    ends = (deviation(mean_lo, base, metric, kind), deviation(mean_hi, base, metric, kind))
    if kind == "absolute" and mean_lo <= base <= mean_hi:
        return 0.0, max(ends)
    return min(ends), max(ends)


DeviationFn = Callable[[float], tuple[float, dict[str, Any]]]


def bisect(deviation: DeviationFn, *, target: float, tolerance: float, lo: float, hi: float,
           steps: int, min_width: float = 0.0, probe_lo: bool = False) -> SearchResult:
    """Find the scale x in [lo, hi] with ``|deviation(x) − target| < tolerance``.

    ``deviation(x)`` returns the deviation at x and a dict of details kept in the trace.
    At most ``steps`` evaluations; with ``min_width`` > 0 the search also stops once the
    bracket is narrower than it. The deviation is assumed to increase with x.

    ``probe_lo`` first evaluates the lower end (useful when the perturbation there is not
    zero, e.g. the ε floor of magnitude-aware noise). If it already exceeds target +
    tolerance, every midpoint would too (the deviation increases with x), so the result of
    the full search is known without running it: the bracket [lo, lo + width after the
    search's halvings], flagged as 'lower' saturation; the probe is in the trace.
    """
    lower, upper = lo, hi
    result = SearchResult(value=(lo + hi) / 2, bracket=(lo, hi))
    if probe_lo:
        dev, details = deviation(lo)
        result.trace.append({"x": lo, "deviation": dev, "probe": "lo", **details})
        if dev >= target + tolerance:
            width, halvings = hi - lo, 0
            while halvings < steps and not (min_width > 0 and width < min_width):
                width, halvings = width / 2, halvings + 1
            result.bracket = (lo, lo + width)
            result.value = lo + width / 2
            result.saturation = "lower"
            return result
    for step in range(steps):
        if min_width > 0 and upper - lower < min_width:
            break
        x = (lower + upper) / 2
        dev, details = deviation(x)
        result.trace.append({"x": x, "deviation": dev, **details})
        result.steps = step + 1
        if abs(dev - target) < tolerance:
            result.value, result.converged = x, True
            break
        if dev > target:
            upper = x
        else:
            lower = x
    result.bracket = (lower, upper)
    if not result.converged:
        result.value = (lower + upper) / 2
        if lower == lo:
            result.saturation = "lower"
        elif upper == hi:
            result.saturation = "upper"
    return result


def _narrow(lower: float, upper: float, rel_width: float, min_width: float) -> bool:
    if min_width > 0 and upper - lower < min_width:
        return True
    return lower > 0 and upper - lower <= rel_width * upper


def _interpolate(x0: float, x1: float, d0: float, d1: float, target: float, log: bool) -> float:
    """x where the line through (x0, d0), (x1, d1) reaches ``target`` (in log x if ``log``)."""
    t = min(1.0, max(0.0, (target - d0) / (d1 - d0))) if d1 != d0 else 0.5
    if log and x0 > 0:
        return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))
    return x0 + t * (x1 - x0)


def _crossing(points: list[tuple[float, float]], level: float, near: float,
              log: bool) -> float | None:
    """Where the piecewise-linear curve through ``points`` (sorted by x) crosses ``level``
    (in log x if ``log``), the crossing nearest to ``near``; None if it never does."""
    best = None
    for (x0, d0), (x1, d1) in zip(points, points[1:], strict=False):
        if (d0 - level) * (d1 - level) <= 0 and d0 != d1:
            x = _interpolate(x0, x1, d0, d1, level, log and x0 > 0)
            if best is None or abs(math.log(x / near) if log else x - near) < \
                    abs(math.log(best / near) if log else best - near):
                best = x
    return best


def _refine(measure: Callable[[float, DeviationFn, str], float], refine: DeviationFn,
            coarse: list[tuple[float, float]], start: float, *, target: float, lo: float,
            hi: float, rel_width: float, budget: int, log_scale: bool,
            nudge_frac: float) -> _Bracket:
    """The refinement of :func:`threshold_search` (see its docstring); returns the bracket of
    the two precise points that straddle the target (or the nearest ones when the budget ran
    out first)."""
    log = log_scale and start > 0
    nudge = 1 + nudge_frac
    points: list[tuple[float, float]] = []
    x = start
    while budget > 0:
        points.append((x, measure(x, refine, "refine")))
        budget -= 1
        below = [p for p in points if p[1] <= target]
        above = [p for p in points if p[1] > target]
        b = max(below) if below else None
        a = min(above) if above else None
        if b is not None and a is not None and b[0] < a[0]:
            if _narrow(b[0], a[0], rel_width, 0.0) or budget == 0:
                break
            t = min(0.9, max(0.1, (target - b[1]) / (a[1] - b[1])))
            x = (math.exp(math.log(b[0]) + t * (math.log(a[0]) - math.log(b[0]))) if log
                 else b[0] + t * (a[0] - b[0]))
            continue
        # every precise point is on one side: predict the crossing from the last two precise
        # points (their secant), or from the coarse curve shifted by the precise-minus-coarse
        # difference when there is only one, then go a little past it
        px, pd = points[-1]
        up = pd <= target
        guess = None
        if len(points) >= 2:
            (qx, qd) = points[-2]
            if (pd - qd) * (px - qx) > 0:  # increasing: extrapolate
                guess = _extrapolate(qx, px, qd, pd, target, log)
        else:
            value = _crossing_value(coarse, px, log)
            guess = _crossing(coarse, target - (pd - value), px, log) if value is not None \
                else None
        if guess is None or guess <= 0:
            guess = px * 2 if up else px / 2
        guess = guess * nudge if up else guess / nudge
        # always move, at least by the nudge and at most by a factor 2
        x = min(max(guess, px * nudge), px * 2) if up else max(min(guess, px / nudge), px / 2)
        x = min(max(x, lo), hi)
        if x in (lo, hi):
            break
    br = _Bracket(lo, hi, target)
    below = [p for p in points if p[1] <= target]
    above = [p for p in points if p[1] > target]
    if below:
        br.set_lower(*max(below))
    if above:
        br.set_upper(*min(above))
    return br


def _extrapolate(x0: float, x1: float, d0: float, d1: float, target: float, log: bool) -> float:
    """x where the line through (x0, d0), (x1, d1) reaches ``target``, extrapolating (in
    log x if ``log``)."""
    a, b = (math.log(x0), math.log(x1)) if log else (x0, x1)
    u = a + (target - d0) * (b - a) / (d1 - d0)
    return math.exp(u) if log else u


def _crossing_value(points: list[tuple[float, float]], x: float, log: bool) -> float | None:
    """The piecewise-linear curve through ``points`` evaluated at x (None outside them)."""
    for (x0, d0), (x1, d1) in zip(points, points[1:], strict=False):
        if x0 <= x <= x1:
            if x1 == x0:
                return d0
            if log and x0 > 0:
                t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            else:
                t = (x - x0) / (x1 - x0)
            return d0 + t * (d1 - d0)
    return None


class _Bracket:
    """The state of a threshold search: [lower, upper], the deviations measured there, and
    the Illinois weights (f = deviation − target, halved when the other end is kept twice)."""

    def __init__(self, lo: float, hi: float, target: float) -> None:
        self.lower, self.upper, self.target = lo, hi, target
        self.d_lo: float | None = None
        self.d_hi: float | None = None
        self.w_lo = self.w_hi = 0.0
        self.last = ""

    def set_lower(self, x: float, d: float) -> None:
        if self.last == "lower" and self.d_hi is not None:
            self.w_hi /= 2
        self.lower, self.d_lo, self.w_lo, self.last = x, d, d - self.target, "lower"

    def set_upper(self, x: float, d: float) -> None:
        if self.last == "upper" and self.d_lo is not None:
            self.w_lo /= 2
        self.upper, self.d_hi, self.w_hi, self.last = x, d, d - self.target, "upper"

    def next_point(self, log_scale: bool) -> float:
        use_log = log_scale and self.lower > 0
        a, b = ((math.log(self.lower), math.log(self.upper)) if use_log
                else (self.lower, self.upper))
        t = 0.5
        if self.d_lo is not None and self.d_hi is not None and self.w_hi != self.w_lo:
            # regula falsi, kept well inside so the bracket shrinks by >= 10% a step
            t = min(0.9, max(0.1, self.w_lo / (self.w_lo - self.w_hi)))
        return math.exp(a + t * (b - a)) if use_log else a + t * (b - a)


def threshold_search(deviation_fn: DeviationFn, *, target: float, lo: float, hi: float,
                     steps: int, rel_width: float = 0.01, min_width: float = 0.0,
                     log_scale: bool = True, probe_lo: bool = False,
                     refine: DeviationFn | None = None, refine_steps: int = 6,
                     refine_width: float = 0.1) -> SearchResult:
    """The scale x in [lo, hi] where ``deviation_fn(x)`` crosses ``target``, to a bracket
    [lower, upper] with upper − lower ≤ ``rel_width`` · upper (see the module docstring).

    ``deviation_fn(x)`` returns the deviation and a dict of details kept in the trace; it is
    assumed to grow with x, to be ≤ target at ``lo`` (measured first when ``probe_lo``) and
    > target at ``hi`` (never evaluated). ``log_scale`` places points geometrically once the
    lower end is positive (before that, midpoints are linear). At most ``steps`` evaluations
    before refinement; ``min_width`` > 0 also stops once the bracket is narrower than it.

    ``refine(x)``, when given, measures a point precisely (e.g. with many more Monte-Carlo
    draws), at most ``refine_steps`` times: first at the value the search found; then, since
    the precise curve is the coarse one shifted by the Monte-Carlo error, at the point where
    the coarse curve, shifted by the measured difference, crosses the target (2% past it, so
    that the two precise points straddle the target; with more than one precise point on one
    side, their secant), and, once two precise points straddle it, by regula falsi between
    them until they are ``refine_width`` (10%) apart. The value is interpolated between the
    two precise points that straddle the target (the common draws make the curve between them
    smooth; their distance is the reported bracket). A ``stderr`` in the refined details
    gives ``value_stderr``: the larger end's standard error divided by the deviation curve's
    slope across the bracket.

    Saturation: 'upper' when no scale up to ``hi`` reached the target; 'lower' when the
    bracket never left ``lo`` (the threshold is at or below it).
    """
    res = SearchResult(value=(lo + hi) / 2, bracket=(lo, hi), method="threshold")
    details: dict[float, dict[str, Any]] = {}

    def measure(x: float, fn: DeviationFn, stage: str) -> float:
        dev, info = fn(x)
        res.trace.append({"x": x, "deviation": dev, "stage": stage, **info})
        details[x] = info
        return dev

    br = _Bracket(lo, hi, target)
    if probe_lo:
        d0 = measure(lo, deviation_fn, "probe")
        if d0 > target:
            res.bracket, res.value, res.saturation = (lo, lo), lo, "lower"
            res.bracket_deviation = (d0, None)
            return res
        br.set_lower(lo, d0)

    def narrow() -> bool:
        return _narrow(br.lower, br.upper, rel_width, min_width)

    def step(fn: DeviationFn, stage: str) -> None:
        x = br.next_point(log_scale)
        d = measure(x, fn, stage)
        (br.set_upper if d > target else br.set_lower)(x, d)

    for _ in range(steps):
        if narrow():
            break
        step(deviation_fn, "search")
        res.steps += 1
    inside = br.d_lo is not None and br.d_hi is not None and br.d_lo <= target < br.d_hi
    if refine is not None and narrow() and inside and br.lower > lo and br.upper < hi:
        coarse = sorted((t["x"], t["deviation"]) for t in res.trace)
        start = _interpolate(br.lower, br.upper, br.d_lo, br.d_hi, target,
                             log_scale and br.lower > 0)
        br = _refine(measure, refine, coarse, start, target=target, lo=lo, hi=hi,
                     rel_width=refine_width, budget=refine_steps, log_scale=log_scale,
                     nudge_frac=min(0.02, refine_width / 4))
    res.bracket = (br.lower, br.upper)
    res.bracket_deviation = (br.d_lo, br.d_hi)
    inside = br.d_lo is not None and br.d_hi is not None and br.d_lo <= target < br.d_hi
    if br.upper >= hi:
        res.saturation = "upper"
    elif br.lower <= lo:
        res.saturation = "lower"
    # refined: the value is interpolated between two precise points that straddle the
    # target, wherever they are; unrefined: the bracket must also be narrow
    res.converged = res.saturation is None and inside and (refine is not None or narrow())
    if inside:
        res.value = _interpolate(br.lower, br.upper, br.d_lo, br.d_hi, target,
                                 log_scale and br.lower > 0)
        se = [details.get(x, {}).get("stderr") for x in (br.lower, br.upper)]
        if refine is not None and all(isinstance(v, (int, float)) for v in se):
            slope = (br.d_hi - br.d_lo) / (br.upper - br.lower)
            res.value_stderr = max(se) / slope if slope > 0 else math.inf
    else:
        lo_, hi_ = br.lower, br.upper
        res.value = math.sqrt(lo_ * hi_) if log_scale and lo_ > 0 else (lo_ + hi_) / 2
    return res
