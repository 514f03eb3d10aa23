"""Bisection: finds a known threshold, reports its bracket and trace, flags saturation."""

import pytest

from qgen.measures.search import bisect

TARGET, TOL = 0.1, 0.01


def linear(slope: float):
    """deviation(x) = slope * x: the threshold (deviation = 0.1) is at 0.1 / slope."""
    calls = []

    def dev(x: float):
        calls.append(x)
        return slope * x, {"tag": len(calls)}

    return dev, calls


@pytest.mark.parametrize("slope", [0.07, 0.3, 1.0, 13.0])
def test_finds_threshold_within_tolerance(slope):
    dev, calls = linear(slope)
    res = bisect(dev, target=TARGET, tolerance=TOL, lo=0.0, hi=2.0, steps=30)
    assert res.converged and not res.saturated
    # |slope*x - 0.1| < 0.01  <=>  x within 0.01/slope of the true threshold
    assert abs(res.value - TARGET / slope) < TOL / slope
    assert res.bracket[0] <= TARGET / slope + TOL / slope
    assert res.bracket[1] >= TARGET / slope - TOL / slope
    assert [t["x"] for t in res.trace] == calls
    assert res.trace[-1]["x"] == res.value
    assert all("deviation" in t and "tag" in t for t in res.trace)
    assert res.steps == len(calls)


def test_bracket_always_contains_threshold_when_not_converged():
    # A step function never lands inside the tolerance: the bracket narrows around the jump.
    jump = 0.3141

    def dev(x):
        return (1.0 if x > jump else 0.0), {}

    res = bisect(dev, target=TARGET, tolerance=TOL, lo=0.0, hi=2.0, steps=12)
    assert not res.converged and not res.saturated
    lo, hi = res.bracket
    assert lo <= jump <= hi
    assert hi - lo == pytest.approx(2.0 / 2**12)
    assert res.value == pytest.approx((lo + hi) / 2)
    assert len(res.trace) == 12


def test_upper_saturation_flagged():
    # Never destructive enough: every x keeps the deviation below target.
    res = bisect(lambda x: (0.0, {}), target=TARGET, tolerance=TOL, lo=0.0, hi=2.0, steps=10)
    assert res.saturated and res.saturation == "upper"
    assert res.bracket[1] == 2.0 and res.value > 1.99


def test_lower_saturation_flagged():
    res = bisect(lambda x: (0.9, {}), target=TARGET, tolerance=TOL, lo=0.0, hi=2.0, steps=10)
    assert res.saturated and res.saturation == "lower"
    assert res.bracket[0] == 0.0 and res.value < 0.002


def test_min_width_stops_early():
    dev, calls = linear(1e-6)  # threshold far above the interval -> would run all steps
    res = bisect(dev, target=TARGET, tolerance=TOL, lo=0.0, hi=5.0, steps=20, min_width=5e-3)
    assert res.bracket[1] - res.bracket[0] < 5e-3
    assert len(calls) == 10  # 5 / 2**10 < 5e-3 <= 5 / 2**9
    assert res.saturation == "upper"


def test_to_dict_is_plain():
    import json

    dev, _ = linear(1.0)
    d = bisect(dev, target=TARGET, tolerance=TOL, lo=0.0, hi=2.0, steps=5).to_dict()
    assert json.loads(json.dumps(d))["bracket"] == list(d["bracket"])
    assert {"value", "bracket", "trace", "converged", "saturated", "saturation"} <= set(d)


@pytest.mark.parametrize("min_width", [0.0, 5e-3])
def test_probe_lo_shortcut_gives_the_full_searchs_answer(min_width):
    calls = []

    def destructive(x):
        calls.append(x)
        return 0.9, {}

    kw = dict(target=TARGET, tolerance=TOL, lo=0.0, hi=2.0, steps=10, min_width=min_width)
    full = bisect(destructive, **kw)
    n_full = len(calls)
    probed = bisect(destructive, probe_lo=True, **kw)
    assert len(calls) == n_full + 1 and calls[-1] == 0.0  # one evaluation instead of many
    assert probed.saturation == full.saturation == "lower"
    assert probed.bracket == full.bracket and probed.value == full.value
    assert probed.trace == [{"x": 0.0, "deviation": 0.9, "probe": "lo"}]


def test_probe_lo_below_target_runs_the_normal_search():
    dev, calls = linear(0.5)
    plain = bisect(dev, target=TARGET, tolerance=TOL, lo=0.0, hi=2.0, steps=30)
    probed = bisect(dev, target=TARGET, tolerance=TOL, lo=0.0, hi=2.0, steps=30, probe_lo=True)
    assert probed.value == plain.value and probed.converged
    assert probed.trace[0]["probe"] == "lo" and probed.trace[1:] == [
        {**t, "tag": t["tag"] + len(plain.trace) + 1} for t in plain.trace]


