"""Sweeps: grids of thousands of runs, planned from YAML, run locally or on Ray, resumed
after any interruption.

- :mod:`qgen.sweep.plan`: sweep files and presets → validated :class:`~qgen.config.RunSpec` s;
- :mod:`qgen.sweep.executors`: ``local`` worker processes and ``ray`` tasks;
- :mod:`qgen.sweep.runner`: :func:`run_sweep` (skip done runs, record failures);
- :mod:`qgen.sweep.status`: ``sweep.json`` and the counts of ``qgen sweep status``.

Run directories belong to :mod:`qgen.store`, the results table to :mod:`qgen.results`.
Names are imported on first use, so that ``import qgen.sweep`` (and a spawned worker that
imports it) does not pull in torch, pandas or Ray before it needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Sweep": "plan", "Plan": "plan", "load_sweep": "plan", "parse_sweep": "plan",
    "expand": "plan", "preset_names": "plan", "resolve_sweep_path": "plan",
    "store_status": "status", "StoreStatus": "status",
    "Executor": "executors", "LocalExecutor": "executors", "RayExecutor": "executors",
    "RunOutcome": "executors",
    "run_sweep": "runner", "SweepReport": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"qgen.sweep.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'qgen.sweep' has no attribute {name!r}")
