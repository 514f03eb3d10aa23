"""qgen.analysis against hand-computed values: τ, τ-b, Ψ and CMI on small tables with ties,
paired comparisons and claim verdicts on tables whose answer is known, and the coverage of
the bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from qgen.analysis import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    analyze,
    conditional_mi,
    granulated_psi,
    hyperparameters,
    kendall_tau,
    kendall_tau_b,
    pair_runs,
    tau_estimates,
    weighted_tau_a,
    weighted_tau_b,
)
from qgen.analysis.estimate import resample_weights
from qgen.errors import QgenError


# ------------------------------------------------------------------ τ and τ-b, by hand
def test_tau_with_ties_by_hand():
    # pairs: (0,1) +1, (0,2) +1, (0,3) +1, (1,2) x tied: 0, (1,3) −1, (2,3) y tied: 0
    x, y = [1, 2, 2, 3], [1, 3, 2, 2]
    assert kendall_tau(x, y) == pytest.approx(2 / 6)
    # τ-b: (C − D) / sqrt((n0 − tx)(n0 − ty)) = (3 − 1) / sqrt(5 · 5)
    assert kendall_tau_b(x, y) == pytest.approx(2 / 5)
    assert kendall_tau_b(x, y) == pytest.approx(kendalltau(x, y, variant="b").statistic)


def test_tau_edge_cases():
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert kendall_tau([1, 2, np.nan, 4], [1, 2, 3, 4]) == pytest.approx(1.0)  # NaN dropped
    tau, tau_b = tau_estimates([1, 2], [1, 2], n_boot=10, conf=0.95,
                               rng_tau=np.random.default_rng(0),
                               rng_tau_b=np.random.default_rng(1))
    assert tau.value is None and "too few runs" in tau.reason
    _, tau_b = tau_estimates([1, 1, 1], [1, 2, 3], n_boot=10, conf=0.95,
                             rng_tau=np.random.default_rng(0),
                             rng_tau_b=np.random.default_rng(1))
    assert tau_b.value is None and "constant" in tau_b.reason


def test_weighted_tau_matches_a_built_resample():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 4, 9).astype(float), rng.integers(0, 4, 9).astype(float)
    w = resample_weights(rng, 9, 5)
    for row in w:
        idx = np.repeat(np.arange(9), row.astype(int))
        # copies of one run are tied in both: built resample and quadratic form agree
        assert weighted_tau_a(x, y, row)[0] == pytest.approx(kendall_tau(x[idx], y[idx]))
        assert weighted_tau_b(x, y, row)[0] == pytest.approx(kendall_tau_b(x[idx], y[idx]),
                                                             nan_ok=True)


# ------------------------------------------------------------------ Ψ and CMI, by hand
def _four_runs() -> pd.DataFrame:
    # two hyperparameters, one seed: within each width, lr flips the order once
    return pd.DataFrame({
        "run_id": ["a1", "b1", "a2", "b2"], "status": "converged",
        "hp.quant.label": "fp", "hp.optim.lr": [0.1, 0.2, 0.1, 0.2],
        "hp.model.width": [1, 1, 2, 2], "hp.train.seed": 0,
        "gen.loss_gap": [1.0, 2.0, 4.0, 3.0], "measure.m": [1.0, 2.0, 3.0, 4.0]})


def test_granulated_psi_by_hand():
    runs = _four_runs()
    hps = hyperparameters(runs)
    assert set(hps.varying) == {"hp.optim.lr", "hp.model.width"}
    p = granulated_psi(runs, "measure.m", "gen.loss_gap", hps, n_boot=0)
    # ψ_lr: width 1 → τ = +1, width 2 → τ = −1; mean 0. ψ_width: lr 0.1 → +1, lr 0.2 → +1
    assert p.psi_k["hp.optim.lr"].value == pytest.approx(0.0)
    assert p.psi_k["hp.model.width"].value == pytest.approx(1.0)
    assert p.psi.value == pytest.approx(0.5)


def test_conditional_mi_by_hand():
    runs = _four_runs()
    c = conditional_mi(runs, "measure.m", "gen.loss_gap", hyperparameters(runs), n_boot=0)
    # S = ∅: 12 ordered pairs, 10 concordant, 2 discordant; H(V_g) = 1 bit
    empty = 5 / 6 * math.log2(5 / 3) + 1 / 6 * math.log2(1 / 3)
    # S = {lr}: bins (a,a) and (b,b) fully concordant (I = 1), bins (a,b) and (b,a) with
    # joint (½, ¼, ¼) over (−−, ++, −+): I = ½log2(4/3) + ¼log2(2) + ¼log2(2/3)
    mixed = 0.5 * math.log2(0.5 / 0.375) + 0.25 + 0.25 * math.log2(0.25 / 0.375)
    lr = (2 / 12) + (2 / 12) + (8 / 12) * mixed
    assert c.by_set["∅"] == pytest.approx(empty)
    assert c.by_set["hp.optim.lr"] == pytest.approx(lr)
    # S = {width}: the cross-width bins fix the gap's order (H = 0, they add nothing);
    # within width each bin is perfectly (anti)dependent: I / H = 1
    assert c.by_set["hp.model.width"] == pytest.approx(1.0)
    # both: every ordered pair has its own bin, H = 0: undefined
    assert c.by_set["hp.optim.lr + hp.model.width"] is None
    assert c.score.value == pytest.approx(empty)
    assert c.best_set == ()


# ------------------------------------------------------------------ pairs and claims
def test_pairs_join_every_hyperparameter_and_seed(make_table):
    df = make_table(seeds=2)
    pairing = pair_runs(df)
    assert {k: len(v) for k, v in pairing.pairs.items()} == {"w8a8": 12, "w4a4": 12,
                                                            "w2a2": 12}
    for label, pairs in pairing.pairs.items():
        for q, f in pairs:
            assert df["hp.quant.label"][q] == label and df["hp.quant.label"][f] == "fp"
            for c in ("hp.optim.lr", "hp.model.width", "hp.train.seed"):
                assert df[c][q] == df[c][f]
    # drop one fp run: its three quantized twins become unpaired, counted with a reason
    gone = df[(df["hp.quant.label"] == "fp")].index[0]
    a = analyze(df.drop(index=gone).reset_index(drop=True), n_boot=200)
    assert len(a.pairing.unpaired) == 3
    assert a.exclusion_counts()["unpaired quantized (no full-precision twin)"] == 3


def test_known_verdicts(make_table):
    a = analyze(make_table(seeds=2), n_boot=500)
    verdicts = {c.id: c.verdict for c in a.claims}
    assert verdicts["eight_bit_like_fp"] == SUPPORTED        # shift 0, noise tiny
    assert verdicts["fewer_bits_smaller_gap"] == SUPPORTED   # w2a2: −0.05
    assert verdicts["fewer_bits_higher_train_loss"] == SUPPORTED  # more epochs to target
    assert verdicts["quantized_flatter_mag"] == SUPPORTED
    parts = {p.id: p.verdict for c in a.claims for p in c.parts}
    assert parts["fewer_bits_smaller_gap.w8a8"] == INCONCLUSIVE
    s = a.comparisons["w2a2"].stats["gen.loss_gap"]
    assert s.median == pytest.approx(-0.05, abs=0.003)
    assert s.low < -0.05 < s.high and s.n == 12 and s.wilcoxon_p < 0.01


def test_contradicted_verdicts(make_table):
    # 8-bit far from fp, and lower bits with a LARGER gap
    df = make_table(gap_shift={"fp": 0.0, "w8a8": 0.05, "w4a4": 0.06, "w2a2": 0.08})
    verdicts = {c.id: c.verdict for c in analyze(df, n_boot=500).claims}
    assert verdicts["eight_bit_like_fp"] == CONTRADICTED
    assert verdicts["fewer_bits_smaller_gap"] == CONTRADICTED


def test_too_few_runs_is_said_not_computed(make_table):
    df = make_table(seeds=1, lrs=(0.1,), widths=(2,))  # one run per bit width, one pair
    a = analyze(df, n_boot=100)
    assert a.correlations["measure.pacbayes.flatness"].tau_by["hp.quant.label"]["fp"].value \
        is None
    s = a.comparisons["w2a2"].stats["gen.loss_gap"]
    assert s.median is None and "too few" in s.reason
    assert all(c.verdict == INCONCLUSIVE for c in a.claims)


def test_equal_budget_runs_are_analysed_and_marked(make_table):
    a = analyze(make_table(status="max_epochs"), n_boot=100)
    assert a.protocol == "equal budget" and a.n_max_epochs == len(a.runs)
    claim = next(c for c in a.claims if c.id == "fewer_bits_higher_train_loss")
    # not equal fit: the training loss itself is tested
    assert claim.parts[0].evidence["tested"] == "gen.train_loss"


def test_excluded_runs_are_counted(make_table):
    df = make_table()
    df.loc[0, "status"] = "failed"
    df.loc[1, "meta.healthy"] = False
    df.loc[2, "gen.loss_gap"] = float("nan")
    a = analyze(df, n_boot=100)
    assert a.n_analysed == len(df) - 3
    reasons = {e.reason for e in a.exclusions}
    assert reasons == {"failed", "unhealthy", "no finite gap"}


def test_bad_tables_are_one_line_errors(make_table):
    with pytest.raises(QgenError, match="no runs"):
        analyze(make_table().iloc[:0])
    with pytest.raises(QgenError, match="lacks the column"):
        analyze(make_table().drop(columns=["gen.loss_gap"]))
    df = make_table()
    df["status"] = "failed"
    with pytest.raises(QgenError, match="no run can be analysed"):
        analyze(df)
    with pytest.raises(QgenError, match="gap"):
        analyze(make_table(), gap="accuracy")


def test_analysis_is_reproducible_and_json_able(make_table):
    import json

    a, b = analyze(make_table(), n_boot=200, seed=1), analyze(make_table(), n_boot=200, seed=1)
    assert json.dumps(a.to_dict(), sort_keys=True, default=str) == \
        json.dumps(b.to_dict(), sort_keys=True, default=str)


# ------------------------------------------------------------------ bootstrap coverage
def test_bootstrap_interval_covers_the_true_tau_at_about_its_rate():
    """Population: (x, y) bivariate normal with ρ = 0.6, whose τ is (2/π)·asin(ρ). Over 150
    samples of 40 runs, the 90% percentile interval of τ should cover it about 90% of the
    time (binomial sd 2.4%; the percentile bootstrap of τ runs a little under nominal)."""
    rho = 0.6
    true = 2 / math.pi * math.asin(rho)
    rng = np.random.default_rng(0)
    hits, trials = 0, 150
    for t in range(trials):
        z = rng.standard_normal((40, 2))
        x = z[:, 0]
        y = rho * z[:, 0] + math.sqrt(1 - rho ** 2) * z[:, 1]
        tau, _ = tau_estimates(x, y, n_boot=400, conf=0.90,
                               rng_tau=np.random.default_rng(1000 + t),
                               rng_tau_b=np.random.default_rng(2000 + t))
        # for continuous data the sample τ-a is unbiased for the population τ
        hits += tau.low <= true <= tau.high
    rate = hits / trials
    assert 0.80 <= rate <= 0.97, rate
