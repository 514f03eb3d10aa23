"""Executors: run a list of RunSpecs somewhere and report each outcome as it finishes.

Both executors have one method, ``run(specs, runtime, on_done)``; ``on_done`` receives a
:class:`RunOutcome` per spec, in finishing order, in the calling process (which owns the run
store and writes error records). A run that raises is an outcome with ``ok=False`` and the
traceback, never an exception out of ``run``; a diverged run is an ordinary result.

``local`` (:class:`LocalExecutor`)
    A pool of worker processes started with the ``spawn`` method. Each worker gets
    ``threads`` torch threads (workers × threads should not exceed the cores) and, with a
    CUDA device, one GPU slot through ``CUDA_VISIBLE_DEVICES`` set before torch initializes
    CUDA in the worker (round-robin over the GPUs; several workers may share one). Workers
    publish finished runs straight into the store (same machine). A worker that dies (killed,
    out of memory, segfault) is replaced and its run retried up to ``max_retries`` times; the
    parent always knows which run a worker held. Workers die with the parent
    (``PR_SET_PDEATHSIG`` on Linux), so a killed sweep leaves no orphans writing to the store.

``ray`` (:class:`RayExecutor`)
    One Ray task per run (``num_cpus=threads``, fractional ``num_gpus`` to share a GPU,
    ``max_retries`` for system failures such as a dead worker or node). Application errors
    are caught inside the task and come back as outcomes, so Ray does not retry them.
    *Multi-node story: results return to the driver.* A task trains into a temporary
    directory on its node and sends the run's files (spec, result, both safetensors
    checkpoints) back as bytes; the driver, which holds the store's lock, publishes them with
    one rename. The store therefore lives only on the driver's disk and needs no shared
    filesystem, and the lock means what it says (flock over NFS is not reliable). What every
    node needs: the same Python environment with qgen installed, and the dataset at the path
    given by ``--data-dir`` (or ``$QGEN_DATA``) on that node. The cost is network traffic of
    two checkpoints per run, small next to training for the study's networks.

Each worker process (local or Ray) keeps the last datasets it loaded, keyed by
(DataSpec, data_dir), so a grid over model or training fields loads its data once per worker.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qgen.config import RunSpec, Runtime
from qgen.errors import QgenError
from qgen.store import light_versions, publish_files

#: datasets each worker keeps in memory (a grid rarely alternates between more)
DATA_CACHE_SIZE = 2
_DATA_CACHE: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


@dataclass
class RunOutcome:
    """What became of one run: ``status`` is the result's status ('converged', 'max_epochs',
    'diverged') or 'failed'; ``error`` (type, message, traceback, …) is set when it failed."""

    run_id: str
    ok: bool
    status: str
    wall_time_s: float | None = None
    elapsed_s: float | None = None
    error: dict[str, Any] | None = None
    attempts: int = 1
    files: dict[str, bytes] | None = field(default=None, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunOutcome:
        """Build from the plain dict a worker sends back."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


OnDone = Callable[[RunOutcome], None]


class Executor(Protocol):
    """Runs specs and calls ``on_done`` once per spec, in the calling process."""

    name: str
    concurrency: int

    def run(self, specs: Sequence[RunSpec], runtime: Runtime, on_done: OnDone) -> None:
        """Run every spec; publish complete runs under ``runtime.out_dir``."""
        ...


# ---------------------------------------------------------------------------------------------
# what a worker does with one spec (shared by both executors)


def _cached_splits(spec: RunSpec, runtime: Runtime) -> Any:
    from qgen.data import load_data

    key = (spec.data, str(runtime.data_dir) if runtime.data_dir else None, runtime.download)
    if key in _DATA_CACHE:
        _DATA_CACHE.move_to_end(key)
        return _DATA_CACHE[key]
    splits = load_data(spec.data, runtime.data_dir, download=runtime.download)
    _DATA_CACHE[key] = splits
    while len(_DATA_CACHE) > DATA_CACHE_SIZE:
        _DATA_CACHE.popitem(last=False)
    return splits


