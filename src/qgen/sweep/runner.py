"""Run a planned sweep into a run store: lock, clean up, skip what is done, run the rest.

:func:`run_sweep` is safe to call again after any interruption: complete runs are skipped
(the store decides, not a journal), runs that failed are skipped and reported unless
``retry_failed``, and everything else is handed to the executor. One sweep at a time may
write a store (an exclusive lock); what a killed process left behind is removed first.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qgen.config import Runtime
from qgen.errors import QgenError
from qgen.io import check_writable_dir
from qgen.store import RunDir, light_versions, now_iso, remove_stale, store_lock, write_error
from qgen.sweep.executors import Executor, RunOutcome
from qgen.sweep.plan import Plan
from qgen.sweep.status import write_manifest


@dataclass
class SweepReport:
    """What a call of :func:`run_sweep` did."""

    out_dir: Path
    planned: int
    already_done: int = 0
    skipped_failed: list[str] = field(default_factory=list)
    ran: int = 0
    converged: int = 0
    max_epochs: int = 0
    diverged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, message)
    removed_stale: list[str] = field(default_factory=list)
    duplicates: int = 0
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every planned run now has a result."""
        return not self.failed and not self.skipped_failed


def check_data_available(plan: Plan, runtime: Runtime) -> None:
    """Fail before anything runs when a dataset of the plan is not where the runs will look."""
    from qgen.data import dataset_available

    for name in sorted({s.data.name for s in plan.specs}):
        ok, where = dataset_available(name, runtime.data_dir)
        if not ok and not runtime.download:
            raise QgenError(f"dataset {name!r} is not available: {where}")


def run_sweep(
    plan: Plan,
    runtime: Runtime,
    executor: Executor,
    *,
    retry_failed: bool = False,
    check_data: bool = True,
    on_start: Callable[[int, int], None] | None = None,
    on_done: Callable[[RunOutcome], None] | None = None,
) -> SweepReport:
    """Run every planned spec that has no result yet into ``runtime.out_dir``.

    ``on_start(to_run, already_done)`` is called once the store has been read, and
    ``on_done(outcome)`` after each run (after its error record, if any, is written).
    ``check_data`` first checks that each dataset can be found on this machine (turn it off
    when the workers are other machines that have the data and this one does not).
    """
    t0 = time.perf_counter()
    if check_data:  # before anything is created: a missing dataset leaves no store behind
        check_data_available(plan, runtime)
    out = check_writable_dir(runtime.out_dir)
    runtime = dataclasses.replace(runtime, out_dir=out, force=False)
    report = SweepReport(out_dir=out, planned=len(plan.specs), duplicates=len(plan.duplicates))
    with store_lock(out):
        report.removed_stale = remove_stale(out)
        manifest = {
            "name": plan.sweep.name,
            "source": plan.sweep.source,
            "sweep": plan.sweep.to_dict(),
            "run_ids": plan.run_ids,
            "grid_size": plan.grid_size,
            "duplicates": len(plan.duplicates),
            "started_at": now_iso(),
            "started_at_unix": time.time(),
            "executor": executor.name,
            "workers": executor.concurrency,
            "threads": getattr(executor, "threads", runtime.threads),
            "device": runtime.device,
            "retry_failed": retry_failed,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "versions": light_versions(),
        }
        write_manifest(out, manifest)
        todo = []
        for spec in plan.specs:
            state = RunDir(out / spec.run_id).state
            if state == "complete":
                report.already_done += 1
            elif state == "failed" and not retry_failed:
                report.skipped_failed.append(spec.run_id)
            else:
                todo.append(spec)
        by_id = {s.run_id: s for s in todo}
        if on_start is not None:
            on_start(len(todo), report.already_done)

        def done(outcome: RunOutcome) -> None:
            report.ran += 1
            if outcome.ok:
                if outcome.status in ("converged", "max_epochs", "diverged"):
                    setattr(report, outcome.status, getattr(report, outcome.status) + 1)
            else:
                error = dict(outcome.error or {})
                error["attempts"] = outcome.attempts
                write_error(out, by_id[outcome.run_id], error)
                report.failed.append((outcome.run_id, str(error.get("message", ""))))
            if on_done is not None:
                on_done(outcome)

        executor.run(todo, runtime, done)
        manifest["finished_at"] = now_iso()
        manifest["finished_at_unix"] = time.time()
        write_manifest(out, manifest)
    report.wall_s = time.perf_counter() - t0
    return report
