"""Step sizes during training: what each quantizer's step did, and the optional bound on it.

:class:`StepTracker` watches every :class:`~qgen.quant.lsq.LSQQuantizer` of a model across the
optimizer's updates and reports, per quantizer, the step in use (``max(|s|, eps)``) at the
first update and at the end, and the largest relative change of that step in one update. A
step that moves by orders of magnitude, or by several times its value in one update, is the
signature of a dying layer (docs/quantization.md), so the training-health check reads this.

With ``max_rel_change`` set (``QuantSpec.step_max_rel_change``) the tracker also enforces the
bound: after an update, a step whose magnitude changed by more than that fraction is moved
back to the bound (its sign kept), and for SGD its momentum buffer is set to the update
actually taken, ``(s_before − s_after) / lr``, so that the optimizer's state describes the
parameter it holds. Adam's moment estimates have no such exact counterpart and are left as
they are.

The tracker works on one flat vector of all steps, so it costs a handful of small tensor ops
per update, without synchronizing a GPU unless the bound is on.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from qgen.errors import QgenError
from qgen.quant.lsq import LSQQuantizer, effective_step
from qgen.quant.model import quantizers


class StepTracker:
    """Initial and final step of every quantizer, and the largest relative change per update.

    Call :meth:`before_update` after ``loss.backward()`` and before ``optimizer.step()``
    (activation steps start on the first forward, so their initial value exists by then), and
    :meth:`after_update` right after ``optimizer.step()``.
    """

    def __init__(self, model: nn.Module, max_rel_change: float | None = None) -> None:
        self.items: list[tuple[str, LSQQuantizer]] = [
            (n, q) for n, q in quantizers(model) if q.enabled]
        self.max_rel_change = max_rel_change
        self.sizes = [q.step.numel() for _, q in self.items]
        self.init: Tensor | None = None
        self.updates = 0
        self.clipped = 0
        self._prev: Tensor | None = None
        self._max_rel: Tensor | None = None

    def _raw(self) -> Tensor:
        return torch.cat([q.step.detach().reshape(-1) for _, q in self.items])

    @torch.no_grad()
    def before_update(self) -> None:
        """Remember the steps before the optimizer moves them."""
        if not self.items:
            return
        self._prev = self._raw()
        if self.init is None:
            self.init = effective_step(self._prev)
            self._max_rel = torch.zeros_like(self.init)

    @torch.no_grad()
    def after_update(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply the bound (when set) and record the relative change of this update."""
        if self._prev is None:
            return
        old = effective_step(self._prev)
        new = effective_step(self._raw())
        if self.max_rel_change is not None:
            new = self._bound(optimizer, old, new)
        rel = (new - old).abs_().div_(old)
        torch.maximum(self._max_rel, rel, out=self._max_rel)  # type: ignore[arg-type]
        self.updates += 1
        self._prev = None

    def _bound(self, optimizer: torch.optim.Optimizer, old: Tensor, new: Tensor) -> Tensor:
        r = self.max_rel_change
        bounded = torch.minimum(torch.maximum(new, old * max(0.0, 1 - r)), old * (1 + r))
        if torch.equal(bounded, new):
            return new
        lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        offset = 0
        for (_, q), n in zip(self.items, self.sizes, strict=True):
            sl = slice(offset, offset + n)
            offset += n
            changed = bounded[sl] != new[sl]
            if not bool(changed.any()):
                continue
            self.clipped += int(changed.sum())
            p = q.step
            before = self._prev[sl].view_as(p)  # type: ignore[index]
            sign = torch.where(p < 0, -1.0, 1.0).to(p.dtype)
            target = torch.where(changed.view_as(p), sign * bounded[sl].view_as(p), p)
            p.copy_(target)
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            lr = lr_of.get(id(p))
            if buf is not None and lr:
                buf.copy_(torch.where(changed.view_as(p), (before - p) / lr, buf))
        return bounded

    def state_dict(self) -> dict[str, Any]:
        """What the tracker has seen so far, to continue it in another process (a resumed
        run): the steps at the first update and the largest relative changes (tensors, or None
        before the first update) and the update and bound counts."""
        return {"init": self.init, "max_rel": self._max_rel, "updates": self.updates,
                "clipped": self.clipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a tracker of the same model; a state of
        another model (other number of step elements) is a QgenError."""
        init, max_rel = state["init"], state["max_rel"]
        total = sum(self.sizes)
        for name, t in (("init", init), ("max_rel", max_rel)):
            if t is not None and tuple(t.shape) != (total,):
                raise QgenError(f"step tracker state: {name} has {t.numel()} elements, the "
                                f"model's quantizers {total}")
        if (init is None) != (max_rel is None):
            raise QgenError("step tracker state: init and max_rel must both be set or both "
                            "be missing")
        if init is not None and total:
            ref = self.items[0][1].step  # the steps' device and dtype, as before_update makes
            init, max_rel = (t.to(ref.device, ref.dtype).clone() for t in (init, max_rel))
        self.init, self._max_rel = init, max_rel
        self.updates = int(state["updates"])
        self.clipped = int(state["clipped"])
        self._prev = None

    def report(self) -> list[dict[str, Any]]:
        """Per quantizer: name, role, bits, initial and final step in use (a float, or a list
        per channel), the largest relative change in one update (max over channels) and the
        largest |log10(final / initial)| over channels."""
        if self.init is None or self._max_rel is None:
            return []
        final = effective_step(self._raw())
        rows = []
        offset = 0
        for (name, q), n in zip(self.items, self.sizes, strict=True):
            sl = slice(offset, offset + n)
            offset += n
            a, b = self.init[sl].double(), final[sl].double()
            decades = float((b / a).log10().abs().max())
            rows.append({
                "name": name, "role": q.role, "bits": q.bits,
                "init": _plain(a, q.per_channel), "final": _plain(b, q.per_channel),
                "max_rel_change": float(self._max_rel[sl].max()),
                "log10_change": decades if math.isfinite(decades) else math.inf,
            })
        return rows

    def summary(self) -> dict[str, Any]:
        """Counts for result.json: updates tracked and step elements held at the bound."""
        return {"updates": self.updates, "max_rel_change_bound": self.max_rel_change,
                "bounded_elements": self.clipped}


def _plain(values: Tensor, per_channel: bool) -> float | list[float]:
    out = values.cpu().tolist()
    return out if per_channel else float(out[0])