# ----------------------------------------------------------------- the threshold search
def sigmoid_curve(threshold: float, steepness: float = 6.0):
    """A smooth deviation curve in log scale that crosses TARGET exactly at ``threshold``
    (deviation 0 far below it, 1 far above), like a perturbation search's."""
    import math

    shift = -math.log(1 / TARGET - 1) / steepness

    def dev(x):
        z = steepness * (math.log(x) - math.log(threshold) + shift)
        return 1 / (1 + math.exp(-z)), {}

    return dev


@pytest.mark.parametrize("threshold", [3e-4, 0.0137, 0.33, 1.7])
def test_threshold_search_pins_the_threshold_to_one_percent(threshold):
    from qgen.measures.search import threshold_search

    res = threshold_search(sigmoid_curve(threshold), target=TARGET, lo=1e-6, hi=2.0, steps=30)
    assert res.converged and not res.saturated and res.method == "threshold"
    lo, hi = res.bracket
    assert lo <= threshold <= hi and hi - lo <= 0.01 * hi
    assert res.value == pytest.approx(threshold, rel=2e-3)  # interpolated inside the bracket
    assert res.steps <= 16  # regula falsi: far fewer evaluations than a 1% bisection needs
    d_lo, d_hi = res.bracket_deviation
    assert d_lo <= TARGET < d_hi


def test_threshold_search_values_do_not_tie_on_a_grid():
    """The tolerance bisection returns dyadic fractions, so models with nearby thresholds
    share a value; the threshold search separates every one of them."""
    import random

    from qgen.measures.search import threshold_search

    rng = random.Random(0)
    truths = [0.0137 * (1 + 0.3 * rng.random()) for _ in range(200)]
    new = [threshold_search(sigmoid_curve(t), target=TARGET, lo=1e-6, hi=2.0,
                            steps=30).value for t in truths]
    old = [bisect(sigmoid_curve(t), target=TARGET, tolerance=TOL, lo=0.0, hi=2.0,
                  steps=15).value for t in truths]
    assert len(set(new)) == len(truths)
    assert all(abs(v / t - 1) < 0.01 for v, t in zip(new, truths, strict=True))
    assert len(set(old)) < len(truths) / 4  # the old grid: few distinct values


def test_threshold_search_saturation_and_linear_start():
    from qgen.measures.search import threshold_search

    up = threshold_search(lambda x: (0.0, {}), target=TARGET, lo=1e-6, hi=2.0, steps=40)
    assert up.saturation == "upper" and not up.converged
    down = threshold_search(lambda x: (0.9, {}), target=TARGET, lo=1e-6, hi=2.0, steps=40)
    assert down.saturation == "lower" and down.value < 1.1e-6
    probed = threshold_search(lambda x: (0.9, {}), target=TARGET, lo=1e-6, hi=2.0, steps=40,
                              probe_lo=True)
    assert probed.saturation == "lower" and len(probed.trace) == 1
    # lo = 0 starts with linear midpoints, then goes geometric
    res = threshold_search(sigmoid_curve(0.02), target=TARGET, lo=0.0, hi=2.0, steps=40)
    assert res.trace[0]["x"] == 1.0 and res.value == pytest.approx(0.02, rel=2e-3)


def test_refine_remeasures_the_bracket_and_follows_a_moved_threshold():
    """A coarse measurement puts the threshold at 0.0137; the precise one (refine) at 0.0145:
    the bracket steps outward until it holds the precise crossing, and the standard error
    of the value comes from the refined deviation's standard error and the slope."""
    from qgen.measures.search import threshold_search

    coarse, fine = sigmoid_curve(0.0137), sigmoid_curve(0.0145)
    refined = []

    def refine(x):
        refined.append(x)
        d, _ = fine(x)
        return d, {"stderr": 0.002}

    res = threshold_search(coarse, target=TARGET, lo=1e-6, hi=2.0, steps=30, refine=refine)
    lo, hi = res.bracket
    assert res.converged and lo <= 0.0145 <= hi and hi / lo < 1.1  # refine_width: 10%
    assert res.value == pytest.approx(0.0145, rel=1e-2)  # interpolated between them
    assert 2 <= len(refined) <= 4  # the start, then a step past the shifted crossing
    d_lo, d_hi = res.bracket_deviation
    slope = (d_hi - d_lo) / (hi - lo)
    assert res.value_stderr == pytest.approx(0.002 / slope)
    assert [t["stage"] for t in res.trace].count("refine") == len(refined)
