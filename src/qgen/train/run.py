"""One run from spec to run directory: data → model → (quantizers) → train → evaluate → files.

The run directory (its files, its state, how it is published) belongs to
:mod:`qgen.store.rundir`; this module trains the run and builds the directory's content, and
rebuilds a run's model from a directory.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import qgen
from qgen.checkpoint import read_metadata, save_tensors, state_mismatch
from qgen.config import RunSpec, Runtime
from qgen.data import DatasetInfo, Splits, get_dataset, load_data
from qgen.errors import QgenError
from qgen.io import atomic_write_json, check_can_create_dir, check_writable_dir
from qgen.models import build_model, check_model_name
from qgen.store import (
    INIT_FILE,
    MODEL_FILE,
    RESULT_FILE,
    SPEC_FILE,
    Resources,
    RunDir,
    publish_run,
)
from qgen.store.rundir import resume_file
from qgen.train.evaluate import evaluate, gaps
from qgen.train.health import training_health
from qgen.train.loop import train_model
from qgen.train.resume import ResumeFile

EXPORT_FILE = "model.int.safetensors"


def check_names(spec: RunSpec) -> RunSpec:
    """Check the dataset and model names of ``spec`` against the registries (once, where a
    spec enters: the command line, a sweep plan); returns ``spec``."""
    get_dataset(spec.data.name)  # a registered name or folder:PATH, else the allowed ones
    check_model_name(spec.model.name)
    return spec


def versions() -> dict[str, str]:
    """Versions of everything that can change the numbers."""
    out = {"qgen": qgen.__version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version()}
    for lib in ("torchvision", "timm"):  # zoo models' definitions come from them
        if lib in sys.modules:
            out[lib] = str(getattr(sys.modules[lib], "__version__", "unknown"))
    return out


def build_for_spec(spec: RunSpec, info: DatasetInfo,
                   weights: str | Path | None = None) -> nn.Module:
    """The model of ``spec`` for a dataset, with quantizers inserted when the spec asks.

    Seeds torch's global generator with ``spec.train.seed`` first, so the initial weights
    are a function of the spec alone. ``weights`` (a zoo model's starting checkpoint, see
    :mod:`qgen.models.zoo`) is loaded into the float model before the quantizers are
    inserted, so LSQ's step sizes start from those weights. The first and last layer are
    found by the order the layers run in on an example input.
    """
    torch.manual_seed(spec.train.seed)
    model = build_model(spec.model, in_channels=info.channels, num_classes=info.num_classes,
                        input_size=info.size)
    if weights is not None:
        from qgen.models.zoo import load_weights

        load_weights(model, weights, spec.model.name)
    if spec.quant.enabled:
        from qgen.quant import quantize_model

        example = torch.zeros(1, info.channels, info.size, info.size)
        model = quantize_model(model, spec.quant, example_input=example)
    return model


def spec_with_weights(spec: RunSpec, weights: str | Path | None) -> RunSpec:
    """``spec`` naming the checkpoint ``weights`` by SHA-256 (``model.options``), after
    checking that the file reads as a checkpoint; ``spec`` itself when ``weights`` is None."""
    if weights is None:
        return spec
    from qgen.models.zoo import WEIGHTS_OPTION, file_sha256, read_state_dict

    read_state_dict(weights)  # fails early, in one line, on a missing file or a non-checkpoint
    options = {**dict(spec.model.options), WEIGHTS_OPTION: file_sha256(weights)}
    return spec.replace(model=spec.model.replace(options=options))


def check_start_weights(spec: RunSpec, weights: str | Path | None) -> None:
    """The checkpoint a run starts from must be the one its spec names by SHA-256
    (``model.options.weights_sha256``): both or neither, and the same bytes."""
    from qgen.models.zoo import WEIGHTS_OPTION, file_sha256

    want = spec.model.option(WEIGHTS_OPTION)
    if weights is None:
        if want is not None:
            raise QgenError(f"model.options.{WEIGHTS_OPTION}: the run starts from a checkpoint "
                            f"({want[:12]}…); pass it with --weights FILE")
        return
    if not Path(weights).is_file():
        raise QgenError(f"--weights: {weights} is not a file")
    got = file_sha256(weights)
    if want is None:
        raise QgenError(f"--weights: the spec does not name the checkpoint; set "
                        f"model.options.{WEIGHTS_OPTION}={got}")
    if got != want:
        raise QgenError(f"--weights: {weights} has SHA-256 {got[:12]}…, but the spec names "
                        f"{str(want)[:12]}…; pass the file the spec was made with")


def execute_run(
    spec: RunSpec,
    runtime: Runtime,
    *,
    splits: Splits | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate ``spec``; write ``runtime.out_dir/<run_id>/``; return the result.

    An existing complete run directory is returned as it is unless ``runtime.force``.
    ``splits`` lets a caller that runs many specs on the same data load it once.

    With ``runtime.resume`` the training state is saved at every epoch boundary in the
    store's ``.resume/`` folder (:func:`~qgen.store.rundir.resume_file`), and a run killed
    before it was published continues from its last epoch when run again, ending with the
    uninterrupted run's result (``resumed_from_epoch`` in result.json says from where;
    ``wall_time_s`` counts the earlier attempts' training up to there). The state is removed
    once the run is published; ``runtime.force`` discards it first.
    """
    # Nothing is created before the data loads and the model builds: a late error (missing
    # data, an impossible depth, a bad device) leaves no empty output directory behind.
    out_dir = check_can_create_dir(runtime.out_dir)
    existing = RunDir(out_dir / spec.run_id)
    resume = ResumeFile(resume_file(runtime.resume_store or out_dir, spec.run_id), spec.run_id)
    if existing.is_complete and not runtime.force:
        resume.remove()  # left by a run killed right after it was published
        return existing.result
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    device = torch.device(runtime.device)
    check_start_weights(spec, runtime.weights)  # before the data: a cheap, early error
    if splits is None:
        splits = load_data(spec.data, runtime.data_dir, download=runtime.download)
    model = build_for_spec(spec, splits.info, runtime.weights).to(device)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if runtime.force or not runtime.resume:
        resume.remove()  # from scratch (and no state of an earlier attempt left to mislead)

    t0 = time.perf_counter()
    outcome = train_model(model, splits.train, spec=spec.train, quant=spec.quant,
                          device=device, augment=spec.data.augment,
                          on_step=on_step, on_epoch=on_epoch,
                          resume=resume if runtime.resume else None)
    train_time = time.perf_counter() - t0
    train_m = evaluate(model, splits.train)
    test_m = evaluate(model, splits.test)
    result: dict[str, Any] = {
        "run_id": spec.run_id,
        "status": outcome.status,
        "epochs": outcome.epochs,
        "steps": outcome.steps,
        "seed": spec.train.seed,
        "metrics": {
            **{f"train_{k}": v for k, v in train_m.to_dict().items()},
            **{f"test_{k}": v for k, v in test_m.to_dict().items()},
            **gaps(train_m, test_m),
        },
        "stop_rule": {"target_ce": spec.train.target_ce, "max_epochs": spec.train.max_epochs,
                      "checks": outcome.checks},
        "history": outcome.history,
        "data": {"name": splits.info.name, "num_classes": splits.info.num_classes,
                 "channels": splits.info.channels, "size": splits.info.size,
                 "train_size": len(splits.train), "test_size": len(splits.test),
                 "mean": list(splits.info.mean), "std": list(splits.info.std),
                 "source": splits.info.source},
        "num_params": sum(p.numel() for p in model.parameters()),
        "wall_time_s": train_time + outcome.earlier_time_s,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "versions": versions(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if spec.quant.enabled:
        from qgen.quant import quant_report

        result["quant"] = {"label": spec.quant.label, "layers": quant_report(model),
                           "step_sizes": outcome.step_sizes,
                           "step_tracking": outcome.step_tracking}
    if outcome.compile is not None:
        result["compile"] = outcome.compile
    result["health"] = training_health(outcome.history, outcome.step_sizes, outcome.status,
                                       train_m.loss)

    def build(tmp: Path) -> None:
        atomic_write_json(tmp / SPEC_FILE, spec.to_dict())
        meta = {"run_id": spec.run_id}
        save_tensors(tmp / INIT_FILE, init_state, meta)
        save_tensors(tmp / MODEL_FILE, model.state_dict(), meta)
        atomic_write_json(tmp / RESULT_FILE, result)

    check_writable_dir(out_dir)
    publish_run(out_dir, spec.run_id, build, replace=runtime.force)
    resume.remove()
    return result


def info_from_result(result: dict[str, Any], where: str = RESULT_FILE) -> DatasetInfo:
    """The dataset's shape as a run's result.json recorded it (no data is loaded); ``where``
    names the file in the error when it is damaged."""
    d = result.get("data")
    if not isinstance(d, dict):
        raise QgenError(f"{where}: no 'data' entry describing the dataset; the run's result "
                        "is damaged")
    try:
        return DatasetInfo(name=d["name"], num_classes=int(d["num_classes"]),
                           channels=int(d["channels"]), size=int(d["size"]),
                           mean=tuple(d["mean"]), std=tuple(d["std"]),
                           train_size=d["train_size"], test_size=d["test_size"],
                           source=d["source"])
    except (KeyError, TypeError, ValueError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else "a malformed entry"
        raise QgenError(f"{where}: 'data' does not describe the dataset ({what}); "
                        "the run's result is damaged") from None


def _as_run(run: RunDir | str | Path) -> RunDir:
    return (run if isinstance(run, RunDir) else RunDir(run)).require_complete()


def load_run_model(run: RunDir | str | Path, which: str = "final",
                   info: DatasetInfo | None = None,
                   device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a run's model from its spec and load its weights ('final' or 'init').

    ``info`` (dataset shape) defaults to what result.json recorded, so no data is loaded.
    Both checkpoints are checked against the spec's model here, once (a post-pass reads the
    other one too): a mismatch is one QgenError naming the file.
    """
    run = _as_run(run)
    model = build_for_spec(run.spec, info or info_from_result(run.result,
                                                             str(run.file(RESULT_FILE))))
    for name, file in (("final", MODEL_FILE), ("init", INIT_FILE)):
        check_weights(model, run.weights(name), run.file(file))
    model.load_state_dict(run.weights(which))
    return model.to(device).eval()


def check_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """A QgenError (one line) unless ``state`` has exactly the model's tensors and shapes,
    e.g. full-precision weights in a 4-bit run's directory, or the reverse."""
    problem = state_mismatch(model.state_dict(), state)
    if problem is None:
        return
    raise QgenError(f"{path}: weights do not match the run's spec ({problem}); "
                    "were they copied from another run?")


def load_run_data(run: RunDir, resources: Resources) -> Splits:
    """The run's own data (same DataSpec, so the same subset), loaded once per ``resources``."""
    key = ("splits", run.spec.data, str(resources.data_dir))
    if key not in resources.cache:
        resources.cache[key] = load_data(run.spec.data, resources.data_dir)
    return resources.cache[key]


def export_run(run: RunDir | str | Path, path: str | Path | None = None) -> Path:
    """Export a quantized run as integer weights + step sizes (``qgen.quant`` format).

    The file also carries the run spec and the dataset's shape, so :func:`load_export`
    rebuilds the model from the file alone. Returns the path written (default
    ``<run_dir>/model.int.safetensors``).
    """
    from qgen.quant import export_quantized

    run = _as_run(run)
    if not run.spec.quant.enabled:
        raise QgenError(f"{run.path}: a full-precision run has no integer weights to export")
    model = load_run_model(run)
    path = Path(path) if path is not None else run.file(EXPORT_FILE)
    export_quantized(model, path, {"run_spec": run.spec.canonical_json(),
                                   "run_data": json.dumps(run.result["data"], sort_keys=True)})
    return path


def load_export(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of an :func:`export_run` file (no run directory needed)."""
    from qgen.quant import load_quantized

    path = Path(path)
    meta = read_metadata(path)
    if "run_spec" not in meta or "run_data" not in meta:
        raise QgenError(f"{path}: not a qgen run export (no run_spec/run_data metadata)")
    spec = RunSpec.from_dict(json.loads(meta["run_spec"]))
    info = info_from_result({"data": json.loads(meta["run_data"])}, f"{path}: run_data")
    model = build_for_spec(spec, info)
    return load_quantized(path, model).to(device).eval()
