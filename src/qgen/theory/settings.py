"""TheorySpec: every setting that changes a number of the ``theory`` post-pass, validated.

The defaults are sized for the demo (NiN-3 of width 2 or 3 on 500 Fashion-MNIST images of
28×28, one CPU thread): 3–7 s of CPU per model, while every Monte-Carlo quantity comes with
its standard error (docs/theory.md, "Settings and cost", has the timings and the errors).

    >>> TheorySpec().hutchinson_probes
    16
    >>> TheorySpec.from_dict({"delta": 0.1}).delta
    0.1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qgen.config import Spec, check_choice, check_int, fail, float_field

#: the values of ``TheorySpec.activations`` (see qgen.theory.noise.activations_as)
ACTIVATION_MODES = ("clipped", "quantized", "float")


@dataclass(frozen=True)
class TheorySpec(Spec):
    """Settings of the quantization-noise analysis (docs/theory.md).

    - ``seed``: seeds every subset, probe and draw (each derives its own stream).
    - ``eval_subset``: seeded training examples on which the bound's noisy training error is
      estimated (None: the whole training set, whose size is m either way); ``test_subset``:
      seeded test examples for the noisy (Gibbs) test error reported beside it (None: all).
    - ``eval_batch``: forward batch size for those evaluations (memory, and float summation
      order).
    - ``act_batch``: seeded training examples whose activations give the activation-noise
      statistics.
    - ``hessian_batch``: seeded training examples on which the curvature and the three
      regularizer numbers (predicted, rounding, uniform) are all computed, so that their
      ratios compare like with like.
    - ``activations``: how the activation quantizers act while the curvature and the
      regularizer are computed: ``clipped`` (their clip range, no rounding: the default; the
      loss is smooth in the weights), ``quantized`` (as trained: the rounding makes the loss a
      staircase whose steps are as large as the 8-bit regularizer) or ``float`` (off). The
      activation statistics and the bound always use the network as trained.
    - ``hutchinson_probes``: Rademacher probes of the Hessian trace estimate.
    - ``uniform_draws``: antithetic pairs (Δ', −Δ') of uniform weight noise for
      E[L(w + Δ')] − L(w).
    - ``layer_pairs``: antithetic pairs for the same gap with the noise on one layer at a
      time (0: not computed; the per-layer rounding gaps are always computed).
    - ``bound_draws``: Gaussian posterior draws for the bound's noisy training error.
    - ``delta``: the bound holds with probability at least 1 − delta.
    - ``ks_max``: at most this many elements (seeded sample) enter a Kolmogorov–Smirnov test;
      moments use every element.
    """

    SECTION: ClassVar[str] = "theory"

    seed: int = 0
    eval_subset: int | None = 500
    test_subset: int | None = 250
    eval_batch: int = 125
    act_batch: int = 16
    hessian_batch: int = 64
    activations: str = "clipped"
    hutchinson_probes: int = 16
    uniform_draws: int = 12
    layer_pairs: int = 0
    bound_draws: int = 4
    delta: float = 0.05
    ks_max: int = 20000

    def __post_init__(self) -> None:
        w = "theory."
        check_int(w + "seed", self.seed, 0, 2**31 - 1)
        for name in ("eval_subset", "test_subset"):
            if getattr(self, name) is not None:
                check_int(w + name, getattr(self, name), 1)
        check_int(w + "eval_batch", self.eval_batch, 1, 1 << 20)
        check_int(w + "act_batch", self.act_batch, 1, 1 << 20)
        check_int(w + "hessian_batch", self.hessian_batch, 1, 1 << 20)
        check_choice(w + "activations", self.activations, ACTIVATION_MODES)
        check_int(w + "hutchinson_probes", self.hutchinson_probes, 2, 100000)
        check_int(w + "uniform_draws", self.uniform_draws, 2, 100000)
        check_int(w + "layer_pairs", self.layer_pairs, 0, 100000)
        if self.layer_pairs == 1:
            fail(w + "layer_pairs", "must be 0 (off) or >= 2 (a standard error needs two "
                 "pairs), got 1")
        check_int(w + "bound_draws", self.bound_draws, 2, 100000)
        d = self.delta
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d < 1:
            fail(w + "delta", f"must be a number in (0, 1) (the bound holds with probability "
                 f"1 − delta), got {d!r}")
        float_field(self, "delta", w + "delta", 0.0, 1.0, lo_open=True)
        check_int(w + "ks_max", self.ks_max, 10, 10**7)
