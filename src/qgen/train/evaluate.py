"""Evaluation: cross-entropy, accuracy and margins of a model on a tensor split.

The generalization gap is measured the way QGen and Jiang et al. define it: loss gap =
test cross-entropy − train cross-entropy, accuracy gap = train accuracy − test accuracy.
Both are computed with the model in eval mode (BatchNorm running statistics).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 1000,
                   device: str | torch.device | None = None) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batch by batch, on ``device``."""
    was_training = model.training
    model.eval()
    if device is None:
        device = next(iter(model.parameters())).device
    out = []
    try:
        for i in range(0, len(x), batch_size):
            out.append(model(x[i:i + batch_size].to(device, non_blocking=True)).float())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def margins(logits: Tensor, y: Tensor) -> Tensor:
    """True-class logit minus the largest other logit, per example."""
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y.view(-1, 1), float("-inf"))
    return true - others.max(dim=1).values


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> EvalMetrics:
    """Mean cross-entropy, accuracy and margin statistics of ``model`` on (x, y)."""
    logits = predict_logits(model, x, batch_size)
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