def error_info(exc: BaseException) -> dict[str, Any]:
    """The error record of an exception: type, message, traceback, versions."""
    etype = type(exc)
    return {
        "error_type": etype.__qualname__ if etype.__module__ == "builtins"
        else f"{etype.__module__}.{etype.__qualname__}",
        "message": str(exc) or etype.__name__,
        "traceback": "".join(traceback.format_exception(etype, exc, exc.__traceback__)),
        "user_error": isinstance(exc, QgenError),
        "versions": light_versions(),
    }


def run_spec_safely(spec: RunSpec, runtime: Runtime) -> dict[str, Any]:
    """Train one spec into ``runtime.out_dir``; return a plain outcome dict, never raise
    (except KeyboardInterrupt / SystemExit, which must stop the worker)."""
    t0 = time.perf_counter()
    try:
        from qgen.train import execute_run

        splits = _cached_splits(spec, runtime)
        result = execute_run(spec, runtime, splits=splits)
        return {"run_id": spec.run_id, "ok": True, "status": str(result["status"]),
                "wall_time_s": result.get("wall_time_s"),
                "elapsed_s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001  (any failure of a run is recorded, not raised)
        return {"run_id": spec.run_id, "ok": False, "status": "failed",
                "elapsed_s": time.perf_counter() - t0, "error": error_info(exc)}


# ---------------------------------------------------------------------------------------------
# local executor


def cpu_cores() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_parallelism(workers: int, threads: int | None, cores: int | None = None,
                        check: bool = True) -> tuple[int, int]:
    """(workers, threads per worker): threads default to cores // workers.

    Raises a QgenError when workers × threads exceeds the cores (``check``): oversubscribed
    torch threads fight over cores and make every run slower than running fewer at once.
    """
    cores = cores or cpu_cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise QgenError(f"--workers: must be an integer >= 1, got {workers!r}")
    if threads is None:
        threads = max(1, cores // workers)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise QgenError(f"--threads: must be an integer >= 1, got {threads!r}")
    if check and workers * threads > cores:
        raise QgenError(f"--workers {workers} × --threads {threads} = {workers * threads} "
                        f"threads but this machine gives {cores} CPU cores; oversubscribed "
                        f"workers slow each other down. Keep workers × threads <= {cores}, "
                        f"e.g. --workers {workers} --threads {max(1, cores // workers)}")
    return workers, threads


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans after a kill -9)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(conn: Any, parent_pid: int, threads: int, gpu: str | None) -> None:
    """A local worker: receive (spec, runtime) pairs, send outcome dicts, stop on None."""
    # Before anything can initialize CUDA or size thread pools in this process.
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        spec, runtime = msg
        conn.send(run_spec_safely(spec, runtime))


class _Worker:
    """One worker process and its end of the pipe."""

    def __init__(self, ctx: Any, threads: int, gpu: str | None) -> None:
        self.gpu = gpu
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid(), threads, gpu),
                                daemon=True, name="qgen-sweep-worker")
        self.proc.start()
        child.close()
        self.spec: RunSpec | None = None

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(timeout)
        self.kill()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5.0)
        self.conn.close()


def _crash_error(exitcode: int | None, attempts: int) -> dict[str, Any]:
    how = (f"was killed by signal {-exitcode}" if exitcode is not None and exitcode < 0
           else f"exited with code {exitcode}")
    return {"error_type": "WorkerCrashed",
            "message": f"the worker process {how} while training this run "
                       f"({attempts} attempt{'s' if attempts != 1 else ''}); out of memory?",
            "traceback": "", "user_error": False, "versions": light_versions()}


