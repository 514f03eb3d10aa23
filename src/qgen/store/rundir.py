"""The run directory: its files, its state, reading it once, publishing it, error records.

A run directory ``<store>/<run_id>/`` holds::

    spec.json            the RunSpec (its hash is the run id)
    result.json          status, metrics, history, versions, health, ...
    init.safetensors     the weights at initialization (distance-from-init measures need them)
    model.safetensors    the weights at the end
    <pass>.json          one record per post-pass (measures.json, robustness.json, ...)
    error.json           instead of the above: why the run failed

A run being trained keeps its resume state (:func:`resume_file`) in the store's hidden
``.resume/`` folder, outside its run directory, until the run is published; like every hidden
entry of a store it is not a run (:func:`run_dirs` skips it).

It is *complete* when the four run files are there and ``result.json`` reads as a result; a
directory holding only ``error.json`` is *failed*; anything else is *partial*. A complete
directory appears in one rename (:func:`publish_run`): it is built in a hidden temporary
directory beside it, so a directory named after a run id is never half written.

:class:`RunDir` reads each file once and keeps it. Nothing here imports torch except
:meth:`RunDir.weights`, so listing a store, reading specs and results and collecting a table
stay light.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qgen.config import RunSpec
from qgen.errors import QgenError
from qgen.io import atomic_write_bytes, atomic_write_json, fsync_dir, publish_mode, read_json

if TYPE_CHECKING:
    import torch

SPEC_FILE, RESULT_FILE = "spec.json", "result.json"
MODEL_FILE, INIT_FILE = "model.safetensors", "init.safetensors"
ERROR_FILE = "error.json"
RUN_FILES = (SPEC_FILE, RESULT_FILE, MODEL_FILE, INIT_FILE)
#: the statuses a run result may have (what the training loop's stop rule ends with)
RUN_STATUSES = ("converged", "max_epochs", "diverged")
#: what :meth:`RunDir.state` returns
STATES = ("complete", "failed", "partial", "missing")
#: the store's folder of resume states of runs in training (hidden: not a run directory)
RESUME_DIR = ".resume"


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def light_versions() -> dict[str, str]:
    """Versions of qgen, Python and (when already imported) torch, without importing torch."""
    import qgen

    out = {"qgen": qgen.__version__, "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = str(torch.__version__)
    return out


class RunDir:
    """One run directory, read lazily and once.

    >>> run = RunDir("runs/3f5c0a9e1b7d2c44")  # doctest: +SKIP
    >>> run.state, run.spec.quant.label, run.result["metrics"]["loss_gap"]  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def run_id(self) -> str:
        """The directory's name: the run id."""
        return self.path.name

    def file(self, name: str) -> Path:
        """The path of one of the run's files."""
        return self.path / name

    def _once(self, key: str, load: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    # ---------------------------------------------------------------------------- state
    def _result_or_none(self) -> dict[str, Any] | None:
        try:
            data = read_json(self.file(RESULT_FILE))
        except QgenError:
            return None
        return data if _is_result(data) else None

    @property
    def state(self) -> str:
        """'complete', 'failed' (an error record only), 'partial' (anything else in the
        directory) or 'missing'."""
        def compute() -> str:
            if not self.path.is_dir():
                return "missing"
            if all(self.file(f).is_file() for f in RUN_FILES):
                result = self._result_or_none()
                if result is not None:
                    self._cache["result"] = result
                    return "complete"
            return "failed" if self.file(ERROR_FILE).is_file() else "partial"
        return self._once("state", compute)

    @property
    def is_complete(self) -> bool:
        """True when the run files are all there and the result reads."""
        return self.state == "complete"

    def why_incomplete(self) -> str:
        """A short reason a run directory is not complete (for error messages)."""
        if not self.path.exists():
            return "no such directory"
        if not self.path.is_dir():
            return "not a directory"
        if self.state == "failed":
            return "the run failed (see error.json)"
        missing = [f for f in RUN_FILES if not self.file(f).is_file()]
        if missing:
            return f"{missing[0]} is missing"
        return "result.json is unreadable or not a run result"

    def require_complete(self) -> RunDir:
        """Self, or a QgenError saying why this is not a complete run directory."""
        if not self.is_complete:
            raise QgenError(f"{self.path}: not a complete run directory "
                            f"({self.why_incomplete()}; a run holds {', '.join(RUN_FILES)})")
        return self

    # --------------------------------------------------------------------------- reading
    @property
    def spec_dict(self) -> dict[str, Any]:
        """spec.json as stored (any spec version)."""
        def load() -> dict[str, Any]:
            data = read_json(self.file(SPEC_FILE))
            if not isinstance(data, dict):
                raise QgenError(f"{self.file(SPEC_FILE)}: not a run spec (a JSON object is "
                                f"expected, got {type(data).__name__})")
            return data
        return self._once("spec_dict", load)

    @property
    def spec(self) -> RunSpec:
        """The run's :class:`RunSpec` (older spec versions are migrated)."""
        def load() -> RunSpec:
            data = self.spec_dict  # its own errors name the file already
            try:
                return RunSpec.from_dict(data)
            except QgenError as exc:
                raise QgenError(f"{self.file(SPEC_FILE)}: {exc}") from None
        return self._once("spec", load)

    @property
    def result(self) -> dict[str, Any]:
        """result.json (a QgenError if it is missing or not a run result)."""
        def load() -> dict[str, Any]:
            data = read_json(self.file(RESULT_FILE))
            if not _is_result(data):
                raise QgenError(f"{self.file(RESULT_FILE)}: not a run result")
            return data
        return self._once("result", load)

    @property
    def error(self) -> dict[str, Any] | None:
        """error.json of a failed run, or None."""
        def load() -> dict[str, Any] | None:
            if not self.file(ERROR_FILE).is_file():
                return None
            data = read_json(self.file(ERROR_FILE))
            return data if isinstance(data, dict) else None
        return self._once("error", load)

    def record(self, name: str) -> dict[str, Any] | None:
        """The post-pass record ``<name>.json``, or None when the pass has not run."""
        def load() -> dict[str, Any] | None:
            path = self.file(f"{name}.json")
            if not path.is_file():
                return None
            data = read_json(path)
            if not isinstance(data, dict):
                raise QgenError(f"{path}: not a {name} record")
            return data
        return self._once(f"record:{name}", load)

    def write_record(self, name: str, record: dict[str, Any]) -> None:
        """Write the post-pass record ``<name>.json`` atomically (and keep it)."""
        atomic_write_json(self.file(f"{name}.json"), record)
        self._cache[f"record:{name}"] = record

    def weights(self, which: str = "final") -> dict[str, torch.Tensor]:
        """The state dict at the end ('final') or at initialization ('init')."""
        if which not in ("final", "init"):
            raise QgenError(f"which: must be 'final' or 'init', got {which!r}")

        def load() -> dict[str, torch.Tensor]:
            from qgen.checkpoint import load_tensors

            return load_tensors(self.file(MODEL_FILE if which == "final" else INIT_FILE))
        return self._once(f"weights:{which}", load)


def _is_result(data: Any) -> bool:
    """Whether a parsed result.json reads as a run result: a mapping with a known status,
    whose ``metrics`` and ``data`` (when present) are mappings too."""
    return (isinstance(data, dict) and data.get("status") in RUN_STATUSES
            and all(isinstance(data.get(k, {}), dict) for k in ("metrics", "data")))


def run_dirs(store: str | Path) -> list[RunDir]:
    """The run directories of a store (not hidden), sorted by run id; a missing store or one
    that is not a directory is a QgenError."""
    store = Path(store)
    if not store.is_dir():
        what = "is not a directory" if store.exists() else "does not exist"
        raise QgenError(f"{store}: no such run store (it {what})")
    return [RunDir(p) for p in sorted(store.iterdir())
            if p.is_dir() and not p.name.startswith(".")]


def resume_file(store: str | Path, run_id: str) -> Path:
    """Where a run in training keeps its resume state: ``<store>/.resume/<run_id>.safetensors``
    (nothing is created here). The file is a cache: the run deletes it once published."""
    return Path(store) / RESUME_DIR / f"{run_id}.safetensors"


# ------------------------------------------------------------------------------ publishing
def _move_into_place(tmp: Path, final: Path, replace: bool) -> bool:
    """Rename a finished temporary run directory to ``final``. An existing complete run is
    kept unless ``replace``; an incomplete one (say, an error record) is replaced. Returns
    whether ``tmp`` was published."""
    if final.exists():
        if not replace and RunDir(final).is_complete:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
    return True


def publish_run(store: str | Path, run_id: str, build: Callable[[Path], None], *,
                replace: bool = False) -> Path:
    """Build a run directory with ``build(tmp)`` in a hidden temporary directory of ``store``
    and rename it to ``<store>/<run_id>`` (see :func:`_move_into_place` for what an existing
    directory becomes). On any error the temporary directory is removed. Returns the final
    path."""
    store = Path(store)
    final = store / run_id
    tmp = Path(tempfile.mkdtemp(dir=store, prefix=f".{run_id}.tmp-"))
    try:
        publish_mode(tmp, directory=True)
        build(tmp)
        _move_into_place(tmp, final, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def publish_files(store: str | Path, run_id: str, files: dict[str, bytes]) -> Path:
    """Publish a run sent back as file bytes (e.g. by a Ray worker); every run file must be
    among them. An existing complete run is kept."""
    missing = [f for f in RUN_FILES if f not in files]
    if missing:
        raise QgenError(f"run {run_id}: worker returned no {missing[0]}")

    def build(tmp: Path) -> None:
        for name, data in files.items():
            atomic_write_bytes(tmp / Path(name).name, data)

    return publish_run(store, run_id, build)


def write_error(store: str | Path, spec: RunSpec, error: dict[str, Any]) -> Path:
    """Record a failed run as ``<store>/<run_id>/error.json`` (the directory stays
    incomplete, so a retry replaces it). ``error`` holds type, message, traceback. A complete
    run is never overwritten by a late error report."""
    store = Path(store)
    final = store / spec.run_id
    record = {"run_id": spec.run_id, "status": "failed", "spec": spec.to_dict(),
              "time": now_iso(), "host": socket.gethostname(), **error}
    record.setdefault("versions", light_versions())
    if final.is_dir():
        if not RunDir(final).is_complete:
            atomic_write_json(final / ERROR_FILE, record)
        return final
    try:
        return publish_run(store, spec.run_id,
                           lambda tmp: atomic_write_json(tmp / ERROR_FILE, record))
    except OSError:
        if not final.is_dir():
            raise
        if not RunDir(final).is_complete:  # lost a race with a publisher
            atomic_write_json(final / ERROR_FILE, record)
        return final
