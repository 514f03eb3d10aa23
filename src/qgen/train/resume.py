"""The resume state of a run in training: what it needs to continue from an epoch boundary
as if it had never stopped, kept in one safetensors file.

At the end of every epoch after which training continues, :func:`~qgen.train.train_model`
saves a :class:`TrainState` through a :class:`ResumeFile`: the model's state dict (LSQ
quantizer flags and BatchNorm statistics included), the optimizer's state per parameter
position and its parameter groups' scalars, the step tracker, the gradient scaler (fp16),
the outcome so far (history, checks, steps), the stop rule's ``close`` flag, the loader's
next epoch and torch's global RNG state (dropout) of the CPU and, when training there, of
the CUDA device. Restored, training goes on bit for bit as the uninterrupted run would on
the same device, thread count and versions.

Tensors are stored as tensors; everything else is one JSON document in the file's metadata,
so reading a state runs no pickled code. The file is a cache, never a result: one that is
damaged, of another run or format, or that does not fit the model, the optimizer, the device,
the thread count or the versions is reported in one line on stderr and removed, and the run
starts from scratch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

import qgen
from qgen.checkpoint import load_tensors, read_metadata, save_tensors
from qgen.errors import QgenError

if TYPE_CHECKING:
    from qgen.quant.steps import StepTracker
    from qgen.train.outcome import TrainOutcome

#: the layout of a resume file; a file of another format is discarded
RESUME_FORMAT = 1


@dataclass
class TrainState:
    """A snapshot of training at an epoch boundary: ``tensors`` (model, optimizer, step
    tracker, RNG states) and JSON-able ``meta`` (everything else)."""

    tensors: dict[str, Tensor]
    meta: dict[str, Any]

    @property
    def epoch(self) -> int:
        """The number of epochs completed: training continues with this (0-based) epoch."""
        return int(self.meta["epoch"])


def warn(msg: str) -> None:
    """One warning line on stderr (a resume problem never stops a run)."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class ResumeFile:
    """Where one run keeps its resume state (see the module docstring).

    ``path`` is usually :func:`qgen.store.rundir.resume_file`; ``run_id`` is written into the
    file and checked on reading, so a file copied from another run is never continued.
    """

    def __init__(self, path: str | Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._save_failed = False

    def __repr__(self) -> str:
        return f"ResumeFile({str(self.path)!r}, {self.run_id!r})"

    def load(self) -> TrainState | None:
        """The saved state, or None when there is none; a damaged file, or one of another run
        or format, is reported, removed, and None."""
        if not self.path.is_file():
            return None
        try:
            meta = read_metadata(self.path)
            if meta.get("format") != str(RESUME_FORMAT):
                raise QgenError(f"resume format {meta.get('format')!r}, this qgen reads "
                                f"{RESUME_FORMAT}")
            if meta.get("run_id") != self.run_id:
                raise QgenError(f"the state of run {meta.get('run_id')!r}, not {self.run_id!r}")
            state = TrainState(load_tensors(self.path), json.loads(meta["state"]))
            if not isinstance(state.meta, dict) or state.epoch < 1:
                raise QgenError("no epoch recorded")
        except (QgenError, KeyError, TypeError, ValueError) as exc:
            # (json.JSONDecodeError is a ValueError)
            self.discard(f"unusable resume state ({_one_line(exc)})")
            return None
        return state

    def save(self, state: TrainState) -> None:
        """Write ``state`` atomically (creating the folder). A failed write (disk full, no
        permission) is reported once and later saves are skipped: training goes on."""
        if self._save_failed:
            return
        meta = {"format": str(RESUME_FORMAT), "run_id": self.run_id,
                "state": json.dumps(state.meta)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_tensors(self.path, state.tensors, meta)
        except OSError as exc:
            self._save_failed = True
            warn(f"{self.path}: cannot save the resume state ({exc.strerror or exc}); "
                 "the run goes on without it")

    def discard(self, why: str) -> None:
        """Report ``why`` the state cannot be used, and remove the file."""
        warn(f"{self.path}: {why}; the run starts from scratch")
        self.remove()

    def remove(self) -> None:
        """Delete the file and any temporary left by a write that was killed (no error when
        there is none), and the folder when it is left empty."""
        self.path.unlink(missing_ok=True)
        folder = self.path.parent
        if folder.is_dir():
            for tmp in folder.glob(f".{self.path.name}.*.tmp"):
                tmp.unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:
                pass  # other runs' states are still there


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def environment(device: torch.device) -> dict[str, Any]:
    """What a state is only valid with: device, intra-op threads and versions (a run
    continued under other ones would match neither an uninterrupted run on the first nor one
    on the second)."""
    return {"device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "qgen": qgen.__version__}


def capture_state(*, model: nn.Module, optimizer: torch.optim.Optimizer,
                  tracker: StepTracker | None, scaler: torch.amp.GradScaler | None,
                  loader: Any, outcome: TrainOutcome, epoch: int, close: bool,
                  elapsed_s: float, device: torch.device) -> TrainState:
    """A :class:`TrainState` of training after ``epoch`` completed epochs (module docstring).

    Tensors are referenced, not copied: save the state before training goes on.
    """
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tracker_meta = None
    if tracker is not None:
        t = tracker.state_dict()
        tracker_meta = {"updates": t["updates"], "clipped": t["clipped"],
                        "started": t["init"] is not None}
        if t["init"] is not None:
            tensors["tracker.init"], tensors["tracker.max_rel"] = t["init"], t["max_rel"]
    tensors["rng.cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta = {
        "epoch": epoch, "loader_epoch": int(loader.epoch), "close": close,
        "elapsed_s": elapsed_s, "env": environment(device),
        "outcome": {"status": outcome.status, "epochs": outcome.epochs,
                    "steps": outcome.steps, "history": outcome.history,
                    "checks": outcome.checks},
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "tracker": tracker_meta,
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    return TrainState(tensors, meta)


def restore_state(state: TrainState, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                  tracker: StepTracker | None, scaler: torch.amp.GradScaler | None,
                  loader: Any, outcome: TrainOutcome, device: torch.device) -> bool:
    """Put training back where ``state`` was; returns the stop rule's ``close`` flag.

    Everything is checked before anything is changed: a state that does not fit is a
    QgenError and leaves the model, optimizer, tracker, loader and RNG untouched.
    """
    meta, tensors = state.meta, state.tensors
    groups = _check_state(state, model, optimizer, tracker, scaler, device)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["optimizer"]["scalars"].items():
        per_param.setdefault(int(idx), {}).update(entry)
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    if tracker is not None:
        tracker.load_state_dict({"init": tensors.get("tracker.init"),
                                 "max_rel": tensors.get("tracker.max_rel"),
                                 "updates": meta["tracker"]["updates"],
                                 "clipped": meta["tracker"]["clipped"]})
    if scaler is not None:
        scaler.load_state_dict(meta["scaler"])
    loader.epoch = int(meta["loader_epoch"])
    saved = meta["outcome"]
    outcome.status, outcome.epochs, outcome.steps = (saved["status"], saved["epochs"],
                                                     int(saved["steps"]))
    outcome.history, outcome.checks = list(saved["history"]), list(saved["checks"])
    torch.set_rng_state(tensors["rng.cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    return bool(meta["close"])


def _check_state(state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer,
                 tracker: StepTracker | None, scaler: torch.amp.GradScaler | None,
                 device: torch.device) -> list[dict[str, Any]]:
    """A QgenError unless ``state`` fits; returns the optimizer's parameter groups to load
    (JSON lists turned back into the tuples the optimizer holds, e.g. Adam's betas)."""
    try:
        return _check(state, model, optimizer, tracker, scaler, device)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, QgenError):
            raise
        raise QgenError(f"incomplete state ({type(exc).__name__}: {_one_line(exc)})") from None


def _check(state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer,
           tracker: StepTracker | None, scaler: torch.amp.GradScaler | None,
           device: torch.device) -> list[dict[str, Any]]:
    meta, tensors = state.meta, state.tensors
    env, now = meta["env"], environment(device)
    if env != now:
        k = next((k for k in now if env.get(k) != now[k]), "environment")
        raise QgenError(f"saved with {k} {env.get(k)!r}, this run has {now.get(k)!r}")
    expected = model.state_dict()
    saved = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    if set(saved) != set(expected):
        other = sorted(set(saved) ^ set(expected))[0]
        raise QgenError(f"the model's tensors differ (e.g. {other})")
    for k, v in expected.items():
        if saved[k].shape != v.shape or saved[k].dtype != v.dtype:
            raise QgenError(f"model tensor {k} is {tuple(saved[k].shape)} {saved[k].dtype}, "
                            f"the model has {tuple(v.shape)} {v.dtype}")
    current = optimizer.state_dict()["param_groups"]
    groups = meta["optimizer"]["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise QgenError("the optimizer's parameter groups differ")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for key, value in tensors.items():
        if key.startswith("optim."):
            idx = int(key.split(".", 2)[1])
            if not 0 <= idx < len(params):
                raise QgenError(f"optimizer state {key} has no parameter")
            if value.shape != params[idx].shape and value.numel() != 1:
                raise QgenError(f"optimizer state {key} is {tuple(value.shape)}, the "
                                f"parameter {tuple(params[idx].shape)}")
    if (tracker is None) != (meta["tracker"] is None):
        raise QgenError("the step tracker state does not fit the model's quantizers")
    if tracker is not None:
        total = sum(tracker.sizes)
        for key in ("tracker.init", "tracker.max_rel"):
            if meta["tracker"]["started"] != (key in tensors) or (
                    key in tensors and tuple(tensors[key].shape) != (total,)):
                raise QgenError("the step tracker state does not fit the model's quantizers")
    if (scaler is None) != (meta["scaler"] is None):
        raise QgenError("the gradient scaler state does not fit train.precision")
    rng = tensors.get("rng.cpu")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        raise QgenError("no usable CPU RNG state")
    if device.type == "cuda" and "rng.cuda" not in tensors:
        raise QgenError("no CUDA RNG state")
    if int(meta["loader_epoch"]) < 0 or not isinstance(meta["close"], bool):
        raise QgenError("bad loader epoch or stop-rule flag")
    saved = meta["outcome"]
    if not (isinstance(saved["history"], list) and isinstance(saved["checks"], list)
            and isinstance(saved["status"], str) and int(saved["steps"]) >= 0
            and float(meta["elapsed_s"]) >= 0
            and all(isinstance(v, dict) for v in meta["optimizer"]["scalars"].values())):
        raise QgenError("malformed outcome or optimizer scalars")
    if tracker is not None and min(int(meta["tracker"]["updates"]),
                                   int(meta["tracker"]["clipped"])) < 0:
        raise QgenError("negative step tracker counts")
    return [{k: tuple(v) if isinstance(cur.get(k), tuple) else v for k, v in g.items()}
            for g, cur in zip(groups, current, strict=True)]
