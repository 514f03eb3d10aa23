"""The theory of QGen, computed: quantization as additive weight noise (uniform, variance
s²/12 for a step s), the regularizer it implies (≈ Σ (s²/24)·tr(H)), and a PAC-Bayes bound
whose perturbation scale is that noise.

``compute_theory(model, w0, train, test, TheorySpec())`` analyses one trained model; the
``theory`` post-pass (:mod:`qgen.theory.postpass`, ``qgen theory RUN_DIR...``) stores it as
``theory.json`` with ``theory.*`` table columns, and :mod:`qgen.theory.report` draws them in
the report. Modules: ``settings`` (TheorySpec), ``noise`` (statistics of Q(v) − v),
``regularizer`` (Hutchinson per layer, rounding and uniform loss gaps), ``bound`` (KL,
McAllester and kl-inverse bounds, Gibbs errors), ``compute`` (the one call), ``postpass``,
``report``. docs/theory.md derives the formulas and lists the assumptions.

The names below are loaded on first use, so that importing the package (e.g. for its
report section, which reads a results table) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("BoundTerms", "GibbsErrors", "binary_kl", "gaussian_kl", "gibbs_errors",
                     "kl_inverse_upper", "mcallester_complexity", "pacbayes_terms",
                     "zero_one_error"), "qgen.theory.bound"),
    **dict.fromkeys(("TheoryResult", "compute_theory"), "qgen.theory.compute"),
    **dict.fromkeys(("NoiseStats", "activation_noise", "activations_as", "element_steps",
                     "error_stats", "quantizers_enabled", "weight_noise",
                     "weight_quantized_layers"), "qgen.theory.noise"),
    **dict.fromkeys(("THEORY", "read_theory", "settings_from_dict", "theory_run",
                     "theory_runs"), "qgen.theory.postpass"),
    **dict.fromkeys(("LayerCurvature", "LossHvp", "NoisyLossGap", "layer_curvature",
                     "loss_hvp", "quadratic_terms", "uniform_loss_gap", "uniform_noise"),
                    "qgen.theory.regularizer"),
    **dict.fromkeys(("ACTIVATION_MODES", "TheorySpec"), "qgen.theory.settings"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qgen.theory' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
