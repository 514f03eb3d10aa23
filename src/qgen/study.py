"""A whole study in one call: plan, train, post-passes, collect, analyse, report.

:func:`run_study` takes a sweep file (or preset) and an output folder and runs every stage,
each resumable (finished runs and post-pass records are reused), timing each one::

    <out>/runs/            the run store (one directory per run, post-pass records inside)
    <out>/results.parquet  the results table of the study's runs (and results.csv)
    <out>/report/          report.html (self-contained), report.md, figures/, tables/
    <out>/study.json       what ran: the sweep, the settings of every stage, stage timings

What happens after training is the sweep file's ``study`` section::

    study:
      measures: {names: ["pacbayes.*", "sharpness.*"], preset: default, ...MeasureSpec fields}
      robustness: {...}     # a post-pass's settings; absent or null: not run
      theory: {...}
      report: {n_boot: 1000}
      fast: {axes: {...}, seeds: [...], measures: {...}}   # overrides for --fast
      full: {robustness: {corruptions: all}}               # overrides for --full

Progress goes to an optional observer; :mod:`qgen.cli` draws it. ``qgen demo`` is this on the
``demo`` preset.
"""

from __future__ import annotations

import copy
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qgen.config import Runtime
from qgen.errors import QgenError
from qgen.io import atomic_write_json, check_writable_dir

#: the named sets of overrides a study section may hold (``--fast``, ``--full``)
VARIANTS = ("fast", "full")
STUDY_KEYS = ("measures", "robustness", "theory", "report", *VARIANTS)
#: the post-passes a study can run, in order: name -> (module that registers it, the
#: function in that module that turns the study section's mapping into its settings)
POSTPASSES: dict[str, tuple[str, str]] = {
    "measures": ("qgen.measures.postpass", "settings_from_dict"),
    "robustness": ("qgen.robustness.postpass", "settings_from_dict"),
    "theory": ("qgen.theory.postpass", "settings_from_dict"),
}


class Observer(Protocol):
    """Receives a study's progress (all methods optional in spirit: implement what you
    draw)."""

    def start(self, stage: str, total: int | None, info: str = "") -> None: ...

    def advance(self, stage: str, info: str = "") -> None: ...

    def done(self, stage: str, seconds: float, summary: str = "") -> None: ...


class _Silent:
    def start(self, stage: str, total: int | None, info: str = "") -> None:
        pass

    def advance(self, stage: str, info: str = "") -> None:
        pass

    def done(self, stage: str, seconds: float, summary: str = "") -> None:
        pass


@dataclass
class StudyResult:
    """Where a study's outputs are, its stage timings (seconds) and what each stage did."""

    out: Path
    store: Path
    table: Path
    report: Path | None
    timings: dict[str, float] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)
    sweep_report: Any = None
    frame: Any = None
    analysis: Any = None


def apply_variant(sweep: Any, variant: str) -> Any:
    """The sweep with its ``study.<variant>`` overrides applied (``fast``: a first look;
    ``full``: everything): axes replaced one by one, seeds, and any post-pass settings
    merged. The sweep's name gets ``-<variant>`` appended."""
    import dataclasses

    if variant not in VARIANTS:
        raise QgenError(f"study variant: must be one of {', '.join(VARIANTS)}; got {variant!r}")
    over = dict(sweep.study.get(variant) or {})
    if not over:
        raise QgenError(f"{sweep.source}: --{variant} needs a study.{variant} section (the "
                        "overrides it applies)")
    unknown = sorted(set(over) - {"axes", "seeds", *POSTPASSES, "report"})
    if unknown:
        raise QgenError(f"{sweep.source}: study.{variant}: unknown key {unknown[0]!r}; "
                        f"allowed: axes, seeds, {', '.join(POSTPASSES)}, report")
    axes = dict(sweep.axes)
    for key, values in (over.get("axes") or {}).items():
        if key not in axes:
            raise QgenError(f"{sweep.source}: study.{variant}.axes.{key}: not an axis of the "
                            "sweep")
        axes[key] = list(values)
    study = copy.deepcopy(sweep.study)
    for key in (*POSTPASSES, "report"):
        if isinstance(over.get(key), dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **over[key]}
    study.pop(variant, None)
    return dataclasses.replace(sweep, axes=axes, seeds=over.get("seeds", sweep.seeds),
                               study=study, name=f"{sweep.name}-{variant}")


def _postpass_settings(study: dict[str, Any], where: str) -> list[tuple[str, Any, Any]]:
    """(name, PostPass, settings) of every post-pass the study section asks for, in order."""
    from qgen.store import get_postpass

    unknown = sorted(set(study) - set(STUDY_KEYS))
    if unknown:
        raise QgenError(f"{where}: study: unknown key {unknown[0]!r}; allowed: "
                        f"{', '.join(STUDY_KEYS)}")
    out = []
    for name, (module, builder) in POSTPASSES.items():
        section = study.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise QgenError(f"{where}: study.{name} must be a mapping of settings")
        mod = importlib.import_module(module)
        try:
            settings = getattr(mod, builder)(section)
        except QgenError as exc:
            raise QgenError(f"{where}: study.{name}: {exc}") from None
        out.append((name, get_postpass(name), settings))
    return out


