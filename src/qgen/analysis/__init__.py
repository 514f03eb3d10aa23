"""How well measures rank the generalization gap, and how bit width changes it.

Reads a results table (:mod:`qgen.results`) and imports no torch. The modules:
``frame`` (columns, run selection, hyperparameters, bit-width labels, protocol),
``estimate`` (a statistic with its bootstrap interval, or why it has none), ``kendall``
(τ and τ-b), ``psi`` (granulated Ψ), ``cmi`` (conditional mutual information), ``paired``
(quantized runs against their full-precision twins), ``claims`` (the study's claims as a
registry of verdicts) and ``pipeline`` (:func:`analyze`, which does all of it).

Example::

    from qgen.results import read_table
    from qgen.analysis import analyze

    a = analyze(read_table("results.parquet"), n_boot=1000, seed=0)
    a.tau_table(), [c.verdict for c in a.claims]
"""

from qgen.analysis.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    Claim,
    ClaimContext,
    direction_verdict,
    evaluate_claims,
    register_claim,
    registered_claims,
)
from qgen.analysis.cmi import CMI, conditional_mi, normalized_cmi
from qgen.analysis.estimate import Estimate, percentile_ci, resample_weights
from qgen.analysis.frame import (
    EQUAL_BUDGET,
    EQUAL_FIT,
    Exclusion,
    Hyperparameters,
    hyperparameters,
    label_bits,
    order_labels,
    protocol,
)
from qgen.analysis.kendall import (
    kendall_tau,
    kendall_tau_b,
    tau_estimates,
    weighted_tau_a,
    weighted_tau_b,
)
from qgen.analysis.paired import (
    LabelComparison,
    PairedStat,
    Pairing,
    Unpaired,
    pair_runs,
    paired_stat,
)
from qgen.analysis.pipeline import Analysis, MeasureCorrelation, analyze
from qgen.analysis.psi import Psi, granulated_psi

__all__ = [
    "CMI", "CONTRADICTED", "EQUAL_BUDGET", "EQUAL_FIT", "INCONCLUSIVE", "SUPPORTED",
    "Analysis", "Claim", "ClaimContext", "Estimate", "Exclusion", "Hyperparameters",
    "LabelComparison", "MeasureCorrelation", "PairedStat", "Pairing", "Psi", "Unpaired",
    "analyze", "conditional_mi", "direction_verdict", "evaluate_claims", "granulated_psi",
    "hyperparameters", "kendall_tau", "kendall_tau_b", "label_bits", "normalized_cmi",
    "order_labels", "pair_runs", "paired_stat", "percentile_ci", "protocol",
    "register_claim", "registered_claims", "resample_weights", "tau_estimates",
    "weighted_tau_a", "weighted_tau_b",
]
