"""Training health: flag a run whose training went wrong, so it is never reported as a model.

A run is *unhealthy* when

- its mean training cross-entropy rose by more than ``CE_RISE_FACTOR`` from one epoch to the
  next and by more than ``CE_RISE_MIN`` nats (a collapsing layer takes the loss back towards
  chance: 0.58 → 1.13 in the 8-bit collapse of docs/quantization.md; the absolute floor keeps
  the small relative wobbles of a loss near the cross-entropy target from counting);
- a quantizer's step ended more than ``STEP_DECADES`` orders of magnitude from where it
  started (a dying layer's step goes to the floor and then to hundreds: 0.0125 → 452);
- its final eval-mode training cross-entropy is more than ``EVAL_CE_FACTOR`` times (and
  ``CE_RISE_MIN`` nats above) the last epoch's mean minibatch cross-entropy: the network
  in eval mode (BatchNorm running statistics) is not the one that trained (a well-trained
  network's eval CE is below its minibatch CE);
- or it diverged (a non-finite loss).

The thresholds are constants, not spec fields: they judge a run and change none of its
numbers. They are recorded with each verdict in ``result.json``, beside the largest
relative change of any step in one update (reported, not judged: a step that passes near
zero under the |s| rule changes by many times its tiny value and the layer survives).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: an epoch-to-epoch rise of the mean training CE above this factor ...
CE_RISE_FACTOR = 1.5
#: ... and above this many nats is unhealthy
CE_RISE_MIN = 0.05
#: a step whose final value is this many decades from its initial value is unhealthy
STEP_DECADES = 2.0
#: a final eval-mode train CE above this multiple of the last minibatch CE is unhealthy
EVAL_CE_FACTOR = 1.5


def training_health(history: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]],
                    status: str, eval_train_ce: float | None = None) -> dict[str, Any]:
    """The health verdict of a run from its per-epoch history, its step report
    (:meth:`qgen.quant.steps.StepTracker.report`), its status and its final eval-mode
    training cross-entropy."""
    ce = [float(h["mean_batch_ce"]) for h in history if "mean_batch_ce" in h]
    max_rise, rise_at = 1.0, None
    flags: list[str] = []
    for epoch, (a, b) in enumerate(zip(ce, ce[1:], strict=False), start=1):
        if a > 0 and b / a > max_rise:
            max_rise, rise_at = b / a, epoch
        if a > 0 and b / a > CE_RISE_FACTOR and b - a > CE_RISE_MIN:
            flags.append(f"train CE rose {b / a:.2f}x ({a:.3f} -> {b:.3f}) from epoch "
                         f"{epoch} to {epoch + 1}")
    max_decades = max((float(s["log10_change"]) for s in steps), default=0.0)
    max_jump = max((float(s["max_rel_change"]) for s in steps), default=0.0)
    for s in steps:
        if float(s["log10_change"]) > STEP_DECADES:
            flags.append(f"step of {s['name']} moved {float(s['log10_change']):.1f} decades "
                         f"({_fmt(s['init'])} -> {_fmt(s['final'])})")
    if eval_train_ce is not None and ce:
        last = ce[-1]
        if eval_train_ce > EVAL_CE_FACTOR * last and eval_train_ce - last > CE_RISE_MIN:
            flags.append(f"eval-mode train CE {eval_train_ce:.3f} vs {last:.3f} in the last "
                         "epoch's minibatches (BatchNorm statistics do not match the network)")
    if status == "diverged":
        flags.append("diverged (non-finite training loss)")
    return {
        "healthy": not flags,
        "flags": flags,
        "max_ce_rise": max_rise,
        "max_ce_rise_epoch": rise_at,
        "max_step_decades": max_decades,
        "max_step_rel_change": max_jump,
        "thresholds": {"ce_rise_factor": CE_RISE_FACTOR, "ce_rise_min": CE_RISE_MIN,
                       "step_decades": STEP_DECADES, "eval_ce_factor": EVAL_CE_FACTOR},
    }


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return f"[{min(value):.3g}..{max(value):.3g}]"
    return f"{float(value):.3g}"