def run_study(sweep: str | Path | Any, out: str | Path, *, fast: bool = False,
              full: bool = False, workers: int = 2, threads: int = 1, data_dir: Path | None = None,
              device: str = "cpu", observer: Observer | None = None,
              run_sweep_fn: Callable[..., Any] | None = None,
              weights: Path | None = None) -> StudyResult:
    """Run every stage of the study ``sweep`` (a file, a preset name or a parsed Sweep) into
    ``out`` (see the module docstring) and return where everything is.

    ``fast`` and ``full`` apply the sweep's ``study.fast`` / ``study.full`` overrides (see
    :func:`apply_variant`; both may be given). ``workers`` runs train and are post-processed
    side by side, each with ``threads`` torch threads (pinned: the numbers depend on the
    thread count, not on ``workers``).
    ``run_sweep_fn(plan, runtime, executor)`` replaces the training stage's runner (the CLI
    passes one that draws progress). ``weights``: the checkpoint every zoo model starts from
    (:meth:`qgen.sweep.plan.Plan.with_weights`).
    """
    from qgen.store import Resources, run_postpass_many, store_lock
    from qgen.sweep.executors import LocalExecutor, cpu_cores
    from qgen.sweep.plan import expand, load_sweep
    from qgen.sweep.runner import check_data_available, run_sweep

    obs = observer or _Silent()
    sw = sweep if hasattr(sweep, "axes") else load_sweep(sweep)
    if fast:
        sw = apply_variant(sw, "fast")
    if full:
        sw = apply_variant(sw, "full")
    passes = _postpass_settings(sw.study, sw.source)
    plan = expand(sw).with_weights(weights)
    out = Path(out)
    store = out / "runs"
    runtime = Runtime(out_dir=store, data_dir=data_dir, device=device, quiet=True,
                      weights=weights)
    check_data_available(plan, runtime)  # before anything is written
    check_writable_dir(out)
    workers = max(1, min(workers, max(1, cpu_cores() // threads), len(plan.specs)))
    result = StudyResult(out=out, store=store, table=out / "results.parquet", report=None)

    def stage(name: str, fn: Callable[[], str]) -> None:
        t0 = time.perf_counter()
        summary = fn()
        result.timings[name] = time.perf_counter() - t0
        result.summaries[name] = summary
        obs.done(name, result.timings[name], summary)

    def train() -> str:
        executor = LocalExecutor(workers=workers, threads=threads)
        if run_sweep_fn is not None:
            report = run_sweep_fn(plan, runtime, executor)
        else:
            report = run_sweep(
                plan, runtime, executor,
                on_start=lambda todo, done: obs.start("train", todo, f"{done} already done"),
                on_done=lambda outcome: obs.advance("train", f"{outcome.run_id} "
                                                             f"{outcome.status}"))
        result.sweep_report = report
        return (f"{report.planned} runs: {report.already_done} reused, {report.ran} trained, "
                f"{len(report.failed)} failed")

    stage("train", train)
    run_paths = [store / rid for rid in plan.run_ids]
    resources = Resources(data_dir=data_dir, device=device)
    for name, postpass, settings in passes:
        def one_pass(name: str = name, postpass: Any = postpass, settings: Any = settings
                     ) -> str:
            counts = {"computed": 0, "reused": 0, "skipped": 0}
            obs.start(name, len(run_paths))

            def on_done(run: Any, record: Any, skipped: str | None) -> None:
                key = "skipped" if skipped else ("reused" if record.get("reused")
                                                 else "computed")
                counts[key] += 1
                obs.advance(name, run.run_id)

            with store_lock(store):
                run_postpass_many(postpass, run_paths, settings, resources=resources,
                                  on_done=on_done, workers=workers, threads=threads)
            return ", ".join(f"{v} {k}" for k, v in counts.items())
        stage(name, one_pass)

    def collect_stage() -> str:
        from qgen.results import collect, write_table

        df = collect(store)
        df = df[df["run_id"].isin(set(plan.run_ids))].reset_index(drop=True)
        if df.empty:
            raise QgenError(f"{store}: no run of the study finished; see the errors above")
        write_table(df, result.table)
        write_table(df, result.table.with_suffix(".csv"))
        result.frame = df
        return f"{len(df)} rows × {len(df.columns)} columns"

    stage("collect", collect_stage)
    n_boot = int((sw.study.get("report") or {}).get("n_boot", 1000))

    def analysis_stage() -> str:
        from qgen.analysis import analyze
        from qgen.report import load_section_modules

        load_section_modules()  # robustness and theory register their claims
        result.analysis = analyze(result.frame, n_boot=n_boot)
        return f"{len(result.analysis.claims)} claims"

    def report_stage() -> str:
        from qgen.report import build_report

        result.report = build_report(result.frame, out / "report", analysis=result.analysis,
                                     title=f"qgen study: {sw.name}", n_boot=n_boot)
        return str(result.report)

    stage("analysis", analysis_stage)
    stage("report", report_stage)
    import qgen

    atomic_write_json(out / "study.json", {
        "sweep": sw.to_dict(), "source": sw.source, "fast": fast, "full": full,
        "workers": workers, "threads": threads, "device": device, "runs": plan.run_ids,
        "postpasses": {name: getattr(settings, "to_dict", lambda s=settings: s)()
                       for name, _, settings in passes},
        # "stages": the order they ran in (the file's keys are written sorted)
        "stages": list(result.timings), "timings_s": result.timings,
        "summaries": result.summaries,
        "qgen": qgen.__version__})
    return result
