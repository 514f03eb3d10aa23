"""Evaluation: cross-entropy, accuracy and margins of a model on a tensor split.

The generalization gap is measured the way QGen and Jiang et al. define it: loss gap =
test cross-entropy − train cross-entropy, accuracy gap = train accuracy − test accuracy.
Both are computed with the model in eval mode (BatchNorm running statistics).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qgen.data.source import ExampleSource, as_source


@dataclass(frozen=True)
class EvalMetrics:
    """Loss, accuracy and margin statistics of one split.

    The margin of an example is the true-class logit minus the largest other logit;
    ``margin_p10`` (the 10th percentile) is the γ of Jiang et al.'s margin measures.
    """

    loss: float
    accuracy: float
    n: int
    margin_mean: float
    margin_median: float
    margin_p10: float
    margin_min: float

    def to_dict(self) -> dict[str, float]:
        """Plain-dict form for result.json."""
        return asdict(self)


@torch.no_grad()
def _forward(model: nn.Module, batches: Any, device: str | torch.device | None
             ) -> tuple[Tensor, Tensor | None]:
    """Logits (float32) of every batch in eval mode, and the labels if the batches carry any."""
    was_training = model.training
    model.eval()
    if device is None:
        device = next(iter(model.parameters())).device
    out, labels = [], []
    try:
        for batch in batches:
            xb, yb = batch if isinstance(batch, tuple) else (batch, None)
            out.append(model(xb.to(device, non_blocking=True)).float())
            if yb is not None:
                labels.append(yb)
    finally:
        model.train(was_training)
    logits = torch.cat(out) if out else torch.empty(0)
    return logits, (torch.cat(labels) if labels else None)


def predict_logits(model: nn.Module, x: Tensor | ExampleSource, batch_size: int = 1000,
                   device: str | torch.device | None = None) -> Tensor:
    """Logits of ``model`` on ``x`` (inputs, or an ExampleSource) in eval mode, batch by
    batch, on ``device``."""
    if isinstance(x, Tensor):
        return _forward(model, (x[i:i + batch_size] for i in range(0, len(x), batch_size)),
                        device)[0]
    return _forward(model, x.batches(batch_size), device)[0]


def margins(logits: Tensor, y: Tensor) -> Tensor:
    """True-class logit minus the largest other logit, per example."""
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y.view(-1, 1), float("-inf"))
    return true - others.max(dim=1).values


def evaluate(model: nn.Module, x: Tensor | ExampleSource, y: Tensor | None = None,
             batch_size: int = 1000) -> EvalMetrics:
    """Mean cross-entropy, accuracy and margin statistics of ``model`` on (x, y), or on an
    ExampleSource ``x`` (with ``y`` None)."""
    if isinstance(x, Tensor):
        if y is None:
            raise ValueError("evaluate: labels missing")
        logits = predict_logits(model, x, batch_size)
    else:
        logits, y = _forward(model, as_source(x, y).batches(batch_size), None)
        y = torch.empty(0, dtype=torch.long) if y is None else y
    y = y.to(logits.device)
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty split")
    loss = F.cross_entropy(logits, y, reduction="mean").item()
    acc = (logits.argmax(1) == y).float().mean().item()
    m = margins(logits, y)
    return EvalMetrics(
        loss=loss, accuracy=acc, n=len(y),
        margin_mean=m.mean().item(), margin_median=m.median().item(),
        margin_p10=torch.quantile(m, 0.1).item(), margin_min=m.min().item(),
    )


def gaps(train: EvalMetrics, test: EvalMetrics) -> dict[str, float]:
    """The two generalization gaps: loss (test − train) and accuracy (train − test)."""
    return {"loss_gap": test.loss - train.loss, "acc_gap": train.accuracy - test.accuracy}
