"""MeasureSpec: every choice that changes a generalization measure's number, validated.

measures.md lists the choices (Gaussian parameterization, magnitude-aware noise, perturbed
set, BatchNorm handling, search target, Monte-Carlo draws, sharpness set and ascent,
evaluation data, bisection, quantized-model mode). A :class:`MeasureSpec` holds all of them;
its ``to_dict()`` is stored beside every measured value, so two numbers are only compared when
they were computed the same way.

Two presets::

    >>> MeasureSpec.preset("default").gauss_std
    'sigma'
    >>> MeasureSpec.preset("dziugaite2020", mc_draws=5).gauss_std
    'sigma_squared'

``from_dict`` accepts a ``preset`` key, applied before the other keys::

    >>> MeasureSpec.from_dict({"preset": "dziugaite2020", "eval_subset": None}).eval_subset
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from qgen.config import Spec, check_choice, check_int, fail, float_field
from qgen.errors import QgenError

PRESETS = ("default", "dziugaite2020", "jiang2020")

# What each preset changes relative to the dataclass defaults (which are measures.md's).
_PRESET_FIELDS: dict[str, dict[str, Any]] = {
    "default": {},
    # The public code of Dziugaite et al. 2020 (nitarshan/robust-generalization-measures,
    # data/generation/measures.py): sigma^2 passed as the std, sigma^2 w^2 + eps^2 passed as
    # the std, every parameter perturbed, BN folded into the convolutions first but kept as a
    # gamma = 1, beta = 0 layer that is perturbed too (its `_reparam`), the whole train set
    # evaluated each draw, the bound terms (||w||, omega) over the weight tensors only (its
    # name filter drops 'bias' and 'bn'), (w - w0)^2 in the magnitude-aware "orig"
    # denominator, and every value adjusted for the dataset size. A quantized model is
    # measured through its dequantized weights (the float network it computes), folded as the
    # reference would fold a float network. Its search is a plain bisection on [0, 2], 15
    # steps, 10 draws per sigma, stopping at the first sigma whose |mean accuracy - base| is
    # within 0.01 of 0.1. What stays qgen's: seeded per-draw noise streams, the early stop,
    # the saturation flag, and the bracket midpoint returned when unconverged (the public code
    # returns the last midpoint: the two differ by < 2/2**16 after 15 steps);
    # docs/measures.md measures what these change.
    "dziugaite2020": {
        "gauss_std": "sigma_squared",
        "mag_noise": "std",
        "params": "all",
        "bn": "fold_keep",
        "eval_subset": None,
        "bound_params": "weights",
        "size_transform": "reference",
        "quant_mode": "dequantized",
        "mag_orig_denominator": "w_minus_w0",
        **{"search": "bisect", "deviation": "absolute", "bisect_lo": 0.0, "bisect_hi": 2.0,
           "bisect_steps": 15, "mc_draws": 10, "mc_stderr": 0.0, "mc_eval_examples": None},
    },
    # Jiang et al. 2020's search settings: bisection on [0, 5], 20 steps, stop once the
    # bracket is narrower than 5e-3.
    "jiang2020": {"search": "bisect", "deviation": "absolute", "bisect_lo": 0.0,
                  "bisect_hi": 5.0, "bisect_steps": 20, "bisect_min_width": 5e-3,
                  "mc_draws": 10, "mc_stderr": 0.0, "mc_eval_examples": None},
}


@dataclass(frozen=True)
class MeasureSpec(Spec):
    """All settings of the generalization measures (measures.md's table of choices).

    Field groups (measures.md row in brackets):

    - ``names``: measures to compute, exact names or shell patterns; empty = all registered.
    - ``seed``: seeds the eval subset and every search (each search derives its own stream).
    - ``eval_subset`` [9]: size of the seeded train subset every evaluation uses
      (``None`` = the full train set); ``eval_batch``: forward batch size (speed only).
    - ``target`` [5]: 'accuracy' (train-accuracy deviation) or 'loss' (train cross-entropy
      deviation); ``target_deviation`` (0.1); ``deviation``: 'increase' (the increase of the
      0-1 error, or of the loss: E[err(w+u)] − err(w), negative when noise helps, as the
      PAC-Bayes bound needs it) or 'absolute' (|mean − base|, the reference codes').
    - ``search`` [10]: 'threshold' (default: narrow the bracket to ``bisect_rel_width`` of
      the value, log scale, interpolated; see :mod:`qgen.measures.search`) or 'bisect' (the
      reference codes': stop at the first midpoint within ``target_tolerance`` of the
      target, which gives dyadic values that tie).
    - ``gauss_std`` [1]: Gaussian noise std is 'sigma' or 'sigma_squared' (the public code).
    - ``mag_noise`` [2]: magnitude-aware noise sigma^2 w^2 + eps^2 is the 'variance' or the
      'std' (the public code); ``mag_eps`` is eps, the floor that lets zero weights move.
    - ``params`` [3]: perturbed (and counted) set: 'weights' (conv/linear weight tensors) or
      'all' parameters (quantizer step sizes never: they stay frozen).
    - ``bound_params``: the set the bound terms (‖w‖², ‖w−w0‖², ω, the magnitude-aware sums)
      and the norm measures run over: 'perturbed' (the ``params`` set) or 'weights' (the
      conv/linear weight tensors only, as the reference code computes them).
    - ``size_transform``: 'none' (raw values) or 'reference' (the reference code's
      adjustment for the dataset size m: ½(v − log m) for log-form measures, √(v/m) for the
      others).
    - ``bn`` [4]: 'eval' (BatchNorm unfolded, running statistics), 'fold_keep' (folded, the
      BatchNorm kept as γ = 1, β = 0 with its γ and β perturbable: the reference code) or
      'fold' (into the
      preceding conv/linear before anything is measured).
    - ``quant_mode`` [14]: 'latent' (perturb the float latent weights, quantizers active,
      step sizes frozen) or 'dequantized' (perturb the dequantized weights, weight quantizers
      bypassed; activation quantizers stay active).
    - Monte-Carlo draws per sigma [6]. 'threshold' search: each scale tried gets
      ``mc_min_draws`` to ``mc_search_draws`` draws, stopping once the mean deviation is
      ``mc_decision_z`` standard errors from the target (with ``early_stop``); the two ends of
      the final bracket are then drawn until the standard error of the deviation is at most
      ``mc_stderr`` or ``mc_draws`` draws (the cap) are made, and the bracket is moved if the
      threshold moved. 'bisect' search: ``mc_draws`` draws at every scale (``mc_stderr`` = 0).
      ``mc_eval_examples``: each draw is evaluated on its own seeded sample of this many
      eval-subset examples, paired with the unperturbed model's metric on the same sample
      (None: every draw on the whole eval subset). A draw's accuracy varies mostly with its
      noise direction (sd ~0.07 at the threshold on the demo's NiN) and little with 500
      examples instead of 2,000 (binomial sd ~0.018), so four cheaper draws beat one costly
      one for the same precision.
    - ``sharpness_set`` [7]: 'box' (|u_i| <= r_i) or 'l2' (||u / r||_2 <= 1), with
      r_i = alpha (plain) or, magnitude-aware, ``sharpness_mag_radius`` 'scaled':
      alpha (|w_i| + eps) (the floor shrinks with alpha, so it can never dominate) or
      'additive': alpha |w_i| + eps (Jiang et al.'s; with eps = 1e-3 the eps-box alone moves
      the demo models' accuracy by > 0.1, so every search saturates).
    - ``ascent_*`` [8]: projected (sign-)gradient ascent on the train cross-entropy:
      steps, random restarts (the worst is kept), step size as a fraction of the radius,
      minibatch size (batches cycle through the eval subset); ``ascent_keep``: evaluate the
      iterate with the largest minibatch loss ('best') or the last one ('last').
    - ``bisect_*`` [10]: initial bracket [lo, hi], maximum search steps, the relative
      bracket width the 'threshold' search stops at, and an optional absolute width
      ``bisect_min_width`` to stop at (0 = off).
    - ``delta``: the confidence parameter in the magnitude-aware sharpness bound.
    - ``mag_orig_denominator``: 'w' (w_i^2, measures.md) or 'w_minus_w0' (the public code).
    - ``hessian_samples`` / ``power_iters`` / ``hessian_batch``: Hutchinson probes, power
      iterations and the size of the seeded batch the curvature is computed on.
    - ``early_stop``: stop drawing (PAC-Bayes draws, sharpness restarts) once the search's
      decision at this scale is settled: for 'bisect', certain whatever the remaining draws
      give (the decisions are those of the full computation); for 'threshold', the sequential
      ``mc_decision_z`` rule above (sharpness: as soon as one restart exceeds the target,
      which is exact since the worst case can only grow). Off: every draw is made.
    - ``preset_name``: the preset these settings started from (a label; the fields above
      are what counts).
    """

    SECTION: ClassVar[str] = "measures"

    names: tuple[str, ...] = ()
    seed: int = 0
    eval_subset: int | None = 2000
    eval_batch: int = 256
    target: str = "accuracy"
    target_deviation: float = 0.1
    target_tolerance: float = 0.01
    deviation: str = "increase"
    search: str = "threshold"
    gauss_std: str = "sigma"
    mag_noise: str = "variance"
    mag_eps: float = 1e-3
    params: str = "weights"
    bn: str = "eval"
    bound_params: str = "perturbed"
    size_transform: str = "none"
    quant_mode: str = "latent"
    mc_draws: int = 200
    mc_search_draws: int = 10
    mc_min_draws: int = 3
    mc_stderr: float = 0.005
    mc_decision_z: float = 3.0
    mc_eval_examples: int | None = 500
    sharpness_set: str = "box"
    sharpness_mag_radius: str = "scaled"
    ascent_steps: int = 20
    ascent_restarts: int = 2
    ascent_lr: float = 0.1
    ascent_batch: int = 128
    ascent_keep: str = "best"
    bisect_lo: float = 1e-6
    bisect_hi: float = 2.0
    bisect_steps: int = 30
    bisect_rel_width: float = 0.01
    bisect_min_width: float = 0.0
    delta: float = 0.1
    mag_orig_denominator: str = "w"
    hessian_samples: int = 20
    power_iters: int = 20
    hessian_batch: int = 512
    early_stop: bool = True
    preset_name: str = "default"

    def __post_init__(self) -> None:
        w = "measures."
        names = self.names
        if isinstance(names, str):
            names = (names,)
        if not isinstance(names, (list, tuple)):
            fail(w + "names", f"must be a list of measure names, got {names!r}")
        object.__setattr__(self, "names", tuple(names))
        for pattern in self.names:  # matched against the catalog where they are used
            if not isinstance(pattern, str) or not pattern:
                fail(w + "names", f"must be measure names or patterns, got {pattern!r}")
        check_int(w + "seed", self.seed, 0, 2**31 - 1)
        if self.eval_subset is not None:
            check_int(w + "eval_subset", self.eval_subset, 1)
        check_int(w + "eval_batch", self.eval_batch, 1, 1 << 20)
        check_choice(w + "target", self.target, ("accuracy", "loss"))
        float_field(self, "target_deviation", w + "target_deviation", 0.0, 10.0, lo_open=True)
        float_field(self, "target_tolerance", w + "target_tolerance", 0.0, 10.0, lo_open=True)
        if self.target_tolerance >= self.target_deviation:
            fail(w + "target_tolerance", f"must be < target_deviation "
                  f"({self.target_deviation}), got {self.target_tolerance}")
        check_choice(w + "gauss_std", self.gauss_std, ("sigma", "sigma_squared"))
        check_choice(w + "mag_noise", self.mag_noise, ("variance", "std"))
        float_field(self, "mag_eps", w + "mag_eps", 0.0, 1.0)
        check_choice(w + "params", self.params, ("weights", "all"))
        check_choice(w + "bn", self.bn, ("eval", "fold", "fold_keep"))
        check_choice(w + "bound_params", self.bound_params, ("perturbed", "weights"))
        check_choice(w + "size_transform", self.size_transform, ("none", "reference"))
        check_choice(w + "quant_mode", self.quant_mode, ("latent", "dequantized"))
        check_choice(w + "deviation", self.deviation, ("increase", "absolute"))
        check_choice(w + "search", self.search, ("threshold", "bisect"))
        check_int(w + "mc_draws", self.mc_draws, 1, 100000)
        check_int(w + "mc_search_draws", self.mc_search_draws, 1, 100000)
        check_int(w + "mc_min_draws", self.mc_min_draws, 2, 100000)
        float_field(self, "mc_stderr", w + "mc_stderr", 0.0, 1.0)
        float_field(self, "mc_decision_z", w + "mc_decision_z", 0.0, 100.0, lo_open=True)
        if self.mc_eval_examples is not None:
            check_int(w + "mc_eval_examples", self.mc_eval_examples, 1)
        check_choice(w + "sharpness_set", self.sharpness_set, ("box", "l2"))
        check_choice(w + "sharpness_mag_radius", self.sharpness_mag_radius,
                      ("scaled", "additive"))
        check_choice(w + "ascent_keep", self.ascent_keep, ("best", "last"))
        check_int(w + "ascent_steps", self.ascent_steps, 0, 100000)
        check_int(w + "ascent_restarts", self.ascent_restarts, 1, 1000)
        float_field(self, "ascent_lr", w + "ascent_lr", 0.0, 100.0, lo_open=True)
        check_int(w + "ascent_batch", self.ascent_batch, 1, 1 << 20)
        float_field(self, "bisect_lo", w + "bisect_lo", 0.0, 1e6)
        float_field(self, "bisect_hi", w + "bisect_hi", 0.0, 1e6, lo_open=True)
        if self.bisect_hi <= self.bisect_lo:
            fail(w + "bisect_hi", f"must be > bisect_lo ({self.bisect_lo}), "
                  f"got {self.bisect_hi}")
        check_int(w + "bisect_steps", self.bisect_steps, 1, 200)
        float_field(self, "bisect_rel_width", w + "bisect_rel_width", 0.0, 1.0, lo_open=True)
        float_field(self, "bisect_min_width", w + "bisect_min_width", 0.0, 1e6)
        float_field(self, "delta", w + "delta", 0.0, 1.0, lo_open=True)
        check_choice(w + "mag_orig_denominator", self.mag_orig_denominator,
                      ("w", "w_minus_w0"))
        check_int(w + "hessian_samples", self.hessian_samples, 1, 1000000)
        check_int(w + "power_iters", self.power_iters, 1, 100000)
        check_int(w + "hessian_batch", self.hessian_batch, 1, 1 << 20)
        if not isinstance(self.early_stop, bool):
            fail(w + "early_stop", f"must be true or false, got {self.early_stop!r}")
        check_choice(w + "preset_name", self.preset_name, PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MeasureSpec:
        """The settings of preset ``name`` ('default', 'dziugaite2020', 'jiang2020'),
        with ``overrides`` applied on top."""
        if name not in _PRESET_FIELDS:
            raise QgenError(f"measures.preset: must be one of {', '.join(PRESETS)}; "
                            f"got {name!r}")
        return cls.from_dict({**overrides, "preset": name})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MeasureSpec:
        """Build from a mapping; a ``preset`` key (or ``preset_name``, as ``to_dict`` writes
        it) fills in that preset's values before the other keys apply."""
        data = dict(data or {})
        name = data.pop("preset", data.get("preset_name", "default"))
        if name not in _PRESET_FIELDS:
            raise QgenError(f"measures.preset: must be one of {', '.join(PRESETS)}; "
                            f"got {name!r}")
        return super().from_dict({**_PRESET_FIELDS[name], **data, "preset_name": name})

    @classmethod
    def _convert(cls, data: dict[str, Any]) -> dict[str, Any]:
        if isinstance(data.get("names"), list):
            data["names"] = tuple(data["names"])
        return data

    def field_names(self) -> list[str]:
        """Names of all settings, in declaration order."""
        return [f.name for f in fields(self)]
