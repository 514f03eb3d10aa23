"""Bisection for the largest perturbation scale whose deviation stays at the target.

Both flatness families look for a threshold: the largest σ (PAC-Bayes) or α (sharpness)
whose train-accuracy (or loss) deviation is ``target`` (0.1), within ``tolerance`` (0.01).
The deviation grows with the scale, so a bisection on ``[lo, hi]`` finds it:
deviation too large → the scale becomes the new upper end; too small → the new lower end;
within tolerance → done.

The search keeps everything needed to judge its answer (measures.md, "keep the search
trace"): every scale tried with its deviation and raw samples, the final bracket, whether the
tolerance was met, and a saturation flag when the bracket never left one of its initial
ends (every scale tried was too destructive → 'lower', or never destructive enough →
'upper'), since a saturated search reports a bound of the interval rather than a threshold.
"""

from __future__ import annotations

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

    @property
    def saturated(self) -> bool:
        """True when the search ended at a bound of its initial interval."""
        return self.saturation is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the trace included)."""
        out = asdict(self)
        out["bracket"] = list(self.bracket)
        out["saturated"] = self.saturated
        return out


def decided(dev_min: float, dev_max: float, target: float, tolerance: float) -> bool:
    """True when every deviation in [dev_min, dev_max] makes :func:`bisect` take the same
    step without converging (so the remaining draws at this scale cannot change the search)."""
    return dev_min >= target + tolerance or dev_max <= target - tolerance


def deviation_range(mean_lo: float, mean_hi: float, base: float) -> tuple[float, float]:
    """The range of |mean − base| over mean in [mean_lo, mean_hi]."""
    ends = (abs(mean_lo - base), abs(mean_hi - base))
    low = 0.0 if mean_lo <= base <= mean_hi else min(ends)
    return low, max(ends)


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
