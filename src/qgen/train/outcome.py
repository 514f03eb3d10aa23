"""What a training run went through (:class:`TrainOutcome`): the loop fills it, the resume
state saves and restores it, ``result.json`` records it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainOutcome:
    """How training ended, and what it went through."""

    status: str  # 'converged' | 'max_epochs' | 'diverged'
    epochs: float  # fractional when stopped inside an epoch
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    #: per quantizer: initial/final step and largest relative change (StepTracker.report)
    step_sizes: list[dict[str, Any]] = field(default_factory=list)
    step_tracking: dict[str, Any] = field(default_factory=dict)
    #: the completed epochs a resumed run continued from (None: trained from the start)
    resumed_from_epoch: int | None = None
    #: training seconds spent in earlier attempts up to that epoch (0 when not resumed)
    earlier_time_s: float = 0.0
    #: the compiled path's record (``train.compile``): compile seconds, graphs, eager steps
    compile: dict[str, Any] | None = None
