"""The one-call API: compute a set of measures for one trained model.

>>> result = compute_measures(model, w0, train_x, train_y, MeasureSpec())  # doctest: +SKIP
>>> result.values["pacbayes.flatness"], result.diagnostics["search.pacbayes"]["saturated"]
... # doctest: +SKIP

``w0`` is the state_dict at initialization (same keys as ``model.state_dict()``); ``train_x``
and ``train_y`` are the full training split, or ``train_x`` an ExampleSource of it with
``train_y`` None (its size is the m of the bounds; evaluations use
the seeded subset the spec asks for). The result holds raw values, every setting, and the
diagnostics: search traces and brackets, saturation flags, eval subset size, timings.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import qgen
from qgen.data.source import ExampleSource
from qgen.io import dumps_json
from qgen.measures.context import MeasureContext
from qgen.measures.registry import get_measure, resolve_names
from qgen.measures.settings import MeasureSpec

Progress = Callable[[str, int, int], None]


@dataclass
class MeasureResult:
    """Values (raw, name -> float), settings (every choice, JSON-able) and diagnostics:
    ``measures`` (per-measure details), shared ingredients such as ``search.pacbayes``
    (trace, bracket, converged, saturation), ``eval`` (subset size, base accuracy/loss) and
    ``timings`` (seconds per measure and per shared ingredient)."""

    values: dict[str, float]
    settings: dict[str, Any]
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (non-finite floats become 'nan'/'inf' strings)."""
        return json.loads(dumps_json({"values": dict(self.values), "settings": self.settings,
                                      "diagnostics": self.diagnostics}))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeasureResult:
        """Inverse of :meth:`to_dict` (the 'nan'/'inf' strings of values become floats)."""
        values = {k: float(v) for k, v in data["values"].items()}
        return cls(values, dict(data["settings"]), dict(data.get("diagnostics", {})))


#: measures the reference code does not define: left raw by ``size_transform='reference'``
_NOT_IN_REFERENCE = ("hessian.",)


def is_log_form(name: str) -> bool:
    """Whether the reference code names this measure LOG_… (its log-products, log-sums and
    the two spectral 'main' bounds), so its dataset-size adjustment is ½(v − log m)."""
    return "_log_" in name or name.endswith("_main")


def size_adjusted(name: str, value: float, m: int) -> float:
    """The reference code's adjustment for the dataset size m: ½(v − log m) for log-form
    measures, √(v/m) for the others (NaN for a negative value, as there)."""
    if is_log_form(name):
        return 0.5 * (value - math.log(m))
    return math.sqrt(value / m) if value >= 0 else math.nan


def compute_measures(model: nn.Module, w0: Mapping[str, Tensor],
                     train_x: Tensor | ExampleSource, train_y: Tensor | None = None,
                     spec: MeasureSpec | None = None, *,
                     names: Sequence[str] | None = None, device: str | torch.device = "cpu",
                     progress: Progress | None = None) -> MeasureResult:
    """Compute the measures ``names`` (default ``spec.names``; empty = all) of ``model``.

    The model is copied once and prepared (eval mode, quantized-model mode, BN folding);
    the caller's model is left unchanged. ``progress(name, i, total)`` is called before each
    measure. Expensive ingredients (each σ/α search, the margin, the layer norms) are
    computed once and shared by the measures that need them.
    """
    spec = spec or MeasureSpec()
    wanted = resolve_names(spec.names if names is None else names)
    t0 = time.perf_counter()
    ctx = MeasureContext(model, w0, train_x, train_y, spec, device)
    setup_time = time.perf_counter() - t0
    values: dict[str, float] = {}
    per_measure: dict[str, Any] = {}
    measure_time: dict[str, float] = {}
    for i, name in enumerate(wanted):
        if progress is not None:
            progress(name, i, len(wanted))
        measure = get_measure(name)
        t = time.perf_counter()
        out = measure.compute(ctx)
        measure_time[name] = time.perf_counter() - t
        value = float(out.value)
        per_measure[name] = {"equation": measure.equation, **out.diagnostics}
        if spec.size_transform == "reference" and not name.startswith(_NOT_IN_REFERENCE):
            per_measure[name]["raw_value"] = value
            per_measure[name]["size_transform"] = ("½(v − log m)" if is_log_form(name)
                                                   else "√(v/m)")
            value = size_adjusted(name, value, ctx.m)
        values[name] = value
    base = ctx.base_metrics()
    diagnostics: dict[str, Any] = {
        **ctx.shared,
        "measures": per_measure,
        "eval": {"subset_size": len(ctx.x), "train_size": ctx.m,
                 "base_accuracy": base.accuracy, "base_loss": base.loss},
        "timings": {"setup": setup_time, "measures": measure_time,
                    "shared": dict(ctx.timings),
                    "total": time.perf_counter() - t0},
        "versions": {"qgen": qgen.__version__, "torch": torch.__version__},
        "device": str(ctx.device),
        "nonfinite": sorted(k for k, v in values.items() if not math.isfinite(v)),
    }
    settings = {**ctx.settings(), "measures_computed": wanted}
    return MeasureResult(values, settings, diagnostics)
