"""The run store as a whole: one writer at a time (a lock) and clean-up after a killed one.

Layout of a store::

    <store>/.qgen-sweep.lock      exclusive flock while a sweep or post-pass writes here
    <store>/<run_id>/             a run directory (see :mod:`qgen.store.rundir`)
    <store>/.<run_id>.tmp-*       a run being built; left behind only by a killed process and
                                  removed when the next writer takes the lock
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from qgen.errors import QgenError

LOCK_FILE = ".qgen-sweep.lock"


@contextlib.contextmanager
def store_lock(out_dir: Path, wait_s: float = 0.5) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``<out>/.qgen-sweep.lock`` for the duration.

    ``wait_s`` rides out a momentary probe by ``qgen sweep status``; a lock still held after
    that belongs to another sweep and is a QgenError naming its pid. The kernel drops the lock
    when the holding process dies, however it dies, so there are no stale locks.
    """
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    raise QgenError(f"{out_dir}: another sweep is writing to this store "
                                    f"(lock {path} held by {holder}); wait for it to finish "
                                    "or choose another --out") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def lock_holder(out_dir: Path) -> str | None:
    """Who holds the store's lock ('pid N on host'), or None when no sweep is writing."""
    import fcntl

    path = out_dir / LOCK_FILE
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def remove_stale(out_dir: Path) -> list[str]:
    """Remove what killed processes leave behind: ``.<id>.tmp-*`` run directories, ``.<id>.old-*``
    replaced runs and ``.<file>.*.tmp`` partial files. Call only while holding the lock."""
    removed = []
    for p in out_dir.iterdir():
        name = p.name
        if not name.startswith(".") or name == LOCK_FILE:
            continue
        if p.is_dir() and (".tmp-" in name or ".old-" in name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(name)
        elif p.is_file() and name.endswith(".tmp"):
            p.unlink(missing_ok=True)
            removed.append(name)
    return removed