class LocalExecutor:
    """Worker processes on this machine (see the module docstring).

    ``gpus`` lists the GPU ids to hand out round-robin when ``runtime.device`` is CUDA
    (default: all of ``torch.cuda.device_count()``). ``in_process=True`` runs the specs one
    after another in the calling process instead (for library use and debugging; a crash then
    ends the sweep, and ``runtime.threads`` changes the caller's torch threads).
    """

    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None,
                 gpus: Sequence[int | str] | None = None, max_retries: int = 1,
                 in_process: bool = False, check_cores: bool = True) -> None:
        self.workers, self.threads = resolve_parallelism(workers, threads, check=check_cores)
        self.gpus = [str(g) for g in gpus] if gpus is not None else None
        self.max_retries = max_retries
        self.in_process = in_process

    @property
    def concurrency(self) -> int:
        """How many runs train at once."""
        return 1 if self.in_process else self.workers

    def _gpu_slots(self, device: str) -> list[str | None]:
        if not device.startswith("cuda"):
            return [None]
        if self.gpus:
            return list(self.gpus)
        if ":" in device:
            return [device.split(":", 1)[1]]
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise QgenError("--device cuda: no CUDA GPU is visible here; use --device cpu")
        return [str(i) for i in range(n)]

    def run(self, specs: Sequence[RunSpec], runtime: Runtime, on_done: OnDone) -> None:
        """Run ``specs``; call ``on_done`` for each as it finishes."""
        if not specs:
            return
        slots = self._gpu_slots(runtime.device)
        if self.in_process:
            device = runtime.device
            if slots[0] is not None and self.gpus:
                device = f"cuda:{slots[0]}"
            rt = dataclasses.replace(runtime, threads=self.threads, device=device)
            for spec in specs:
                on_done(RunOutcome.from_dict(run_spec_safely(spec, rt)))
            return
        # Inside a worker the chosen GPU is the only visible one, so it is device "cuda".
        rt = dataclasses.replace(runtime, threads=self.threads,
                                 device="cuda" if slots[0] is not None else runtime.device)
        self._run_pool(list(specs), rt, on_done, slots)

    def _run_pool(self, specs: list[RunSpec], runtime: Runtime, on_done: OnDone,
                  slots: list[str | None]) -> None:
        import multiprocessing as mp
        from multiprocessing.connection import wait

        ctx = mp.get_context("spawn")
        queue = deque(specs)
        attempts: dict[str, int] = {}
        n = min(self.workers, len(specs))
        pool = [_Worker(ctx, self.threads, slots[i % len(slots)]) for i in range(n)]

        def assign(i: int) -> None:
            spec = queue.popleft()
            attempts[spec.run_id] = attempts.get(spec.run_id, 0) + 1
            for _ in range(2):  # a worker that died idle is replaced once
                try:
                    pool[i].conn.send((spec, runtime))
                    pool[i].spec = spec
                    return
                except OSError:
                    pool[i].kill()
                    pool[i] = _Worker(ctx, self.threads, pool[i].gpu)
            raise RuntimeError("cannot start a sweep worker process")

        try:
            for i in range(len(pool)):
                assign(i)
            while any(w.spec is not None for w in pool):
                busy = [w for w in pool if w.spec is not None]
                wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
                for i, w in enumerate(pool):
                    if w.spec is None:
                        continue
                    spec = w.spec
                    out: dict[str, Any] | None = None
                    if w.conn.poll():
                        try:
                            out = w.conn.recv()
                        except (EOFError, OSError):
                            out = None
                    elif w.proc.is_alive():
                        continue
                    if out is not None:
                        w.spec = None
                        outcome = RunOutcome.from_dict(out)
                        outcome.attempts = attempts[spec.run_id]
                        on_done(outcome)
                        if queue:
                            assign(i)
                        continue
                    # The worker died holding `spec`: replace it, then retry or give up.
                    w.proc.join(5.0)
                    exitcode = w.proc.exitcode
                    w.kill()
                    w.spec = None
                    tries = attempts[spec.run_id]
                    if tries <= self.max_retries:
                        queue.appendleft(spec)
                    else:
                        on_done(RunOutcome(run_id=spec.run_id, ok=False, status="failed",
                                           error=_crash_error(exitcode, tries), attempts=tries))
                    if queue:  # a replacement only when there is work left for it
                        pool[i] = _Worker(ctx, self.threads, w.gpu)
                        assign(i)
        finally:
            for w in pool:
                if w.spec is None:
                    w.stop()
                else:
                    w.kill()


# ---------------------------------------------------------------------------------------------
# Ray executor


