"""One run from spec to run directory: data → model → (quantizers) → train → evaluate → files.

A run directory ``<out>/<run_id>/`` holds ``spec.json``, ``result.json`` and the weights at
initialization (``init.safetensors``, needed by distance-from-init measures) and at the end
(``model.safetensors``). It is built in a hidden temporary directory beside it and renamed
into place in one step, so a directory named after a run id is always complete.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import qgen
from qgen.config import RunSpec, Runtime
from qgen.data import DatasetInfo, Splits, load_data
from qgen.errors import QgenError
from qgen.io import (
    atomic_write_json,
    check_writable_dir,
    load_tensors,
    publish_mode,
    read_json,
    save_tensors,
)
from qgen.models import build_model
from qgen.train.evaluate import evaluate, gaps
from qgen.train.health import training_health
from qgen.train.loop import train_model

SPEC_FILE, RESULT_FILE = "spec.json", "result.json"
MODEL_FILE, INIT_FILE = "model.safetensors", "init.safetensors"
RUN_FILES = (SPEC_FILE, RESULT_FILE, MODEL_FILE, INIT_FILE)


def versions() -> dict[str, str]:
    """Versions of everything that can change the numbers."""
    return {"qgen": qgen.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def build_for_spec(spec: RunSpec, info: DatasetInfo) -> nn.Module:
    """The model of ``spec`` for a dataset, with quantizers inserted when the spec asks.

    Seeds torch's global generator with ``spec.train.seed`` first, so the initial weights
    are a function of the spec alone.
    """
    torch.manual_seed(spec.train.seed)
    model = build_model(spec.model, in_channels=info.channels, num_classes=info.num_classes,
                        input_size=info.size)
    if spec.quant.enabled:
        from qgen.quant import quantize_model

        model = quantize_model(model, spec.quant)
    return model


def is_complete(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds every run file and a readable result."""
    run_dir = Path(run_dir)
    if not all((run_dir / f).is_file() for f in RUN_FILES):
        return False
    try:
        result = read_json(run_dir / RESULT_FILE)
    except QgenError:
        return False
    return isinstance(result, dict) and "status" in result


def _publish(tmp: Path, final: Path, force: bool) -> None:
    """Move a finished temporary run directory into place.

    An existing complete run is kept unless ``force``; an incomplete one (say, a failed
    attempt's error record) is replaced.
    """
    if final.exists():
        if not force and is_complete(final):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


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
    """
    spec.validate_names()
    out_dir = check_writable_dir(runtime.out_dir)
    final = out_dir / spec.run_id
    if is_complete(final) and not runtime.force:
        return read_json(final / RESULT_FILE)
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    device = torch.device(runtime.device)
    if splits is None:
        splits = load_data(spec.data, runtime.data_dir, download=runtime.download)
    model = build_for_spec(spec, splits.info).to(device)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    t0 = time.perf_counter()
    outcome = train_model(model, splits.train_x, splits.train_y, spec.train, quant=spec.quant,
                          device=device, augment=spec.data.augment,
                          on_step=on_step, on_epoch=on_epoch)
    train_time = time.perf_counter() - t0
    train_m = evaluate(model, splits.train_x, splits.train_y)
    test_m = evaluate(model, splits.test_x, splits.test_y)
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
                 "train_size": len(splits.train_y), "test_size": len(splits.test_y),
                 "mean": list(splits.info.mean), "std": list(splits.info.std),
                 "source": splits.info.source},
        "num_params": sum(p.numel() for p in model.parameters()),
        "wall_time_s": train_time,
        "versions": versions(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if spec.quant.enabled:
        from qgen.quant import quant_report

        result["quant"] = {"label": spec.quant.label, "layers": quant_report(model),
                           "step_sizes": outcome.step_sizes,
                           "step_tracking": outcome.step_tracking}
    result["health"] = training_health(outcome.history, outcome.step_sizes, outcome.status,
                                       train_m.loss)

    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{spec.run_id}.tmp-"))
    try:
        publish_mode(tmp, directory=True)
        atomic_write_json(tmp / SPEC_FILE, spec.to_dict())
        meta = {"run_id": spec.run_id}
        save_tensors(tmp / INIT_FILE, init_state, meta)
        save_tensors(tmp / MODEL_FILE, model.state_dict(), meta)
        atomic_write_json(tmp / RESULT_FILE, result)
        _publish(tmp, final, runtime.force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def load_spec(run_dir: str | Path) -> RunSpec:
    """The spec stored in a run directory."""
    return RunSpec.from_dict(read_json(Path(run_dir) / SPEC_FILE))


def load_result(run_dir: str | Path) -> dict[str, Any]:
    """The result stored in a run directory."""
    return read_json(Path(run_dir) / RESULT_FILE)


def load_run_model(run_dir: str | Path, which: str = "final", info: DatasetInfo | None = None,
                   device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a run's model from its spec and load its weights ('final' or 'init').

    ``info`` (dataset shape) defaults to what result.json recorded, so no data is loaded.
    """
    run_dir = Path(run_dir)
    if which not in ("final", "init"):
        raise QgenError(f"which: must be 'final' or 'init', got {which!r}")
    spec = load_spec(run_dir)
    if info is None:
        info = _info_from_result(load_result(run_dir))
    model = build_for_spec(spec, info)
    state = load_tensors(run_dir / (MODEL_FILE if which == "final" else INIT_FILE))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise QgenError(f"{run_dir}: weights do not match the spec's model ({exc})") from exc
    return model.to(device).eval()


EXPORT_FILE = "model.int.safetensors"


def _info_from_result(result: dict[str, Any]) -> DatasetInfo:
    d = result["data"]
    return DatasetInfo(name=d["name"], num_classes=d["num_classes"], channels=d["channels"],
                       size=d["size"], mean=tuple(d["mean"]), std=tuple(d["std"]),
                       train_size=d["train_size"], test_size=d["test_size"], source=d["source"])


def export_run(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Export a quantized run as integer weights + step sizes (``qgen.quant`` format).

    The file also carries the run spec and the dataset's shape, so :func:`load_export`
    rebuilds the model from the file alone. Returns the path written (default
    ``<run_dir>/model.int.safetensors``).
    """
    import json

    from qgen.quant import export_quantized

    run_dir = Path(run_dir)
    spec = load_spec(run_dir)
    if not spec.quant.enabled:
        raise QgenError(f"{run_dir}: a full-precision run has no integer weights to export")
    result = load_result(run_dir)
    model = load_run_model(run_dir, info=_info_from_result(result))
    path = Path(path) if path is not None else run_dir / EXPORT_FILE
    export_quantized(model, path, {"run_spec": spec.canonical_json(),
                                   "run_data": json.dumps(result["data"], sort_keys=True)})
    return path


def load_export(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of an :func:`export_run` file (no run directory needed)."""
    import json

    from safetensors import safe_open

    from qgen.quant import load_quantized

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise QgenError(f"{path}: corrupt or unreadable safetensors file ({exc})") from exc
    if "run_spec" not in meta or "run_data" not in meta:
        raise QgenError(f"{path}: not a qgen run export (no run_spec/run_data metadata)")
    spec = RunSpec.from_dict(json.loads(meta["run_spec"]))
    info = _info_from_result({"data": json.loads(meta["run_data"])})
    model = build_for_spec(spec, info)
    return load_quantized(path, model).to(device).eval()
