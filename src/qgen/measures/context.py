"""The shared state of one model's measurement: prepared model, data, w, w0 and a cache.

Several measures need the same expensive quantity (one σ search feeds pacbayes.init, .orig and
.flatness; the margin feeds every "over margin" norm). :class:`MeasureContext` computes each
such quantity once, on first request, through :meth:`MeasureContext.cached`, which also
records how long it took and keeps its diagnostics (search traces, brackets, flags), so the
result shows each expensive step once no matter how many measures used it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from qgen.data.source import ExampleSource, TensorSource, as_source, example_shape
from qgen.errors import QgenError
from qgen.measures.bnfold import FoldedTwin
from qgen.measures.params import Prepared, prepare_model, reference_values
from qgen.measures.perturb import Evaluator, Metrics
from qgen.measures.search import DeviationFn, SearchResult, bisect, threshold_search
from qgen.measures.settings import MeasureSpec

#: the largest evaluation subset taken from a dataset streamed from disk (an image folder):
#: the subset is held in memory, and 20,000 ImageNet inputs at 224 px are 12 GB of float32
STREAMED_EVAL_MAX = 20_000


def derive_seed(seed: int, key: str) -> int:
    """A stable per-purpose seed: the same (seed, key) always gives the same stream, and
    different keys give unrelated streams (crc32, not Python's randomized ``hash``)."""
    return (seed * 0x9E3779B1 + zlib.crc32(key.encode())) % (2**63 - 1)


class MeasureContext:
    """Everything a measure's compute function may use, with a per-model cache.

    Attributes: ``spec``; ``device``; ``prep`` (prepared model and selected parameters);
    ``model`` (the prepared model, eval mode); ``w``/``w0`` (selected values at the end and
    at initialization, same order as ``prep.params``); ``x``/``y`` (the eval subset on the
    device); ``m`` (full training-set size); ``evaluator``; ``input_shape``.
    """

    def __init__(self, model: nn.Module, w0: Mapping[str, Tensor],
                 train_x: Tensor | ExampleSource, train_y: Tensor | None,
                 spec: MeasureSpec, device: str | torch.device = "cpu") -> None:
        if isinstance(train_x, Tensor) and train_y is not None and len(train_x) != len(train_y):
            raise QgenError(f"train_x has {len(train_x)} examples but train_y {len(train_y)}")
        data = as_source(train_x, train_y)
        if len(data) == 0:
            raise QgenError("the training data is empty: measures need training data")
        self.spec = spec
        self.device = torch.device(device)
        self.prep: Prepared = prepare_model(model, spec, self.device)
        self.model = self.prep.model
        # Image batches run 1.5-2x faster channels-last on CPU (measured on the NiN); only the
        # layout changes, every value keeps its index.
        self.channels_last = len(example_shape(data)) == 3
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.w = self.prep.params.values()
        self.w0 = reference_values(model, spec, w0, self.prep.params.names, self.device)
        self.m = len(data)
        n_eval = self.m if spec.eval_subset is None else min(spec.eval_subset, self.m)
        if n_eval > STREAMED_EVAL_MAX and not isinstance(data, TensorSource):
            raise QgenError(f"eval_subset: the training set ({self.m} examples) is read from "
                            f"disk and the measures hold their evaluation subset in memory; "
                            f"set eval_subset to at most {STREAMED_EVAL_MAX} (e.g. "
                            "--set eval_subset=5000)")
        if n_eval < self.m:
            gen = torch.Generator().manual_seed(derive_seed(spec.seed, "eval_subset"))
            idx = torch.randperm(self.m, generator=gen)[:n_eval]
        else:
            idx = torch.arange(self.m)
        self.eval_indices = idx
        x, y = data.take(idx)  # only the evaluation subset is held in memory
        self.x = x.to(self.device)
        if self.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = y.to(self.device).long()
        self.input_shape = tuple(x.shape[1:])
        self.evaluator = Evaluator(self.x, self.y, spec.eval_batch)
        self._twin = self._make_twin()
        self.timings: dict[str, float] = {}
        self.shared: dict[str, Any] = {}
        self._cache: dict[str, Any] = {}

    def _make_twin(self) -> FoldedTwin | None:
        # A BN-folded twin evaluates faster; it cannot stand in for a model whose weight
        # quantizers are active (folding would change what they quantize).
        if self.spec.bn != "eval" or self.prep.notes.get("active_weight_quantizers"):
            return None
        try:
            twin = FoldedTwin(self.model)
        except QgenError:  # untraceable model: evaluate the model itself
            return None
        if not twin.useful:
            return None
        if self.channels_last:
            twin.twin.to(memory_format=torch.channels_last)
        return twin

    def eval_model(self) -> nn.Module:
        """The network to evaluate now: the BN-folded twin synced to the current (perturbed)
        parameters when there is one, else the prepared model itself."""
        return self.model if self._twin is None else self._twin.sync()

    def evaluate(self, idx: Tensor | None = None) -> Metrics:
        """Accuracy and loss of the current (possibly perturbed) network on the eval subset
        (or on its examples ``idx``)."""
        if idx is None:
            return self.evaluator(self.eval_model())
        return self.evaluator.subset(self.eval_model(), idx)

    def base_per_example(self) -> tuple[Tensor, Tensor]:
        """Correctness and loss of the unperturbed model per eval-subset example (cached)."""
        return self.cached("base_per_example",
                           lambda: self.evaluator.per_example(self.eval_model()))

    def draw_examples(self, key: str) -> Tensor | None:
        """The seeded sample of ``mc_eval_examples`` eval-subset examples that draw ``key``
        evaluates on (None: the whole subset). Its base metric comes from
        :meth:`base_per_example`, so each draw's deviation is paired."""
        n = self.spec.mc_eval_examples
        if n is None or n >= len(self.x):
            return None
        gen = torch.Generator().manual_seed(self.seed(key))
        return torch.randperm(len(self.x), generator=gen)[:n].to(self.device)

    def seed(self, key: str) -> int:
        """Seed of the random stream named ``key`` (see :func:`derive_seed`)."""
        return derive_seed(self.spec.seed, key)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per context; its time goes to ``timings[key]`` and its
        ``to_dict()`` (if any) to ``shared[key]``."""
        if key not in self._cache:
            t0 = time.perf_counter()
            value = compute()
            self.timings[key] = time.perf_counter() - t0
            self._cache[key] = value
            if hasattr(value, "to_dict"):
                self.shared[key] = value.to_dict()
        return self._cache[key]

    def base_metrics(self) -> Metrics:
        """Accuracy and loss of the unperturbed prepared model on the eval subset."""
        return self.cached("base_metrics", self.evaluate)

    def batches(self, key: str, size: int) -> Callable[[int], tuple[Tensor, Tensor]]:
        """A function step -> (x, y) minibatch cycling through a seeded permutation of the
        eval subset (seeded by ``key``, so it does not depend on other searches)."""
        gen = torch.Generator().manual_seed(self.seed(key))
        order = torch.randperm(len(self.x), generator=gen).to(self.device)
        size = min(size, len(order))
        per_epoch = max(1, len(order) // size)

        def batch(step: int) -> tuple[Tensor, Tensor]:
            j = (step % per_epoch) * size
            sel = order[j:j + size]
            return self.x[sel], self.y[sel]

        return batch

    def settings(self) -> dict[str, Any]:
        """Every choice, plus what was derived from the data and the model (JSON-able)."""
        p = self.prep.params
        return {
            **self.spec.to_dict(),
            "eval_subset_size": len(self.x),
            "train_size": self.m,
            "num_selected_params": p.numel,
            "num_selected_tensors": len(p.tensors),
            "selected_tensors": list(p.names),
            "quantized_model": self.prep.quantized,
            "bn_folded": self.prep.fold.to_dict(),
            **{f"prep_{k}": v for k, v in self.prep.notes.items()},
            # Fixed conventions, recorded so a reader need not look them up:
            "memory_format": "channels_last" if self.channels_last else "contiguous",
            "eval_network": ("BN-folded twin synced before each evaluation"
                             if self._twin is not None else "the prepared model"),
            "noise_draws": "common random numbers across scales (one seeded stream per draw)",
            "ascent": "projected sign-gradient (box) / normalized-gradient (l2) ascent on "
                      "train cross-entropy, minibatches cycling through the eval subset; "
                      f"{self.spec.ascent_keep} iterate (by minibatch loss) evaluated; worst "
                      "restart kept",
            "margin": "10th percentile (torch.quantile) of true minus best other logit on the "
                      "eval subset",
            "fft_spectral": "exact operator norm of the circular (periodic) convolution on "
                            "the layer's input size, strides handled by polyphase "
                            "decomposition (Sedghi et al. 2019)",
        }


def family_search(ctx: MeasureContext, deviation: DeviationFn, magnitude: bool, *,
                  refine: DeviationFn | None = None, floor: bool | None = None) -> SearchResult:
    """The search of one measure family's scale (σ, σ', α or α') with ``ctx.spec``'s
    settings: :func:`~qgen.measures.search.threshold_search` (``refine`` re-measures the final
    bracket ends) or, with ``search='bisect'``, :func:`~qgen.measures.search.bisect`.

    A search whose perturbation has a floor at the interval's lower end (``floor``; default:
    a magnitude-aware family with ε > 0) first probes that end, since the ε-noise alone may
    already exceed the target deviation (saturation at the bottom).
    """
    spec = ctx.spec
    if floor is None:
        floor = magnitude and spec.mag_eps > 0
    probe = spec.bisect_lo > 0 or floor
    if spec.search == "bisect":
        result = bisect(deviation, target=spec.target_deviation,
                        tolerance=spec.target_tolerance, lo=spec.bisect_lo, hi=spec.bisect_hi,
                        steps=spec.bisect_steps, min_width=spec.bisect_min_width,
                        probe_lo=probe)
    else:
        result = threshold_search(deviation, target=spec.target_deviation, lo=spec.bisect_lo,
                                  hi=spec.bisect_hi, steps=spec.bisect_steps,
                                  rel_width=spec.bisect_rel_width,
                                  min_width=spec.bisect_min_width, probe_lo=floor,
                                  refine=refine)
    result.reference = ctx.base_metrics().get(spec.target)
    return result
