"""Generalization measures, correct on quantized networks.

``compute_measures(model, w0, train_x, train_y, MeasureSpec())`` computes the registered
measures of one trained model: PAC-Bayes and sharpness bounds and flatness (plain and
magnitude-aware, from seeded bisection searches), norm and margin measures (spectral norms
both reshaped and exact by FFT, path norm), and Hessian trace / top eigenvalue. Every choice
that changes a number is a field of :class:`MeasureSpec` and is stored with the result.

Modules: ``settings`` (MeasureSpec, presets), ``registry`` and ``catalog`` (the measures),
``context`` (shared cache), ``params`` (the one parameter selector, model preparation for
quantized and BN-folded networks), ``perturb`` (in-place perturbation, noise laws,
evaluation), ``search`` (bisection), ``pacbayes``, ``sharpness``, ``norms``, ``curvature``,
``bnfold``, ``compute`` (the one-call API).
"""

from qgen.measures import catalog  # noqa: F401  (importing registers the measures)
from qgen.measures.compute import MeasureResult, compute_measures
from qgen.measures.context import MeasureContext
from qgen.measures.params import prepare_model, select_parameters
from qgen.measures.registry import Measure, MeasureValue, get_measure, measure_names, register
from qgen.measures.search import SearchResult, bisect
from qgen.measures.settings import PRESETS, MeasureSpec

__all__ = [
    "PRESETS",
    "Measure",
    "MeasureContext",
    "MeasureResult",
    "MeasureSpec",
    "MeasureValue",
    "SearchResult",
    "bisect",
    "compute_measures",
    "get_measure",
    "measure_names",
    "prepare_model",
    "register",
    "select_parameters",
]
