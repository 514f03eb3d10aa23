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
