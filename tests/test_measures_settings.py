"""MeasureSpec: validation with field-naming errors, presets, round trip, name patterns."""

import pytest

from qgen.errors import QgenError
from qgen.measures import PRESETS, MeasureSpec, measure_names
from qgen.measures.registry import get_measure, resolve_names


def test_defaults_are_measures_md():
    s = MeasureSpec()
    assert (s.gauss_std, s.mag_noise, s.params, s.bn, s.target) == (
        "sigma", "variance", "weights", "eval", "accuracy")
    assert (s.target_deviation, s.target_tolerance, s.ascent_steps) == (0.1, 0.01, 20)
    # one-sided deviation; bracket to 1% of the value; draws until the deviation's standard
    # error is half the tolerance (at most 200); a magnitude floor that scales with alpha
    assert (s.deviation, s.search, s.bisect_rel_width) == ("increase", "threshold", 0.01)
    assert (s.mc_stderr, s.mc_draws, s.ascent_keep) == (0.005, 200, "best")
    assert (s.bisect_lo, s.bisect_hi, s.mag_eps) == (1e-6, 2.0, 1e-3)
    assert s.sharpness_mag_radius == "scaled"
    assert s.quant_mode == "latent" and s.sharpness_set == "box"


@pytest.mark.parametrize("field,value,fragment", [
    ("gauss_std", "sigma2", "measures.gauss_std: must be one of sigma, sigma_squared"),
    ("mag_noise", "var", "measures.mag_noise"),
    ("params", "biases", "measures.params: must be one of weights, all"),
    ("bn", "train", "measures.bn"),
    ("quant_mode", "float", "measures.quant_mode: must be one of latent, dequantized"),
    ("target", "acc", "measures.target"),
    ("sharpness_set", "linf", "measures.sharpness_set"),
    ("mc_draws", 0, "measures.mc_draws: must be in 1..100000"),
    ("eval_subset", 0, "measures.eval_subset"),
    ("bisect_hi", 0.0, "measures.bisect_hi"),
    ("target_tolerance", 0.5, "measures.target_tolerance: must be < target_deviation"),
    ("seed", -1, "measures.seed"),
    ("mag_eps", "x", "measures.mag_eps: must be a number"),
])
def test_bad_values_name_the_field(field, value, fragment):
    with pytest.raises(QgenError, match=fragment.replace(".", r"\.")):
        MeasureSpec(**{field: value})


def test_unknown_field_and_preset():
    with pytest.raises(QgenError, match="unknown field 'sigma'"):
        MeasureSpec.from_dict({"sigma": 1})
    with pytest.raises(QgenError, match="measures.preset: must be one of"):
        MeasureSpec.preset("jiang")


def test_presets():
    assert set(PRESETS) == {"default", "dziugaite2020", "jiang2020"}
    d = MeasureSpec.preset("dziugaite2020")
    assert (d.gauss_std, d.mag_noise, d.params, d.bn, d.mag_orig_denominator) == (
        "sigma_squared", "std", "all", "fold_keep", "w_minus_w0")
    # the reference's evaluation data, bound set, size adjustment and float-twin policy
    assert d.eval_subset is None and d.bound_params == "weights"
    assert d.size_transform == "reference" and d.quant_mode == "dequantized"
    j = MeasureSpec.preset("jiang2020")
    assert (j.bisect_hi, j.bisect_steps, j.bisect_min_width) == (5.0, 20, 5e-3)
    assert MeasureSpec.preset("dziugaite2020", mc_draws=4).mc_draws == 4
    assert MeasureSpec.from_dict({"preset": "dziugaite2020", "params": "weights"}).params == \
        "weights"


@pytest.mark.parametrize("preset", PRESETS)
def test_round_trip(preset):
    spec = MeasureSpec.preset(preset, names=["pacbayes.*"], eval_subset=None)
    assert MeasureSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["names"] == ["pacbayes.*"]


def test_names_and_patterns():
    # names are matched against the catalog where they are used (building a MeasureSpec
    # does not load the catalog)
    with pytest.raises(QgenError, match="'pacbayes.sharp' matches no measure"):
        resolve_names(MeasureSpec(names=("pacbayes.sharp",)).names)
    assert resolve_names(["pacbayes.mag.*"]) == [
        "pacbayes.mag.flatness", "pacbayes.mag.init", "pacbayes.mag.orig"]
    assert resolve_names([]) == measure_names()
    families = {n.split(".")[0] for n in measure_names()}
    assert families == {"pacbayes", "sharpness", "norm", "hessian"}


def test_registry_entries_cite_their_equation():
    for name in measure_names():
        m = get_measure(name)
        assert m.equation and m.name == name
    assert "eq. 48" in get_measure("pacbayes.init").equation
    assert "search.pacbayes" in get_measure("pacbayes.flatness").needs
    assert "w0" in get_measure("norm.frobenius_dist").needs
    with pytest.raises(QgenError, match="unknown measure"):
        get_measure("nope")