def import_ray() -> Any:
    """Import Ray, or explain how to install it."""
    try:
        import ray
    except ImportError:
        raise QgenError("the ray executor needs Ray: pip install 'qgen[ray]'") from None
    return ray


def _ray_task(spec: RunSpec, runtime: Runtime) -> dict[str, Any]:
    """Body of the Ray task: train into a node-local temporary store, return the files. The
    training state of each epoch goes to the store's own ``.resume/`` folder, so on a shared
    file system a run whose node died resumes on another (elsewhere saving it fails with one
    warning and the run goes on)."""
    tmp = Path(tempfile.mkdtemp(prefix="qgen-ray-"))
    try:
        out = run_spec_safely(spec, dataclasses.replace(
            runtime, out_dir=tmp, resume_store=runtime.resume_store))
        if out["ok"]:
            run_dir = tmp / spec.run_id
            out["files"] = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RayExecutor:
    """Ray core tasks on a local cluster (``ray.init(num_cpus=workers × threads)``) or on an
    existing one (``address``). An already initialized Ray is used as it is and left running;
    a cluster this executor started is shut down when ``run`` returns."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 1, threads: int | None = None,
                 gpus_per_run: float = 0.0, max_retries: int = 2, quiet: bool = False) -> None:
        # On a remote cluster the cores are the cluster's, not this machine's.
        self.workers, self.threads = resolve_parallelism(workers, threads,
                                                         check=address is None)
        if gpus_per_run < 0:
            raise QgenError(f"--gpus-per-run: must be >= 0, got {gpus_per_run}")
        import_ray()  # fail before the sweep starts, not after it has taken the store
        self.address = address
        self.gpus_per_run = float(gpus_per_run)
        self.max_retries = max_retries
        self.quiet = quiet

    @property
    def concurrency(self) -> int:
        """How many runs train at once on a local cluster (on a remote one: the cluster's)."""
        return self.workers

    def _init(self, ray: Any) -> bool:
        if ray.is_initialized():
            return False
        opts: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not self.quiet,
                                "configure_logging": not self.quiet}
        if self.address:
            ray.init(address=self.address, **opts)
        else:
            ray.init(num_cpus=self.workers * self.threads, **opts)
        return True

    def run(self, specs: Sequence[RunSpec], runtime: Runtime, on_done: OnDone) -> None:
        """Submit one task per spec; publish each returned run into ``runtime.out_dir``."""
        if not specs:
            return
        ray = import_ray()
        started = self._init(ray)
        device = "cuda" if self.gpus_per_run > 0 else "cpu"
        task = ray.remote(_ray_task).options(
            num_cpus=self.threads, num_gpus=self.gpus_per_run, max_retries=self.max_retries,
            retry_exceptions=False, name="qgen-run")
        # Paths in the runtime are the nodes' paths: data_dir must exist on every node. It is
        # made absolute because Ray workers do not start in the driver's working directory.
        data_dir = Path(runtime.data_dir).expanduser().resolve() if runtime.data_dir else None
        weights = Path(runtime.weights).expanduser().resolve() if runtime.weights else None
        store = Path(runtime.resume_store or runtime.out_dir).expanduser().resolve()
        wrt = dataclasses.replace(runtime, device=device, threads=self.threads, quiet=True,
                                  data_dir=data_dir, weights=weights, resume_store=store)
        refs = {task.remote(spec, wrt): spec for spec in specs}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    spec = refs.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # system failure, retries spent
                        err = error_info(exc)
                        err["message"] = (f"Ray gave up after {self.max_retries} retries: "
                                          f"{err['message'].splitlines()[0]}")
                        on_done(RunOutcome(run_id=spec.run_id, ok=False, status="failed",
                                           error=err, attempts=self.max_retries + 1))
                        continue
                    outcome = RunOutcome.from_dict(out)
                    if outcome.ok:
                        try:
                            publish_files(runtime.out_dir, spec.run_id, outcome.files or {})
                        except (OSError, QgenError) as exc:
                            outcome = RunOutcome(run_id=spec.run_id, ok=False, status="failed",
                                                 error=error_info(exc))
                    outcome.files = None
                    on_done(outcome)
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()
