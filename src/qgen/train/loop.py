"""The training loop and the stop rule of the generalization-measure protocol.

Jiang et al. (2020) and Dziugaite et al. (2020) train every network until its training
cross-entropy reaches a target (0.01), so that models are compared at the same fit. We check
the cross-entropy on the full training set (eval mode) at the end of an epoch once the
epoch's mean minibatch loss is near the target, and every quarter epoch once a check came
within twice the target; a run also stops at ``max_epochs`` or when the loss stops being
finite ('diverged': a result, not a crash).

A run can save its state at every epoch boundary and continue from it after being killed,
ending exactly as if it had not been (:mod:`qgen.train.resume`). With ``train.precision``
'bf16' or 'fp16' the forward pass and the loss run under ``torch.autocast`` (fp16 with a
gradient scaler, CUDA only); stop-rule checks, BatchNorm re-estimation and evaluation stay in
float32, and LSQ quantizers compute in float32 inside autocast (:mod:`qgen.quant.lsq`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qgen.config import QuantSpec, TrainSpec
from qgen.data import Batches, ExampleSource, as_source
from qgen.errors import QgenError
from qgen.quant import param_groups
from qgen.quant.steps import StepTracker
from qgen.train.compiled import CompiledForward
from qgen.train.evaluate import evaluate
from qgen.train.outcome import TrainOutcome
from qgen.train.resume import ResumeFile, capture_state, restore_state

#: an epoch's mean minibatch loss below NEAR_FACTOR × target triggers a full-train check
NEAR_FACTOR = 5.0
#: a check below CLOSE_FACTOR × target makes the next checks four per epoch
CLOSE_FACTOR = 2.0
CHECKS_PER_EPOCH_WHEN_CLOSE = 4


def make_optimizer(model: nn.Module, spec: TrainSpec,
                   quant: QuantSpec | None = None) -> torch.optim.Optimizer:
    """SGD with momentum or Adam over the model's parameters.

    With quantizers in the model, step sizes get their own group without weight decay
    unless ``quant.step_weight_decay`` (LSQ does not decay step sizes), with the learning
    rate scaled by ``quant.step_lr_scale`` (kept in the group as ``lr_scale``, which the
    schedule honours) and, for SGD, momentum ``quant.step_momentum`` when set.
    """
    if quant is not None and quant.enabled:
        groups = param_groups(model, spec.weight_decay, quant.step_weight_decay)
        for group in groups:
            if group.get("name") == "steps":
                group["lr_scale"] = quant.step_lr_scale
                group["lr"] = spec.lr * quant.step_lr_scale
                if quant.step_momentum is not None and spec.optimizer == "sgd":
                    group["momentum"] = quant.step_momentum
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad],
                   "weight_decay": spec.weight_decay}]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)
    return torch.optim.Adam(groups, lr=spec.lr)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: ExampleSource | Tensor,
                          batch_size: int) -> int:
    """Re-estimate every BatchNorm's running mean and variance from ``data`` (a source, or
    an input tensor), in place.

    One pass over the data in order, in batches of ``batch_size`` (the batch statistics the
    network trained with), with every BatchNorm in training mode and averaging cumulatively
    (``momentum=None``); everything else (dropout, quantizers) in eval mode. Parameters and
    quantizer steps are not touched, and the model's train/eval mode is restored. Returns the
    number of BatchNorm layers re-estimated.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.track_running_stats]
    if not bns:
        return 0
    if isinstance(data, Tensor):
        batches: Any = ((data[i:i + batch_size], None) for i in range(0, len(data), batch_size))
    else:
        batches = data.batches(batch_size)
    was_training = model.training
    momenta = [m.momentum for m in bns]
    model.eval()
    device = next(iter(model.parameters())).device
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for i, (xb, _) in enumerate(batches):
            if len(xb) < 2 and i > 0:
                break  # a trailing batch of one has no variance
            model(xb.to(device, non_blocking=True))
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    return len(bns)


