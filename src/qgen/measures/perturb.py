"""In-place weight perturbation, the noise laws, and evaluation on the seeded train subset.

The flatness searches evaluate thousands of perturbed networks. Instead of copying the model
for every draw (what the public reference code does), :class:`Perturbation` saves the
selected parameters once, writes ``w + u`` into them for a draw, and writes ``w`` back at the
end, so one model serves every draw and restoring is exact (a copy, not a subtraction).

Noise laws (measures.md choices 1 and 2), for a search scale σ:

- Gaussian: u ~ N(0, s²) with s = σ (default) or s = σ² ('sigma_squared', the public code);
- magnitude-aware: u_i ~ N(0, v_i) with v_i = σ² w_i² + ε² (default: a variance), or std v_i
  ('std', the public code). ε lets weights that are exactly zero move.

Draw k of a search uses its own seeded generator, so every σ of a bisection sees the same
standard-normal directions (common random numbers): the deviation then changes smoothly with
σ, and a search is reproducible whatever else was computed before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qgen.measures.params import ParamSet


class Perturbation:
    """Perturb a parameter set in place: ``apply(deltas)`` sets w + u; ``restore()`` sets w.

    Use as a context manager so the weights are restored even when evaluation fails.
    """

    def __init__(self, params: ParamSet) -> None:
        self.tensors = params.tensors
        self.original = params.values()

    @torch.no_grad()
    def apply(self, deltas: list[Tensor]) -> None:
        """Write ``original + delta`` into each parameter."""
        for t, o, d in zip(self.tensors, self.original, deltas, strict=True):
            torch.add(o, d, out=t.data)

    @torch.no_grad()
    def restore(self) -> None:
        """Write the saved original values back."""
        for t, o in zip(self.tensors, self.original, strict=True):
            t.data.copy_(o)

    def __enter__(self) -> Perturbation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def gaussian_std(sigma: float, gauss_std: str) -> float:
    """Standard deviation of the plain Gaussian noise at search scale σ."""
    return sigma if gauss_std == "sigma" else sigma * sigma


def magnitude_std(w: Tensor, sigma: float, eps: float, mag_noise: str) -> Tensor:
    """Per-weight std of magnitude-aware noise: sqrt(σ²w²+ε²) ('variance') or σ²w²+ε² ('std')."""
    v = (sigma * sigma) * w.square() + eps * eps
    return v.sqrt() if mag_noise == "variance" else v


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A fresh generator on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def standard_normals(shapes: list[Tensor], gen: torch.Generator) -> list[Tensor]:
    """One N(0, 1) tensor shaped like each of ``shapes`` (same device and dtype)."""
    return [torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype) for t in shapes]


def upcast(logits: Tensor) -> Tensor:
    """Half-precision logits as float32 (loss and argmax in full precision); others as is."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


@dataclass(frozen=True)
class Metrics:
    """Accuracy and mean cross-entropy on the evaluation data."""

    accuracy: float
    loss: float

    def get(self, target: str) -> float:
        """The metric a search compares: 'accuracy' or 'loss'."""
        return self.accuracy if target == "accuracy" else self.loss


class Evaluator:
    """Accuracy and cross-entropy of a model on fixed data, in large no-grad batches.

    The model must already be in eval mode (BatchNorm uses running statistics).
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> Metrics:
        """Evaluate ``model`` on the stored data."""
        correct = 0
        loss_sum = 0.0
        for i in range(0, len(self.x), self.batch_size):
            xb, yb = self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]
            logits = upcast(model(xb))
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        n = len(self.x)
        return Metrics(correct / n, loss_sum / n)

    @torch.no_grad()
    def subset(self, model: nn.Module, idx: Tensor) -> Metrics:
        """Accuracy and mean cross-entropy of ``model`` on the stored examples ``idx``."""
        x, y = self.x[idx], self.y[idx]
        correct = 0
        loss_sum = 0.0
        for i in range(0, len(x), self.batch_size):
            logits = upcast(model(x[i:i + self.batch_size]))
            yb = y[i:i + self.batch_size]
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        return Metrics(correct / len(x), loss_sum / len(x))

    @torch.no_grad()
    def per_example(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        """Per stored example: correct (1.0/0.0) and cross-entropy, as float64 tensors."""
        logits = self.logits(model)
        correct = (logits.argmax(1) == self.y).double()
        loss = F.cross_entropy(logits, self.y, reduction="none").double()
        return correct, loss

    @torch.no_grad()
    def logits(self, model: nn.Module) -> Tensor:
        """Logits of ``model`` on the stored data."""
        return torch.cat([upcast(model(self.x[i:i + self.batch_size]))
                          for i in range(0, len(self.x), self.batch_size)])