#: the autocast dtype of each ``train.precision`` ('fp32': no autocast)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_for(precision: str, device: str | torch.device
                 ) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A factory of the context the forward pass and the loss run in for ``precision``.

    'bf16' works on the CPU and CUDA; 'fp16' needs CUDA (its gradients need loss scaling, which
    :class:`torch.amp.GradScaler` does there): anything else is a one-line QgenError.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise QgenError(f"train.precision: must be one of {', '.join(PRECISIONS)}; "
                        f"got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise QgenError(f"train.precision: 'fp16' needs a CUDA device (this run is on "
                        f"{device.type}); use 'bf16' for mixed precision on the CPU")
    if device.type not in ("cpu", "cuda"):
        raise QgenError(f"train.precision: {precision!r} runs on cpu or cuda devices, not "
                        f"{device.type}; use 'fp32'")
    return lambda: torch.autocast(device.type, dtype=dtype)


def _loss(forward: Callable[[Tensor], Tensor], xb: Tensor, yb: Tensor,
          amp: Callable[[], contextlib.AbstractContextManager[Any]]) -> Tensor:
    with amp():
        return F.cross_entropy(forward(xb), yb)


def _backward(loss: Tensor, scaler: torch.amp.GradScaler | None) -> None:
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()


def _lr_at(spec: TrainSpec, step: int, total: int) -> float:
    if spec.schedule == "cosine":
        return 0.5 * spec.lr * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return spec.lr


def train_model(
    model: nn.Module,
    data: ExampleSource | Tensor,
    labels: Tensor | None = None,
    spec: TrainSpec | None = None,
    *,
    quant: QuantSpec | None = None,
    device: str | torch.device = "cpu",
    augment: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume: ResumeFile | None = None,
) -> TrainOutcome:
    """Train ``model`` in place until the stop rule fires.

    ``data`` is the training split: an :class:`~qgen.data.ExampleSource`, or the input
    tensor with ``labels``. ``on_step(step_in_epoch, steps_per_epoch, loss)`` and
    ``on_epoch(record)`` report progress. The batch order and augmentation are drawn from
    ``spec.seed``, so a run is reproducible.

    With ``resume``, training first continues from the state saved there, if any (then
    ``on_step``/``on_epoch`` report the remaining epochs only), and saves its state there at
    the end of every epoch after which it goes on (before ``on_epoch``). The result is the
    uninterrupted run's, bit for bit, on the same device, thread count and versions; a state
    that does not fit is reported on stderr and training starts from scratch. The caller
    removes the file when the result is safe.
    """
    if spec is None:
        raise TypeError("train_model: spec (a TrainSpec) is required")
    device = torch.device(device)
    amp = autocast_for(spec.precision, device)
    t0 = time.perf_counter()
    source = as_source(data, labels)
    model.to(device)
    loader = source.batches(spec.batch_size, shuffle=True, augment=augment, seed=spec.seed,
                            device=device)
    optimizer = make_optimizer(model, spec, quant)
    tracker = None
    if quant is not None and quant.enabled:
        tracker = StepTracker(model, quant.step_max_rel_change)
    scaler = torch.amp.GradScaler(device.type) if spec.precision == "fp16" else None
    compiled = CompiledForward(model, device) if spec.compile else None
    outcome = TrainOutcome(status="max_epochs", epochs=0, steps=0)
    start, close = 0, False
    if resume is not None and (state := resume.load()) is not None:
        try:
            close = restore_state(state, model=model, optimizer=optimizer, tracker=tracker,
                                  scaler=scaler, loader=loader, outcome=outcome, device=device)
        except QgenError as exc:  # nothing was changed: train from the start
            resume.discard(f"the resume state does not fit this run ({exc})")
        else:
            start = outcome.resumed_from_epoch = state.epoch
            outcome.earlier_time_s = float(state.meta["elapsed_s"])

    def save(epoch: int, close: bool) -> None:
        assert resume is not None
        elapsed = outcome.earlier_time_s + time.perf_counter() - t0
        resume.save(capture_state(
            model=model, optimizer=optimizer, tracker=tracker, scaler=scaler, loader=loader,
            outcome=outcome, epoch=epoch, close=close, elapsed_s=elapsed, device=device))

    try:
        _train_epochs(model, loader, source, spec, optimizer, tracker, outcome, on_step,
                      on_epoch, amp=amp, scaler=scaler, start=start, close=close,
                      save=save if resume is not None else None, compiled=compiled)
        if spec.bn_recalibration == "full" and outcome.status != "diverged":
            # the statistics the final evaluation and every later use of the model see
            recalibrate_batchnorm(model, source, spec.batch_size)
    finally:
        if tracker is not None:
            outcome.step_sizes = tracker.report()
            outcome.step_tracking = tracker.summary()
        if compiled is not None:
            outcome.compile = compiled.report()
    return outcome


def _train_epochs(model: nn.Module, loader: Batches, source: ExampleSource, spec: TrainSpec,
                  optimizer: torch.optim.Optimizer, tracker: StepTracker | None,
                  outcome: TrainOutcome,
                  on_step: Callable[[int, int, float], None] | None,
                  on_epoch: Callable[[dict[str, Any]], None] | None, *,
                  amp: Callable[[], contextlib.AbstractContextManager[Any]],
                  scaler: torch.amp.GradScaler | None, start: int, close: bool,
                  save: Callable[[int, bool], None] | None,
                  compiled: CompiledForward | None = None) -> None:
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * spec.max_epochs
    check_every = max(1, steps_per_epoch // CHECKS_PER_EPOCH_WHEN_CLOSE)

    def check(epoch_pos: float) -> bool:
        nonlocal close
        if spec.bn_recalibration == "full":
            recalibrate_batchnorm(model, source, spec.batch_size)
        ce = evaluate(model, source).loss
        model.train()
        outcome.checks.append({"epoch": round(epoch_pos, 4), "step": outcome.steps, "train_ce": ce})
        close = ce <= CLOSE_FACTOR * spec.target_ce
        return ce <= spec.target_ce

    for epoch in range(start, spec.max_epochs):
        model.train()
        loss_sum, n_batches = 0.0, 0
        for i, (xb, yb) in enumerate(loader):
            if len(yb) < 2:
                # a trailing batch of one breaks BatchNorm in training mode on 1x1 maps
                continue
            lr = _lr_at(spec, outcome.steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if compiled is None:
                with amp():
                    loss = F.cross_entropy(model(xb), yb)
            else:  # the compiled step runs its backward itself (it may compile on it)
                optimizer.zero_grad(set_to_none=True)
                loss = compiled.step(xb, lambda fwd, xb=xb, yb=yb: _loss(fwd, xb, yb, amp),
                                     lambda loss: _backward(loss, scaler))
            if not torch.isfinite(loss):
                outcome.status = "diverged"
                outcome.epochs = epoch + i / steps_per_epoch
                outcome.history.append({"epoch": epoch + 1, "diverged_at_step": outcome.steps})
                return
            if compiled is None:
                optimizer.zero_grad(set_to_none=True)
                _backward(loss, scaler)
            if tracker is not None:
                tracker.before_update()
            if scaler is None:
                optimizer.step()
            else:  # unscales first; skips the update when a gradient overflowed
                scaler.step(optimizer)
                scaler.update()
            if tracker is not None:
                tracker.after_update(optimizer)
            outcome.steps += 1
            loss_sum += loss.item()
            n_batches += 1
            if on_step is not None:
                on_step(i + 1, steps_per_epoch, loss.item())
            if close and (i + 1) % check_every == 0 and i + 1 < steps_per_epoch:
                if check(epoch + (i + 1) / steps_per_epoch):
                    outcome.status = "converged"
                    outcome.epochs = epoch + (i + 1) / steps_per_epoch
                    return
        mean_loss = loss_sum / max(n_batches, 1)
        record: dict[str, Any] = {"epoch": epoch + 1, "mean_batch_ce": mean_loss, "lr": lr}
        converged = False
        if close or mean_loss <= NEAR_FACTOR * spec.target_ce:
            converged = check(epoch + 1)
            record["train_ce"] = outcome.checks[-1]["train_ce"]
        outcome.history.append(record)
        outcome.epochs = epoch + 1
        if save is not None and not converged and epoch + 1 < spec.max_epochs:
            save(epoch + 1, close)
        if on_epoch is not None:
            on_epoch(record)
        if converged:
            outcome.status = "converged"
            return
